"""The options of the OpenVINO backend (:class:`OpenVINOOptions`) and its native Triton target
(Triton's ``openvino`` backend over ``model.xml`` / ``model.bin``), apart from the backend so that
what reads a stored options dict (the native target's settings) needs no conversion code.

Triton's OpenVINO backend reads these config ``parameters`` (its ``ParseParameter`` for the CPU):
``INFERENCE_NUM_THREADS``, ``COMPILATION_NUM_THREADS``, ``HINT_BF16`` (only ``YES`` is accepted),
``NUM_STREAMS`` and ``PERFORMANCE_HINT``; and ``SKIP_OV_DYNAMIC_BATCHSIZE``: without it, a model
with ``max_batch_size > 0`` is reshaped to that fixed batch size (``ov::set_batch``), so requests of
other batch sizes would need ``ENABLE_BATCH_PADDING``. It has no parameter that forces f32: on a
CPU with native bf16, its fp32 models run with the plugin's default precision (bf16 there). The
IR's ``runtime_options`` rt_info does not help: the CPU plugin reads only its KV-cache and dynamic
quantization keys there (with openvino 2026.4 here, ``EXECUTION_MODE_HINT`` and
``INFERENCE_NUM_THREADS`` written there were ignored by ``compile_model``). So
:func:`openvino_settings` warns when it writes the config of an fp32 or int8 model on a CPU with
native bf16; ``target="python"`` serves it with the f32 hint (:mod:`aitune_triton.served.runtimes.openvino`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aitune_triton import _cpu
from aitune_triton.backends.options import BackendOptions, refuse_option
from aitune_triton.backends.serving import NativeSettings, NativeSignature, NativeTarget, NativeTensor
from aitune_triton.errors import ExportError
from aitune_triton.served.runtimes.openvino import INFERENCE_PRECISIONS

__all__ = ["OPENVINO_TARGET", "PRECISIONS", "OpenVINOOptions", "openvino_settings", "openvino_signature"]

#: Precisions this backend builds: fp32, bf16 (CPUs with AVX512-BF16 or AMX), int8 (NNCF post-training quantization).
PRECISIONS = tuple(INFERENCE_PRECISIONS)

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    """The options of :class:`~aitune_triton.backends.openvino.OpenVINOBackend` (see its arguments).
    Stored without the defaults.

    Raises:
        InvalidArgumentError: an option has a value outside the ones the backend lists (the
            message names the option, the allowed values and the value given).
    """

    owner = "OpenVINOBackend"

    precision: str = "fp32"
    inference_num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            refuse_option(
                self.owner, "precision", f"one of {list(PRECISIONS)}", self.precision,
                "'bf16' builds on CPUs with AVX512-BF16 or AMX, 'int8' is NNCF post-training quantization; "
                "OpenVINO's CPU plugin has no fp16 path",
            )  # fmt: skip
        threads = self.inference_num_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            refuse_option(self.owner, "inference_num_threads", "None or an int >= 1", threads, "pass None to measure it at build")

    def to_dict(self) -> dict[str, Any]:
        """Only the options that differ from their defaults."""
        options: dict[str, Any] = {}
        if self.precision != "fp32":
            options["precision"] = self.precision
        if self.inference_num_threads is not None:
            options["inference_num_threads"] = self.inference_num_threads
        return options


#: OpenVINO element type name (``Type.get_type_name()``) -> torch dtype name.
_OPENVINO_TO_TORCH = {
    "boolean": "bool",
    "u8": "uint8",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
    "bf16": "bfloat16",
}


def openvino_signature(artifact: Path, graph: dict[str, Any]) -> NativeSignature:
    """The inputs and outputs of an OpenVINO IR, with the tensor names and element types it declares.

    Args:
        artifact: ``model.xml``, with ``model.bin`` beside it.
        graph: The graph spec description (unused: the IR states its own types).

    Raises:
        ExportError: the file is not an IR OpenVINO reads, a port has no tensor name, or an element
            type has no torch dtype.
    """
    import openvino

    try:
        model = openvino.Core().read_model(str(artifact))
    except Exception as error:  # openvino raises RuntimeError for unreadable or partial IRs
        raise ExportError(f"{artifact}: cannot be read as an OpenVINO IR ({type(error).__name__}: {error})") from error

    def tensor(port: Any) -> NativeTensor:
        names = sorted(port.get_names())
        element = port.get_element_type().get_type_name()
        if not names:
            raise ExportError(f"{artifact}: a port of {port.get_node().get_friendly_name()!r} has no tensor name")
        if element not in _OPENVINO_TO_TORCH:
            raise ExportError(f"{artifact}: tensor {names[0]!r} has OpenVINO element type {element}, which no graph spec holds")
        return NativeTensor(names[0], _OPENVINO_TO_TORCH[element])

    return NativeSignature(inputs=tuple(tensor(p) for p in model.inputs), outputs=tuple(tensor(p) for p in model.outputs))


def openvino_settings(options: dict[str, Any], threads: int | None) -> NativeSettings:
    """The backend's measured threads and precision as Triton's OpenVINO backend reads them:
    ``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT=LATENCY``, ``HINT_BF16=YES`` for bf16, and
    ``SKIP_OV_DYNAMIC_BATCHSIZE=YES`` so the IR keeps its dynamic batch axis; logs a warning for an
    fp32 or int8 model on a CPU with native bf16, which Triton's backend runs in bf16 (see the module's docstring)."""
    typed = OpenVINOOptions.from_dict(options)
    count = threads if threads is not None else typed.inference_num_threads
    parameters = {"PERFORMANCE_HINT": "LATENCY", "SKIP_OV_DYNAMIC_BATCHSIZE": "YES"}
    if count:
        parameters["INFERENCE_NUM_THREADS"] = str(count)
    if typed.precision == "bf16":
        parameters["HINT_BF16"] = "YES"
    elif _cpu.native_bf16():
        _logger.warning(
            "openvino: Triton's OpenVINO backend has no parameter that keeps a %s model in f32: on this CPU, which "
            "computes bf16 natively, its plugin runs the model in bf16, so served outputs differ from the tuned f32 "
            "ones; export with target='python' to serve it with the f32 precision hint",
            typed.precision,
        )
    return NativeSettings(parameters)


#: Triton's OpenVINO backend (``backend: "openvino"``, ``model.xml`` with ``model.bin`` beside it).
OPENVINO_TARGET = NativeTarget(default_model_filename="model.xml", signature=openvino_signature, backend="openvino",
                               settings=openvino_settings)
