"""int8 for the ONNX Runtime backend: ``onnxruntime.quantization``'s dynamic and static quantizers
on an exported (and possibly fused) float32 graph, in place.

Both quantize weights per output channel to 7 bits (``reduce_range=True``). On x86 CPUs without
VNNI (AVX2, AVX-512 without VNNI: :func:`aitune_triton._cpu.native_int8_dot` is False), ONNX
Runtime's uint8 x int8 kernels add pairs of products in 16 bits, which saturates with full 8-bit
weights (ONNX Runtime's quantization guide, "reduce range"): the WideNet test model gave a minimum
output cosine of 0.968 against eager on such a CI machine and 0.99995 on an AVX-512 VNNI machine.
With 7-bit weights no pair can saturate, so the artifact is accurate on whichever CPU serves it
(0.9999 on the VNNI machine): the range is reduced on every CPU, since the artifact may be served
on another one than it was built on.

ONNX Runtime's pre-processing (ONNX shape inference, graph optimization) runs first, as its
quantization guide asks; when it fails the model is quantized without it (logged). Its symbolic
shape inference step is skipped: it failed on both MiniLM-L6 exports ("Incomplete symbolic shape
inference") and then writes ``sym_shape_infer_temp.onnx`` and the model's weights into the
process's working directory. Static quantization then runs that symbolic shape inference itself,
with ``auto_merge=True`` (it succeeded on the fused MiniLM-L6 graph, every tensor typed): the
quantizer leaves a MatMul whose input type it does not know in float32, and ONNX's own shape
inference cannot type the outputs of the fused contrib operators (SkipLayerNormalization, ...).

Static quantization (QDQ format) and what it keeps in float32, measured on all-MiniLM-L6-v2
(TorchScript export, calibrated on 5 recorded calls from 1 x 16 to 32 x 101 tokens; minimum
per-sentence cosine of mean-pooled embeddings against eager on the demo's 32 sentences, 8 x 128
padded; an AVX2 CPU without VNNI): every weight MatMul quantized, 0.887; the feed-forward down
projections (the MatMuls that read a GELU's output, whose activations have the widest range) kept
in float32, 0.989 (dynamic quantization of every weight MatMul: 0.989; of all but those: 0.993).
Calibrated on 6 recorded calls at 1 x 16, 8 x 128 and 32 x 101 tokens, the down projections kept,
and then in turn one more group kept in float32: none 0.986; one layer's four attention projections
and its feed-forward up projection 0.986-0.990 whichever layer; every query/key/value projection
0.990; every attention output projection 0.988; every feed-forward up projection (the MatMuls that
feed a GELU) 0.996. So static quantization keeps both feed-forward MatMuls around each GELU in
float32 and quantizes the attention projections (and any other weight MatMul/Gemm/Conv). Its
scales are fixed, so a request's answer does not depend on the batch it is served in. Through the
backend, MiniLM-L6 gave 0.9958 (single sentences and 8 x 128 padded, with or without the transformer
fusions; dynamic 0.986-0.988) at 0.37x eager's time at 8 x 128 (fp32 0.34x, dynamic 0.35x: on this
CPU without VNNI int8 is no faster; 2 busy shared cores, one run of 3 rotated rounds).
Activation x activation MatMuls (attention scores), the embedding Gathers, LayerNorms, Softmax and
Adds are never quantized. Calibration is MinMax: ONNX Runtime 1.32's Percentile and Entropy
calibrators fail on calibration samples of different shapes (``ValueError: ... inhomogeneous
shape``), which recorded samples are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from aitune_triton.backends.flat import quiet_export
from aitune_triton.errors import BackendBuildError

__all__ = ["CALIBRATION_MAX_SAMPLES", "GELU_OPERATORS", "quantize_int8", "static_quantized_nodes"]

#: At most this many recorded samples calibrate a static quantization (the first ones).
CALIBRATION_MAX_SAMPLES = 32
#: The operators around which static quantization keeps the MatMuls in float32: found up the
#: MatMul's activation input or down its output through at most :data:`_GELU_DEPTH` element-wise
#: operators (:data:`_ELEMENTWISE`: an unfused erf GELU is Div, Erf, Add, Mul, Mul).
GELU_OPERATORS = frozenset({"Erf", "Gelu", "BiasGelu", "FastGelu", "QuickGelu"})
_ELEMENTWISE = frozenset({"Add", "Mul", "Div", "Cast", "Identity"})
_GELU_DEPTH = 4
#: Operators with a constant weight (input 1) that static quantization quantizes.
_WEIGHT_OPERATORS = ("MatMul", "Gemm", "Conv")


def quantize_int8(
    path: Path, quantization: str, samples: list[dict[str, np.ndarray]], log: Callable[[str], None]
) -> None:
    """Replace the float model at ``path`` with its int8 version.

    Args:
        path: The ``.onnx`` file (weights inline), rewritten in place.
        quantization: ``"dynamic"`` (``quantize_dynamic``: weights of MatMul/Gemm and the other
            operators it supports, activations quantized to uint8 per call) or ``"static"``
            (``quantize_static``, QDQ: uint8 activations with MinMax scales calibrated on
            ``samples``, int8 per-channel weights; see the module docstring for what stays float32).
        samples: Calibration feeds (input name -> array), the recorded samples; static only.
        log: Receives one line on what was done.

    Raises:
        BackendBuildError: the quantizer failed, or a static quantization has no sample or no
            operator with constant weights to quantize.
    """
    staging = path.parent / f".{path.stem}-int8"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        source = _prepared(path, staging / "prepared.onnx", log)
        quantized = staging / "quantized.onnx"
        if quantization == "static":
            description = _quantize_static(source, quantized, samples, log)
        else:
            description = _quantize_dynamic(source, quantized)
        before, after = path.stat().st_size, quantized.stat().st_size
        os.replace(quantized, path)
        log(f"onnxruntime: int8 {description}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepared(path: Path, prepared: Path, log: Callable[[str], None]) -> Path:
    """ONNX Runtime's quantization pre-processing of ``path`` into ``prepared``; ``path`` when it fails (logged)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_export():
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        return prepared
    except Exception as error:
        log(f"onnxruntime: int8 pre-processing failed ({type(error).__name__}: {error}); quantizing the exported model as it is")
        return path


def _quantize_dynamic(source: Path, target: Path) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet_export():
            quantize_dynamic(str(source), str(target), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    except Exception as error:
        raise BackendBuildError(f"onnxruntime: int8 quantize_dynamic failed: {type(error).__name__}: {error}") from error
    return "dynamic quantization (per channel, 7-bit weights)"


def static_quantized_nodes(model: Any) -> tuple[list[str], list[str]]:
    """``(quantized, kept)``: the names of ``model``'s MatMul/Gemm/Conv nodes with a constant weight
    that static quantization quantizes, and those it keeps in float32: the feed-forward MatMuls
    around a GELU (:data:`GELU_OPERATORS`), whose activation input comes from one or whose output
    goes into one, through at most :data:`_GELU_DEPTH` element-wise operators (a bias Add, ...).

    Args:
        model: An ``onnx.ModelProto``.
    """
    constants = {initializer.name for initializer in model.graph.initializer}
    constants |= {output for node in model.graph.node if node.op_type == "Constant" for output in node.output}
    producer = {output: node for node in model.graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def into_gelu(name: str, depth: int) -> bool:
        for node in consumers.get(name, []):
            if node.op_type in GELU_OPERATORS:
                return True
            if depth > 0 and node.op_type in _ELEMENTWISE and any(into_gelu(o, depth - 1) for o in node.output):
                return True
        return False

    def after_gelu(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in GELU_OPERATORS:
            return True
        return depth > 0 and node.op_type in _ELEMENTWISE and any(after_gelu(i, depth - 1) for i in node.input if i not in constants)

    quantized: list[str] = []
    kept: list[str] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in _WEIGHT_OPERATORS or len(node.input) < 2 or node.input[1] not in constants:
            continue
        name = node.name or f"{node.op_type}_{index}"
        around_gelu = after_gelu(node.input[0], _GELU_DEPTH) or any(into_gelu(o, _GELU_DEPTH) for o in node.output)
        (kept if around_gelu else quantized).append(name)
    return quantized, kept


@contextlib.contextmanager
def _root_logger_at(level: int) -> Iterator[None]:
    """The root logger at ``level`` meanwhile: the static quantizer warns there for every tensor whose
    type ONNX shape inference cannot infer (outputs of ONNX Runtime's fused contrib operators)."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)


class _Reader:
    """A ``CalibrationDataReader`` over the recorded feeds, each restricted to the model's inputs."""

    def __init__(self, samples: list[dict[str, np.ndarray]], inputs: set[str]):
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{name: array for name, array in feed.items() if name in inputs} for feed in samples[:CALIBRATION_MAX_SAMPLES]]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _with_types(model: Any, log: Callable[[str], None]) -> Any:
    """``model`` with the value types ONNX Runtime's symbolic shape inference finds, which knows its
    fused contrib operators (ONNX's own shape inference does not, and the quantizer leaves every
    MatMul reading a tensor of unknown type in float32); ``model`` as it is where that fails (logged)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        with quiet_export(), _root_logger_at(logging.ERROR):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception as error:
        log(f"onnxruntime: symbolic shape inference failed ({type(error).__name__}: {error}); quantizing with ONNX's types only")
        return model


def _quantize_static(source: Path, target: Path, samples: list[dict[str, np.ndarray]], log: Callable[[str], None]) -> str:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not samples:
        raise BackendBuildError("onnxruntime: int8 static quantization needs recorded samples to calibrate on; none were given")
    model = _with_types(onnx.load(str(source)), log)
    for index, node in enumerate(model.graph.node):  # the quantizer selects nodes by name
        node.name = node.name or f"{node.op_type}_{index}"
    quantized, kept = static_quantized_nodes(model)
    if not quantized:
        raise BackendBuildError(
            "onnxruntime: int8 static quantization found no MatMul, Gemm or Conv with constant weights to quantize "
            f"({len(kept)} around a GELU kept in float32); use precision='fp32'"
        )
    named = target.parent / "named.onnx"  # in the staging folder: source is the artifact itself where pre-processing failed
    onnx.save(model, str(named))
    inputs = {value.name for value in model.graph.input}
    del model
    reader = _Reader(samples, inputs)
    CalibrationDataReader.register(_Reader)
    try:
        with quiet_export(), _root_logger_at(logging.ERROR):
            quantize_static(
                str(named), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=quantized,
                calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
    except Exception as error:
        raise BackendBuildError(f"onnxruntime: int8 quantize_static failed: {type(error).__name__}: {error}") from error
    samples_used = min(len(samples), CALIBRATION_MAX_SAMPLES)
    return (
        f"static quantization (QDQ, MinMax calibration on {samples_used} recorded samples, per channel, 7-bit weights; "
        f"{len(quantized)} operators quantized, {len(kept)} around a GELU kept in float32)"
    )
