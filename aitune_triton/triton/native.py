"""Graph models served by Triton's own backends: ``export(..., target="native")``.

With :attr:`ExportTarget.NATIVE` (the export target :mod:`aitune_triton.triton.targets.native`), a graph spec whose backend declares a
:class:`~aitune_triton.backends.serving.NativeTarget` (``triton_native``) becomes a model of that
Triton backend (ONNX Runtime's ``onnxruntime_onnx``, PyTorch's ``torch_aoti``...) instead of a
Python-backend model: its configuration names the platform/backend and the
``default_model_filename``, its tensors carry the names and dtypes the artifact itself uses, and
the artifact is its only file besides ``io.json`` and ``manifest.json``. ``max_batch_size``,
dims, dynamic batching and instance groups are the ones a Python-backend graph model gets.

The entry model still checks every request against the graph model's input contract (ranges,
tied axes, index ranges) before forwarding it, and renames tensors to the native model's own
names on the way (:attr:`ModelIO.served_names`); a native model called directly gets no such
check. A graph spec that cannot be served natively stays a Python-backend model, and the reason
is returned (the exporter prints it and writes it to the graph model's manifest).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.backends import get_backend_class
from aitune_triton.backends.serving import NativeSignature, NativeTarget
from aitune_triton.errors import ExportError, InvalidArgumentError, UnknownBackendError
from aitune_triton.module.description import BackendDescription, GraphDescription
from aitune_triton.triton.config import TritonModelOptions, graph_model_config
from aitune_triton.triton.options import THREADS_PARAMETER, InstanceKind
from aitune_triton.triton.io import TORCH_TO_TRITON_DTYPE, ModelIO

__all__ = ["ExportTarget", "NativeModel", "NativePlan", "native_model_config", "native_target", "plan_native"]


class ExportTarget(str, enum.Enum):
    """The built-in export targets' names: what serves each graph model of an export.

    ``export(target=...)`` takes any target registered in :mod:`aitune_triton.triton.targets`
    (where these two are declared, :mod:`~aitune_triton.triton.targets.python` and
    :mod:`~aitune_triton.triton.targets.native`); this enum names the built-in ones.

    Attributes:
        PYTHON: A generated Python-backend ``model.py`` runs every artifact (the default).
        NATIVE: A graph spec whose backend declares a Triton backend of its own is served by it;
            the others stay Python-backend models.
    """

    PYTHON = "python"
    NATIVE = "native"

    @classmethod
    def parse(cls, value: "ExportTarget | str", argument: str = "target") -> "ExportTarget":
        """The target named by ``value`` (an :class:`ExportTarget` or its value).

        Raises:
            InvalidArgumentError: ``value`` is neither; the message lists the values.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if member.value == value:
                    return member
        raise InvalidArgumentError(
            f"{argument}: expected one of {[m.value for m in cls]} (or an ExportTarget), got {value!r}. "
            "Pass 'native' to serve graph models with Triton's own backends where their backend declares one."
        )


@dataclass
class NativeModel:
    """A graph model planned for a Triton backend of its own.

    Attributes:
        io: The IO mapping, with :attr:`ModelIO.served_names` and the artifact's file name set.
        config: Its ``config.pbtxt`` message.
        target: The Triton backend serving it.
        signature: The artifact's own signature, as read from the artifact.
    """

    io: ModelIO
    config: mc.ModelConfig
    target: NativeTarget
    signature: NativeSignature


@dataclass
class NativePlan:
    """The outcome of :func:`plan_native` for one graph spec: a model, or why it stays a Python-backend model.

    Attributes:
        model: The native model, or None.
        reason: Why the graph spec stays a Python-backend model (empty when :attr:`model` is set).
    """

    model: NativeModel | None
    reason: str = ""


def native_target(backend: str) -> NativeTarget | None:
    """The :class:`NativeTarget` the backend registered as ``backend`` declares, or None."""
    try:
        return get_backend_class(backend).triton_native
    except UnknownBackendError:
        return None


def _stays(reason: str) -> NativePlan:
    return NativePlan(None, reason)


def plan_native(io: ModelIO, graph: GraphDescription, backend: BackendDescription, options: TritonModelOptions) -> NativePlan:
    """Plan the graph model of ``io`` for the Triton backend its backend declares.

    Args:
        io: The graph model's IO mapping (:meth:`ModelIO.from_graph`), names as the entry model uses them.
        graph: The graph spec, as the tuned description holds it.
        backend: The chosen backend, as the tuned description holds it (name, device, artifact).
        options: The export's model options.

    Returns:
        A :class:`NativePlan`: the native model, or the reason the graph spec stays a Python-backend
        model (its backend declares no native target; the artifact's signature does not match the
        graph spec; a 0-d tensor in a model that does not batch, which only the generated
        ``model.py`` converts).

    Raises:
        ExportError: the artifact cannot be read, or the target needs GPU instances and
            ``options.instance_kind`` is ``"cpu"``.
    """
    target = native_target(backend.name)
    if target is None:
        return _stays(f"backend {backend.name!r} declares no Triton backend of its own (triton_native is None)")
    if io.max_batch_size == 0:
        scalars = [t.name for t in io.inputs + io.outputs if not t.dims]
        if scalars:
            return _stays(
                f"0-d tensors {scalars} in a model that does not batch are declared as dims [1], which only the "
                "generated model.py converts"
            )
    artifact = backend.artifact()
    if not artifact.is_file():
        raise ExportError(f"{io.model_name}: artifact {artifact} does not exist (was the tuning cache cleared?).")
    signature = target.signature(artifact, graph.to_dict())
    problem = _mismatch(io, signature)
    if problem:
        return _stays(f"the artifact's own signature does not match the graph spec: {problem}")
    device = backend.device or "cpu"
    gpu = target.requires_gpu or signature.device == "cuda"
    if gpu and options.group_for(io.model_name, io.graph).kind is InstanceKind.CPU:
        raise ExportError(
            f"instance_kind: {io.model_name} is served by {target.label}, which runs this artifact on GPU only, "
            "but 'cpu' was given. Pass instance_kind='gpu' or 'auto', or export with target='python'."
        )
    served = {t.name: n.name for t, n in zip(io.inputs + io.outputs, signature.inputs + signature.outputs)}
    native_io = replace(
        io,
        artifact=target.default_model_filename,
        served_names={name: own for name, own in served.items() if own != name},
        padding=None,  # only the generated model.py pads requests; Triton's own backends would not cut outputs back
    )
    config = native_model_config(native_io, target, signature, options, device, gpu, artifact, backend.options)
    return NativePlan(NativeModel(native_io, config, target, signature))


def _mismatch(io: ModelIO, signature: NativeSignature) -> str:
    """Why the artifact's signature cannot stand for ``io`` (count or dtype), or ``""``."""
    for side, ours, theirs in (("inputs", io.inputs, signature.inputs), ("outputs", io.outputs, signature.outputs)):
        if len(ours) != len(theirs):
            return f"{len(theirs)} {side} in the artifact ({[t.name for t in theirs]}), {len(ours)} in the graph spec"
        for tensor, own in zip(ours, theirs):
            if own.dtype != tensor.dtype:
                return f"{side[:-1]} {own.name!r} is {own.dtype or 'of unknown dtype'} in the artifact, {tensor.dtype} in the graph spec ({tensor.path!r})"
            if own.dtype not in TORCH_TO_TRITON_DTYPE:
                return f"{side[:-1]} {own.name!r} has dtype {own.dtype}, which Triton's tensors cannot carry"
    return ""


def native_model_config(
    io: ModelIO,
    target: NativeTarget,
    signature: NativeSignature,
    options: TritonModelOptions,
    device: str,
    gpu: bool,
    artifact: Path,
    backend_options: dict[str, Any] | None = None,
) -> mc.ModelConfig:
    """Configuration of a graph model served by ``target``.

    The Python-backend graph model's configuration (:func:`graph_model_config`: ``max_batch_size``,
    dims, reshapes, dynamic batching, instances, version policy) with the platform/backend and
    ``default_model_filename`` of ``target``, the artifact's tensor names and data types, and
    ``KIND_GPU`` instances (with ``target``'s optimization profiles) when ``gpu``.

    Args:
        io: The IO mapping, with :attr:`ModelIO.served_names` set.
        target: The Triton backend.
        signature: The artifact's signature (same order as ``io``'s tensors).
        options: The export's model options.
        device: The device the backend was tuned on (``"cpu"``, ``"cuda:0"``).
        gpu: Whether the instances must be ``KIND_GPU``.
        artifact: The artifact file (``target.profiles`` reads it).
        backend_options: The tuned backend's options (``target.settings`` turns them, with
            ``options.intra_op_threads``, into the Triton backend's own fields, replacing the
            ``aitune_triton.intra_op_threads`` parameter that only a generated ``model.py`` reads).
    """
    config = graph_model_config(io, options, device)
    config.backend = target.backend or ""
    config.platform = target.platform or ""
    config.default_model_filename = target.default_model_filename
    for message, own in zip(list(config.input) + list(config.output), signature.inputs + signature.outputs):
        message.name = own.name
        message.data_type = mc.DataType.Value(TORCH_TO_TRITON_DTYPE[own.dtype])
    for group in config.instance_group:
        if gpu:
            group.kind = mc.ModelInstanceGroup.KIND_GPU
        if target.profiles is not None:
            group.profile.extend(target.profiles(artifact))
    if THREADS_PARAMETER in config.parameters:
        del config.parameters[THREADS_PARAMETER]
    if target.settings is not None:
        settings = target.settings(dict(backend_options or {}), options.threads)
        for key, value in settings.parameters.items():
            config.parameters[key].string_value = value
        if settings.graph_optimization_level is not None:
            config.optimization.graph.level = settings.graph_optimization_level
    return config
