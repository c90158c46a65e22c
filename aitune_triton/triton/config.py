"""Triton model configurations as ``model_config_pb2.ModelConfig`` messages.

Building a configuration and writing it are separate: builders return protobuf messages (the
official schema from ``tritonclient.grpc.model_config_pb2``, so a misspelt field fails when it
is set), and :func:`write_model_config` serializes with ``google.protobuf.text_format``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.errors import ExportError
from aitune_triton.triton.io import ModelIO

__all__ = [
    "ROUTES_PARAMETER",
    "TritonModelOptions",
    "graph_model_config",
    "model_config_text",
    "read_model_config",
    "router_model_config",
    "set_routes_parameter",
    "write_model_config",
]

#: Configuration parameter of the entry model: signature and every graph model's IO mapping (JSON).
ROUTES_PARAMETER = "aitune_triton.routes"


@dataclass
class TritonModelOptions:
    """Deployment options for exported models.

    Attributes:
        instance_count: Model instances per device (``instance_group.count``); each Python-backend
            instance is a separate process.
        instance_kind: ``"cpu"``, ``"gpu"`` or ``"auto"`` (GPU when the backend was tuned on CUDA).
            A CPU-only server loads only ``KIND_CPU`` instances.
        max_queue_delay_microseconds: How long the dynamic batcher may hold a request to form a
            larger batch (models with ``max_batch_size > 0`` only).
        preferred_batch_size: Batch sizes the dynamic batcher aims for; empty: the size measured
            by the tuning's batch size sweep when there was one, else Triton decides.
        entry_instance_count: Instances of the entry (router) model. A Python model instance runs
            one ``execute()`` at a time and the router gets one request per call, so this bounds
            how many requests through the entry model reach the graph models together (and can
            be batched there). Router instances only forward tensors (no torch import).
    """

    instance_count: int = 1
    instance_kind: str = "auto"
    max_queue_delay_microseconds: int = 100
    preferred_batch_size: Sequence[int] = field(default_factory=tuple)
    entry_instance_count: int = 4

    def __post_init__(self) -> None:
        for argument in ("instance_count", "entry_instance_count"):
            value = getattr(self, argument)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExportError(f"{argument}: expected an integer >= 1, got {value!r}")
        if self.instance_kind not in ("auto", "cpu", "gpu"):
            raise ExportError(f"instance_kind: expected 'auto', 'cpu' or 'gpu', got {self.instance_kind!r}")
        if not isinstance(self.max_queue_delay_microseconds, int) or self.max_queue_delay_microseconds < 0:
            raise ExportError(
                f"max_queue_delay_microseconds: expected an integer >= 0, got {self.max_queue_delay_microseconds!r}"
            )

        sizes = list(self.preferred_batch_size)
        if any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in sizes):
            raise ExportError(f"preferred_batch_size: expected positive integers, got {sizes!r}")
        self.preferred_batch_size = tuple(sizes)

    def kind_for(self, device: str) -> int:
        """``KIND_CPU`` or ``KIND_GPU`` for a backend tuned on ``device`` (``"cpu"``, ``"cuda:0"``)."""
        gpu = self.instance_kind == "gpu" or (self.instance_kind == "auto" and device.startswith("cuda"))
        return mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU


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

    ``dynamic_batching`` is on when ``io.max_batch_size > 0``. The IO mapping itself is in the
    version directory's ``io.json`` (read by ``model.py``) and in the entry model's parameters.
    """
    config = mc.ModelConfig(name=io.model_name, backend="python", max_batch_size=io.max_batch_size)
    batching = io.max_batch_size > 0
    config.input.extend(_tensor_message(mc.ModelInput, t.name, t.data_type, t.dims, batching) for t in io.inputs)
    config.output.extend(_tensor_message(mc.ModelOutput, t.name, t.data_type, t.dims, batching) for t in io.outputs)
    config.instance_group.add(kind=options.kind_for(device), count=options.instance_count)
    if io.max_batch_size > 0:
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_microseconds
        # The options' sizes when given, else the size the batch sweep measured for this graph spec.
        preferred = list(options.preferred_batch_size) or ([io.preferred_batch_size] if io.preferred_batch_size else [])
        config.dynamic_batching.preferred_batch_size.extend([size for size in preferred if size <= io.max_batch_size])
    config.version_policy.latest.num_versions = 1
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


def router_model_config(name: str, ios: Sequence[ModelIO], routes: dict[str, Any], options: TritonModelOptions) -> mc.ModelConfig:
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
    config.version_policy.latest.num_versions = 1
    set_routes_parameter(config, routes)
    return config


def set_routes_parameter(config: mc.ModelConfig, routes: dict[str, Any]) -> None:
    """Store ``routes`` (signature and every graph model's IO mapping) as the
    ``aitune_triton.routes`` parameter: what makes ``config``'s model an entry model that
    RemoteModule can read (a router, or a module's only graph model exported without one)."""
    _parameter(config, ROUTES_PARAMETER, json.dumps(routes))


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
