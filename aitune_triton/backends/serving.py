"""How a backend's artifact is served by one of Triton's own backends (``export(..., target="native")``).

A backend class declares :class:`NativeTarget` as its ``triton_native`` attribute, next to its
registration; a backend without one (eager, inductor) is served by a generated Python-backend
model only. The exporter (``aitune_triton/triton/native.py``) reads only this declaration, never
a backend's name.

The tensor names and dtypes of a native model are the artifact's own: Triton's ONNX Runtime
backend matches config tensors to the ONNX graph's input and output names, and its PyTorch
backend, which does not name tensors, takes ``INPUT__<i>`` / ``OUTPUT__<i>`` in argument order
(Triton PyTorch backend docs, "Naming convention"). The platform names and default file names
below are the ones Triton's core knows (model configuration docs, "Platform and backend").
``torch_aoti`` needs a Triton whose core knows that platform: the tritonserver 2.51 of
nvidia-pytriton 0.7.0 refuses the model when it polls the repository ("unexpected 'platform' and
'backend' pair"), while the entry model and the other models still load.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aitune_triton.backends.onnxruntime_options import OnnxRuntimeOptions
from aitune_triton.errors import ExportError, InvalidArgumentError

__all__ = [
    "NativeSettings",
    "NativeSignature",
    "NativeTarget",
    "NativeTensor",
    "ONNX_RUNTIME_TARGET",
    "TORCH_AOTI_TARGET",
    "aoti_signature",
    "onnx_signature",
]


@dataclass(frozen=True)
class NativeTensor:
    """One tensor as the artifact itself names it.

    Attributes:
        name: The artifact's tensor name (``input_0``, ``INPUT__0``).
        dtype: Torch dtype name (``float32``, ``int64``).
    """

    name: str
    dtype: str


@dataclass(frozen=True)
class NativeSignature:
    """The artifact's inputs and outputs, in the graph spec's flattening order.

    Attributes:
        inputs: Input tensors.
        outputs: Output tensors.
        device: Where the artifact's code runs, when the artifact says (``"cpu"``, ``"cuda"``), else None.
    """

    inputs: tuple[NativeTensor, ...]
    outputs: tuple[NativeTensor, ...]
    device: str | None = None


#: ``signature(artifact path, graph spec description)`` -> the artifact's own signature. The graph
#: spec description (``GraphSpec.to_dict()``) supplies what the artifact cannot say (dtypes of a
#: package that does not record them). Raises ExportError when the artifact cannot be read.
SignatureReader = Callable[[Path, dict[str, Any]], NativeSignature]
#: ``profiles(artifact path)`` -> optimization profile names for ``instance_group.profile``.
ProfileReader = Callable[[Path], Sequence[str]]


@dataclass(frozen=True)
class NativeSettings:
    """Config fields through which a Triton backend applies a backend's tuned session options.

    Attributes:
        parameters: Config ``parameters`` the Triton backend reads (``intra_op_thread_count``).
        graph_optimization_level: ``optimization.graph.level``, or None to leave the Triton
            backend's default.
    """

    parameters: dict[str, str] = field(default_factory=dict)
    graph_optimization_level: int | None = None


#: ``settings(backend options, intra-op threads per instance)`` -> :class:`NativeSettings`. The
#: threads are the export's ``intra_op_threads``; None: keep what the backend's options say.
SettingsWriter = Callable[[dict[str, Any], "int | None"], NativeSettings]


@dataclass(frozen=True)
class NativeTarget:
    """A Triton backend that loads a backend's artifact itself, with no generated ``model.py``.

    Attributes:
        default_model_filename: File name the Triton backend loads from the version directory
            (``model.onnx``, ``model.pt2``, ``model.plan``); the artifact is copied under it.
        signature: Reads the tensor names and dtypes the artifact itself uses (:data:`SignatureReader`).
        platform: Config ``platform`` (``onnxruntime_onnx``, ``torch_aoti``, ``tensorrt_plan``), or None.
        backend: Config ``backend`` (``onnxruntime``, ``pytorch``, ``tensorrt``), or None. At least
            one of ``platform`` and ``backend`` is given.
        requires_gpu: Instances must be ``KIND_GPU`` whatever the export options say (TensorRT plans).
        profiles: Optimization profiles each instance uses (``instance_group.profile``, TensorRT),
            read from the artifact; None: the Triton backend's default.
        settings: How the backend's tuned options and the export's intra-op threads become the
            Triton backend's own config fields (:data:`SettingsWriter`); None: none apply.

    Raises:
        InvalidArgumentError: neither ``platform`` nor ``backend`` is given, or
            ``default_model_filename`` is not a plain file name.

    Example, a TensorRT backend declaring its plan::

        triton_native = NativeTarget(
            default_model_filename="model.plan", signature=read_plan_signature,
            platform="tensorrt_plan", backend="tensorrt", requires_gpu=True,
            profiles=lambda plan: ["0"],
        )
    """

    default_model_filename: str
    signature: SignatureReader
    platform: str | None = None
    backend: str | None = None
    requires_gpu: bool = False
    profiles: ProfileReader | None = None
    settings: SettingsWriter | None = None

    def __post_init__(self) -> None:
        if not self.platform and not self.backend:
            raise InvalidArgumentError(
                "NativeTarget: expected a platform (onnxruntime_onnx...) or a backend name (onnxruntime...), got neither"
            )
        name = self.default_model_filename
        if not name or "/" in name or name in (".", ".."):
            raise InvalidArgumentError(f"NativeTarget: default_model_filename must be a plain file name, got {name!r}")

    @property
    def label(self) -> str:
        """``platform`` when given, else ``backend`` (for messages)."""
        return self.platform or self.backend or ""


#: ONNX ``TensorProto`` data type name -> torch dtype name (the dtypes a graph spec can hold).
_ONNX_TO_TORCH = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FLOAT16": "float16",
    "FLOAT": "float32",
    "DOUBLE": "float64",
    "BFLOAT16": "bfloat16",
}


def onnx_signature(artifact: Path, graph: dict[str, Any]) -> NativeSignature:
    """The graph inputs (initializers left out) and outputs of an ONNX model, names and dtypes.

    Args:
        artifact: ``model.onnx`` (weights inline or beside it; only the graph is read).
        graph: The graph spec description (unused: an ONNX graph states its own dtypes).

    Raises:
        ExportError: the file is not an ONNX model, or a tensor's element type has no torch dtype.
    """
    import onnx

    try:
        model = onnx.load(str(artifact), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError...
        raise ExportError(f"{artifact}: cannot be read as an ONNX model ({type(error).__name__}: {error})") from error
    initializers = {initializer.name for initializer in model.graph.initializer}

    def tensor(value: Any) -> NativeTensor:
        element = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        if element not in _ONNX_TO_TORCH:
            raise ExportError(f"{artifact}: tensor {value.name!r} has ONNX element type {element}, which no graph spec holds")
        return NativeTensor(value.name, _ONNX_TO_TORCH[element])

    return NativeSignature(
        inputs=tuple(tensor(v) for v in model.graph.input if v.name not in initializers),
        outputs=tuple(tensor(v) for v in model.graph.output),
    )


_AOTI_INPUT = re.compile(r"\binputs_info_\[(\d+)\]\.name\s*=")
_AOTI_OUTPUT = re.compile(r"\boutputs_info_\[(\d+)\]\.name\s*=")


def aoti_signature(artifact: Path, graph: dict[str, Any]) -> NativeSignature:
    """``INPUT__<i>`` / ``OUTPUT__<i>`` for each input and output of an AOTInductor package.

    The counts and the device are read from the package (its generated wrapper declares every
    input and output; its metadata holds ``AOTI_DEVICE_KEY``); the package records no dtypes a
    reader can take without running it, so they are the graph spec's (the ones it was compiled for).

    Args:
        artifact: The ``.pt2`` package written by ``aoti_compile_and_package``.
        graph: The graph spec description (``GraphSpec.to_dict()``): its tensors' ``dtype``.

    Raises:
        ExportError: the file is not an AOTInductor package.
    """
    try:
        with zipfile.ZipFile(artifact) as package:
            names = package.namelist()
            wrappers = [package.read(n).decode(errors="replace") for n in names if n.endswith(".wrapper.cpp")]
            metadata = [json.loads(package.read(n)) for n in names if n.endswith("wrapper_metadata.json")]
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise ExportError(f"{artifact}: cannot be read as an AOTInductor package ({type(error).__name__}: {error})") from error
    if len(wrappers) != 1:
        raise ExportError(f"{artifact}: expected one compiled model (*.wrapper.cpp) in the package, found {len(wrappers)}")
    inputs = {int(i) for i in _AOTI_INPUT.findall(wrappers[0])}
    outputs = {int(i) for i in _AOTI_OUTPUT.findall(wrappers[0])}
    dtypes_in = [t["dtype"] for t in graph["inputs"]]
    dtypes_out = [t["dtype"] for t in graph["outputs"]]
    device = metadata[0].get("AOTI_DEVICE_KEY") if metadata else None
    return NativeSignature(
        inputs=tuple(NativeTensor(f"INPUT__{i}", dtypes_in[i] if i < len(dtypes_in) else "") for i in sorted(inputs)),
        outputs=tuple(NativeTensor(f"OUTPUT__{i}", dtypes_out[i] if i < len(dtypes_out) else "") for i in sorted(outputs)),
        device=device or None,
    )


#: ``graph_optimization_level`` option -> ``optimization.graph.level`` of Triton's ONNX Runtime
#: backend (its README, "Model Config Options": -1 basic, 1 basic and extended, 2 disabled,
#: unset all).
_ONNX_RUNTIME_GRAPH_LEVELS: dict[str, int | None] = {"disable": 2, "basic": -1, "extended": 1, "all": None}


def onnxruntime_settings(options: dict[str, Any], threads: int | None) -> NativeSettings:
    """The ONNX Runtime session options that were measured and checked against eager, as Triton's
    ONNX Runtime backend reads them: ``intra_op_thread_count`` and ``optimization.graph.level``."""
    typed = OnnxRuntimeOptions.from_dict(options)
    count = threads if threads is not None else typed.intra_op_num_threads
    level = _ONNX_RUNTIME_GRAPH_LEVELS.get(str(typed.graph_optimization_level or "all"))
    return NativeSettings({"intra_op_thread_count": str(count)} if count else {}, level)


def torch_settings(options: dict[str, Any], threads: int | None) -> NativeSettings:
    """Intra-op threads as Triton's PyTorch backend reads them (``INTRA_OP_THREAD_COUNT``; its README
    notes that the first model to set it sets it for the whole backend)."""
    return NativeSettings({"INTRA_OP_THREAD_COUNT": str(threads)} if threads else {})


#: Triton's ONNX Runtime backend (``platform: "onnxruntime_onnx"``, ``model.onnx``).
ONNX_RUNTIME_TARGET = NativeTarget(
    default_model_filename="model.onnx", signature=onnx_signature, platform="onnxruntime_onnx", backend="onnxruntime",
    settings=onnxruntime_settings,
)
#: Triton's PyTorch backend for AOTInductor packages (``platform: "torch_aoti"``, ``model.pt2``).
TORCH_AOTI_TARGET = NativeTarget(default_model_filename="model.pt2", signature=aoti_signature, platform="torch_aoti",
                                 backend="pytorch", settings=torch_settings)
