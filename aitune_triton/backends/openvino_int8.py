"""int8 for the OpenVINO backend: NNCF post-training quantization of the converted model,
calibrated on the graph spec's recorded calls."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from aitune_triton._cpu import native_int8_dot
from aitune_triton.backends.flat import quiet_export
from aitune_triton.errors import BackendBuildError

__all__ = ["ATTENTION_OPS", "looks_like_transformer", "quantize_int8", "sensitive_matmuls"]

#: OpenVINO op types whose presence marks a model as transformer-like (attention scores).
ATTENTION_OPS = frozenset({"Softmax", "ScaledDotProductAttention"})
#: Ops between a GELU and the MatMul it feeds that keep its values' range (reshapes, casts).
_PASS_THROUGH = frozenset({"Convert", "Reshape", "Squeeze", "Unsqueeze", "Transpose"})


def looks_like_transformer(model: Any) -> bool:
    """Whether the OpenVINO model computes attention: a ``Softmax`` or ``ScaledDotProductAttention``
    op beside at least two ``MatMul`` ops (queries x keys, scores x values)."""
    types = [op.get_type_name() for op in model.get_ops()]
    return any(t in ATTENTION_OPS for t in types) and types.count("MatMul") >= 2


def sensitive_matmuls(model: Any) -> list[str]:
    """Friendly names of the MatMuls that take a GELU's output (a transformer's feed-forward
    down-projection): the activations with the widest range, kept in float by :func:`quantize_int8`."""
    found = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        source = op.input_value(0).get_node()
        while source.get_type_name() in _PASS_THROUGH:
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Gelu":
            found.append(op.get_friendly_name())
    return found


def quantize_int8(model: Any, feeds: Sequence[dict[str, np.ndarray]], transformer: bool, log: Callable[[str], None]) -> Any:
    """The model quantized to int8 with ``nncf.quantize``, calibrated on ``feeds``.

    Weights are quantized per output channel (symmetric), activations per tensor; the statistics
    come from every recorded call (``subset_size`` = their number). Settings chosen by measurement
    on this project's AVX2 machine (no VNNI):

    * ``overflow_fix=OverflowFix.ENABLE``: weights use 7 of their 8 bits in every layer (NNCF's
      default fixes only the first layer). On x86 CPUs without VNNI the u8 x s8 kernels add pairs of
      products in 16 bits, which saturates with full 8-bit weights; with 7 bits no pair can, so the
      artifact is accurate on whichever CPU serves it. Two Linear layers 64-128-32, calibrated on
      13 rows, judged on 200 unseen ones (three seeds): minimum output cosine 0.94 / 0.94 / 0.95
      without, 0.99 / 0.99 / 0.97 with.
    * Activation ranges from the min and max over all calibration calls
      (``RangeEstimatorParametersSet.MINMAX``), so inputs beyond the few recorded calls are
      clipped less: with the overflow fix, 0.996 / 0.995 / 0.986 on the same nets.
    * Transformer-like models (:func:`looks_like_transformer`):
      ``model_type=nncf.ModelType.TRANSFORMER`` (NNCF keeps Softmax, LayerNorm-like reductions and
      similar in float), the ``MIXED`` preset (asymmetric activations), SmoothQuant off, and the
      feed-forward down-projections (:func:`sensitive_matmuls`) kept in float. On MiniLM-L6
      (calibrated on 2 calls of 8 x 128 tokens; per-sentence cosine of mean-pooled embeddings on
      the demo's 32 sentences, minimum / mean): TRANSFORMER alone 0.985 / 0.991; with the overflow
      fix 0.976 / 0.989; plus SmoothQuant off 0.987 / 0.993; the overflow fix with the
      down-projections in float 0.989 / 0.995; that and SmoothQuant off (what is built) 0.992 / 0.996.

    Speed: on this project's AVX2 CPU without VNNI, int8 ran slower than fp32 (MiniLM-L6 at 8 x 128
    tokens, one thread, rotated rounds: NNCF's defaults 1.95x fp32's time, these settings 1.73x):
    the CPU plugin's int8 kernels pay off with VNNI or AMX (:func:`aitune_triton._cpu.native_int8_dot`),
    which this machine lacks. The build logs it; the strategy's measurement decides.

    Args:
        model: The converted ``openvino.Model`` (inputs named ``input_<i>``).
        feeds: One dict of input name -> numpy array per recorded call.
        transformer: Whether to quantize it as a transformer.
        log: Receives one line about what was done.

    Returns:
        The quantized ``openvino.Model``.

    Raises:
        BackendBuildError: ``nncf.quantize`` failed.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    present = {name for port in model.inputs for name in port.get_names()}
    items = [{name: array for name, array in feed.items() if name in present} for feed in feeds]
    advanced: dict[str, Any] = {"overflow_fix": OverflowFix.ENABLE, "activations_range_estimator_params": RangeEstimatorParametersSet.MINMAX}
    options: dict[str, Any] = {"subset_size": len(items)}
    kept: list[str] = []
    if transformer:
        kept = sensitive_matmuls(model)
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=-1.0)
        options.update(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
        if kept:
            options["ignored_scope"] = nncf.IgnoredScope(names=kept)
    options["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_export():  # NNCF's progress bars print to stdout
            quantized = nncf.quantize(model, nncf.Dataset(items), **options)
    except Exception as error:
        raise BackendBuildError(f"openvino: int8 nncf.quantize failed: {type(error).__name__}: {error}") from error
    finally:
        logger.setLevel(level)
    if not native_int8_dot():
        log("openvino: this CPU has no VNNI/AMX int8 instructions: int8 may run slower than fp32 here (measured on MiniLM-L6)")
    log(
        f"openvino: int8 post-training quantization (nncf.quantize, {len(items)} recorded calls, 7-bit weights"
        + (f", model_type=TRANSFORMER, {len(kept)} feed-forward down-projections kept in float)" if transformer else ")")
    )
    return quantized
