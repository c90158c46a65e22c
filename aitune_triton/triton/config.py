"""Triton model configurations as ``model_config_pb2.ModelConfig`` messages.

Building a configuration and writing it are separate: builders return protobuf messages (the
official schema from ``tritonclient.grpc.model_config_pb2``, so a misspelt field fails when it
is set), and :func:`write_model_config` serializes with ``google.protobuf.text_format``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.errors import ExportError, InvalidOptionError
from aitune_triton.served.routes import ROUTES_PARAMETER, Routes
from aitune_triton.strategies.layout import LayoutReport
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.options import (
    DEFAULT_INTRA_OP_THREADS,
    MEASURED,
    THREADS_PARAMETER,
    DynamicBatching,
    InstanceGroup,
    VersionPolicy,
    check_int,
    check_parameters,
)

__all__ = [
    "MEASURED",
    "ROUTES_PARAMETER",
    "THREADS_PARAMETER",
    "TritonModelOptions",
    "graph_model_config",
    "model_config_text",
    "read_model_config",
    "router_model_config",
    "set_routes_parameter",
    "write_model_config",
]

#: Configuration parameter of the entry model: signature and every graph model's IO mapping (JSON).


@dataclass
class TritonModelOptions:
    """Deployment options for exported models: the one options object :func:`aitune_triton.export`
    takes (the CLI builds it from its flags). Defaults and their sources are listed in
    :mod:`aitune_triton.triton.options`.

    Attributes:
        instance_count: Model instances per device (``instance_group.count``) of every graph model
            without an entry in ``instance_groups``; each Python-backend instance is a separate
            process. None: the count of the layout measured at tune time for the graph spec
            (:mod:`aitune_triton.strategies.layout`), else 1.
        instance_kind: ``"cpu"``, ``"gpu"`` or ``"auto"`` (GPU when the backend was tuned on CUDA)
            of those graph models. A CPU-only server loads only ``KIND_CPU`` instances.
        max_queue_delay_microseconds: How long the dynamic batcher may hold a request to form a
            larger batch (models with ``max_batch_size > 0`` only). Shorthand for
            ``dynamic_batching``; ignored when that is given.
        preferred_batch_size: Batch sizes the dynamic batcher aims for; empty: the size measured
            by the tuning's batch size sweep when there was one, else Triton decides. Shorthand
            for ``dynamic_batching``; ignored when that is given.
        entry_instance_count: Instances of the entry (router) model. A Python model instance runs
            one ``execute()`` at a time and the router gets one request per call, so this bounds
            how many requests through the entry model reach the graph models together (and can
            be batched there). Router instances only forward tensors (no torch import).
        dynamic_batching: Every dynamic batcher field (:class:`DynamicBatching`); None: built
            from the two shorthand fields above.
        instance_groups: Graph name (``"graph_0"``) or graph model name (``"net.graph_0"``) ->
            its own :class:`InstanceGroup`; the others get ``instance_kind`` x ``instance_count``.
        intra_op_threads: Intra-op threads of torch / ONNX Runtime in each graph model instance
            (config parameter ``aitune_triton.intra_op_threads``, applied by the generated
            ``model.py`` before the artifact is loaded); None: the runtime's own default (all
            cores per instance); ``"measured"`` (:data:`MEASURED`, the default): the threads of the
            measured layout with the graph model's instance count, else
            ``DEFAULT_INTRA_OP_THREADS`` (1). Keep instances x threads <= cores.
        version_policy: Versions served (:class:`VersionPolicy`) of every exported model.
        parameters: Free ``parameters`` (str -> str) added to every graph model's configuration.
        response_cache: Turn Triton's response cache on for graph models (the server needs a
            cache: ``--cache-config local,size=...``).
        warmup: Write ``model_warmup`` from the recorded calls at the smallest and largest shape
            of each graph spec (inputs as raw files under the model's ``warmup/`` directory), so
            that Triton runs them on every instance before the model is READY (an ``inductor``
            model runs the recorded shapes through its compiled program then, not on its first
            requests). On by default; it adds that time to each model's load. False writes no
            ``model_warmup``.
        gpus: GPU indices of the default group's ``KIND_GPU`` instances; empty: every GPU.

    Raises:
        InvalidOptionError: (an ExportError and InvalidArgumentError) a field has a value Triton cannot take.
    """

    instance_count: int | None = None
    instance_kind: str = "auto"
    max_queue_delay_microseconds: int = 100
    preferred_batch_size: Sequence[int] = field(default_factory=tuple)
    entry_instance_count: int = 4
    dynamic_batching: DynamicBatching | None = None
    instance_groups: Mapping[str, InstanceGroup] = field(default_factory=dict)
    intra_op_threads: int | str | None = MEASURED
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    parameters: Mapping[str, str] = field(default_factory=dict)
    response_cache: bool = False
    warmup: bool = True
    gpus: Sequence[int] = ()
    default_group: InstanceGroup = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("entry_instance_count", self.entry_instance_count, 1)
        # Validates instance_count and instance_kind (their field names are in the messages).
        count = 1 if self.instance_count is None else self.instance_count
        self.default_group = InstanceGroup(self.instance_kind, count, self.gpus)
        if self.dynamic_batching is None:
            self.dynamic_batching = DynamicBatching(
                preferred_batch_size=self.preferred_batch_size,
                max_queue_delay_microseconds=self.max_queue_delay_microseconds,
            )
        elif not isinstance(self.dynamic_batching, DynamicBatching):
            raise InvalidOptionError(f"dynamic_batching: expected a DynamicBatching or None, got {self.dynamic_batching!r}.")
        self.preferred_batch_size = tuple(self.dynamic_batching.preferred_batch_size)
        self.max_queue_delay_microseconds = self.dynamic_batching.max_queue_delay_microseconds
        if not isinstance(self.instance_groups, Mapping) or not all(
            isinstance(key, str) and isinstance(value, InstanceGroup) for key, value in self.instance_groups.items()
        ):
            raise InvalidOptionError(
                f"instance_groups: expected a mapping of graph (or graph model) name -> InstanceGroup, got {self.instance_groups!r}."
            )
        self.instance_groups = dict(self.instance_groups)
        if self.intra_op_threads is not None and self.intra_op_threads != MEASURED:
            check_int("intra_op_threads", self.intra_op_threads, 1,
                      f"Pass None for the runtime's own default, or {MEASURED!r} for the tuned layout's.")
        if not isinstance(self.version_policy, VersionPolicy):
            raise InvalidOptionError(f"version_policy: expected a VersionPolicy, got {self.version_policy!r}.")
        self.parameters = check_parameters(self.parameters)
        for flag in ("response_cache", "warmup"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidOptionError(f"{flag}: expected True or False, got {getattr(self, flag)!r}.")

    def group_for(self, model_name: str, graph: str) -> InstanceGroup:
        """The instance group of the model ``model_name`` serving the graph spec ``graph``
        (``net.graph_0`` / ``graph_0``, or ``net`` / ``graph_0`` for a module exported as one model):
        its own entry in ``instance_groups`` (by model name, then by graph name), else the default one."""
        return self.instance_groups.get(model_name) or self.instance_groups.get(graph) or self.default_group

    @property
    def threads(self) -> int | None:
        """The intra-op threads written: ``intra_op_threads``, with :data:`MEASURED` (options not
        resolved by :meth:`for_layout`, so nothing measured applies) as ``DEFAULT_INTRA_OP_THREADS``."""
        value = self.intra_op_threads
        return DEFAULT_INTRA_OP_THREADS if value == MEASURED or isinstance(value, str) else value

    def for_layout(
        self, model_name: str, graph: str, layout: LayoutReport | None, device: str = "cpu"
    ) -> tuple["TritonModelOptions", dict[str, Any]]:
        """These options for one graph model, with what they leave open taken from its measured layout.

        The instance count is the model's own :class:`InstanceGroup` (``instance_groups``), else
        ``instance_count``, else the measured layout's count (CPU instances only), else 1. The
        threads are ``intra_op_threads`` unless it is :data:`MEASURED`; then those of the measured
        layout with that instance count, else ``DEFAULT_INTRA_OP_THREADS``.

        Args:
            model_name: The graph model's name (``net.graph_0``).
            graph: The graph spec's name (``graph_0``).
            layout: The graph spec's measured layout (the tuning report's ``layout``), or None.
            device: The device the backend was tuned on.

        Returns:
            Options with a concrete ``instance_count`` and ``intra_op_threads``, and what was written
            with where each value came from (for the manifest's ``layout`` field).
        """
        own = self.instance_groups.get(model_name) or self.instance_groups.get(graph)
        chosen = layout is not None and layout.instances is not None and not self.default_group.is_gpu(device)
        if own is not None:
            count, count_from = own.count, "instance_groups"
        elif self.instance_count is not None:
            count, count_from = self.instance_count, "instance_count"
        elif chosen and layout is not None and layout.instances is not None:
            count, count_from = layout.instances, "measured"
        else:
            count, count_from = 1, "default"
        threads: int | str | None = self.intra_op_threads
        threads_from = "intra_op_threads"
        if threads == MEASURED:
            result = layout.result(count) if chosen and layout is not None else None
            threads, threads_from = (result.threads, "measured") if result is not None else (DEFAULT_INTRA_OP_THREADS, "default")
        written = {"instances": count, "instances_from": count_from, "intra_op_threads": threads, "threads_from": threads_from}
        return dataclasses.replace(self, instance_count=count, intra_op_threads=threads), written

    def unknown_groups(self, served: Sequence[tuple[str, str]]) -> list[str]:
        """Keys of ``instance_groups`` that name none of the ``(model name, graph name)`` pairs served."""
        known = {name for pair in served for name in pair}
        return sorted(key for key in self.instance_groups if key not in known)


def _tensor_message(message_type: type, name: str, data_type: str, dims: Sequence[int], batching: bool, **fields: Any) -> Any:
    message = message_type(name=name, data_type=mc.DataType.Value(data_type), dims=list(dims), **fields)
    if not dims:
        # Triton needs at least one dim besides the batch axis (model configuration docs, "Reshape"):
        # a [batch] tensor is declared as dims [1] reshaped to [] for the model; a 0-d tensor of a
        # model that does not batch as dims [1] (Triton refuses an empty reshape there), which the
        # generated model.py converts to and from the artifact's 0-d tensor.
        message.dims.append(1)
        if batching:
            message.reshape.SetInParent()
    return message


def _parameter(config: mc.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def graph_model_config(io: ModelIO, options: TritonModelOptions, device: str = "cpu") -> mc.ModelConfig:
    """Configuration of a Python-backend model that runs one graph spec's artifact.

    ``dynamic_batching`` is on when ``io.max_batch_size > 0``; the inputs the model pads
    (:attr:`ModelIO.padding`, where tuning's padding invariance check held) get
    ``allow_ragged_batch: true``, so that the dynamic batcher joins requests of different lengths
    into one ``execute()``. The instance group is the model's
    own (:meth:`TritonModelOptions.group_for`); version policy, free parameters, intra-op threads
    (parameter ``aitune_triton.intra_op_threads``) and the response cache come from ``options``. The IO mapping itself is in the
    version directory's ``io.json`` (read by ``model.py``) and in the entry model's parameters.
    """
    config = mc.ModelConfig(name=io.model_name, backend="python", max_batch_size=io.max_batch_size)
    batching = io.max_batch_size > 0
    ragged = set(io.ragged_inputs) if batching else set()
    config.input.extend(
        _tensor_message(mc.ModelInput, t.name, t.data_type, t.dims, batching, **({"allow_ragged_batch": True} if t.name in ragged else {}))
        for t in io.inputs
    )
    config.output.extend(_tensor_message(mc.ModelOutput, t.name, t.data_type, t.dims, batching) for t in io.outputs)
    config.instance_group.append(options.group_for(io.model_name, io.graph).message(device))
    if io.max_batch_size > 0 and options.dynamic_batching is not None:
        # The options' sizes when given, else the size the batch sweep measured for this graph spec.
        options.dynamic_batching.apply(config, io.preferred_batch_size)
    options.version_policy.apply(config)
    for key, value in options.parameters.items():
        _parameter(config, key, value)
    if options.threads is not None:
        _parameter(config, THREADS_PARAMETER, str(options.threads))
    if options.response_cache:
        config.response_cache.enable = True
    return config


def _union(ios: Sequence[ModelIO], side: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """Union of tensors by name with full dims; the same name must keep one dtype and rank."""
    seen: dict[str, tuple[str, tuple[int, ...], str]] = {}
    for io in ios:
        for tensor in getattr(io, side):
            dims = io.full_dims(tensor)
            if tensor.name not in seen:
                seen[tensor.name] = (tensor.data_type, dims, io.graph)
                continue
            data_type, known, graph = seen[tensor.name]
            if data_type != tensor.data_type or len(known) != len(dims):
                raise ExportError(
                    f"entry model: {side[:-1]} {tensor.name!r} is {data_type} rank {len(known)} in {graph} but "
                    f"{tensor.data_type} rank {len(dims)} in {io.graph}; one Triton model needs one dtype and rank "
                    "per tensor name. Record such calls under separate Module names."
                )
            merged = tuple(a if a == b else -1 for a, b in zip(known, dims))
            seen[tensor.name] = (data_type, merged, graph)
    return [(name, data_type, dims) for name, (data_type, dims, _) in seen.items()]


def router_model_config(
    name: str, ios: Sequence[ModelIO], routes: Routes | dict[str, Any], options: TritonModelOptions
) -> mc.ModelConfig:
    """Configuration of the entry model: a Python-backend BLS router in front of the graph models.

    Its inputs are the union of the graph models' inputs, all ``optional``; each request goes to
    the graph model whose input names are exactly the ones present. ``max_batch_size`` is 0 and
    dims are full (module) shapes, since requests pass through (graph models do the batching).
    ``routes`` (signature and every graph model's IO mapping) is stored as the
    ``aitune_triton.routes`` parameter, read by ``model.py`` and by RemoteModule.

    Graph specs that take the same input names (they differ only in constant arguments) cannot be
    told apart by a request's tensors: the entry model refuses such requests, naming the graph
    models to call directly; RemoteModule, which sees the constants, is not affected.

    Raises:
        ExportError: two graph specs use one tensor name with different dtypes or ranks.
    """
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.extend(_tensor_message(mc.ModelInput, *tensor, False, optional=True) for tensor in _union(ios, "inputs"))
    config.output.extend(_tensor_message(mc.ModelOutput, *tensor, False) for tensor in _union(ios, "outputs"))
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.entry_instance_count)
    options.version_policy.apply(config)
    set_routes_parameter(config, routes)
    return config


def set_routes_parameter(config: mc.ModelConfig, routes: Routes | dict[str, Any]) -> None:
    """Store ``routes`` (signature and every graph model's IO mapping; a dict is read with
    :meth:`Routes.from_dict`) as the ``aitune_triton.routes`` parameter: what makes ``config``'s
    model an entry model that RemoteModule can read (a router, or a module's only graph model
    exported without one).

    Raises:
        RoutesError: a dict ``routes`` is not routes.
    """
    _parameter(config, ROUTES_PARAMETER, (routes if isinstance(routes, Routes) else Routes.from_dict(routes)).to_json())


def model_config_text(config: mc.ModelConfig) -> str:
    """``config.pbtxt`` text of a configuration."""
    return text_format.MessageToString(config)


def write_model_config(config: mc.ModelConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` as protobuf text to ``path`` atomically (temporary file + rename).

    The text is parsed back before it is written, so a file that Triton could not parse is never
    written.
    """
    path = Path(path)
    text = model_config_text(config)
    text_format.Parse(text, mc.ModelConfig())
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide it from a server running as another user (uid 1000 in containers)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_model_config(path: str | os.PathLike) -> mc.ModelConfig:
    """Parse a ``config.pbtxt``.

    Raises:
        google.protobuf.text_format.ParseError: the file does not follow the ModelConfig schema.
    """
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
