"""int8 for the OpenVINO backend: NNCF post-training quantization of the converted model,
calibrated on the graph spec's recorded calls."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from aitune_triton.errors import BackendBuildError

__all__ = ["ATTENTION_OPS", "looks_like_transformer", "quantize_int8"]

#: OpenVINO op types whose presence marks a model as transformer-like (attention scores).
ATTENTION_OPS = frozenset({"Softmax", "ScaledDotProductAttention"})


def looks_like_transformer(model: Any) -> bool:
    """Whether the OpenVINO model computes attention: a ``Softmax`` or ``ScaledDotProductAttention``
    op beside at least two ``MatMul`` ops (queries x keys, scores x values)."""
    types = [op.get_type_name() for op in model.get_ops()]
    return any(t in ATTENTION_OPS for t in types) and types.count("MatMul") >= 2


def quantize_int8(model: Any, feeds: Sequence[dict[str, np.ndarray]], transformer: bool, log: Callable[[str], None]) -> Any:
    """The model quantized to int8 with ``nncf.quantize``, calibrated on ``feeds``.

    Weights are quantized per output channel (symmetric), activations per tensor; the statistics
    come from every recorded call (``subset_size`` = their number), so the scales cover the
    sentence lengths and batch sizes the module was recorded at. Transformer-like models
    (:func:`looks_like_transformer`) get ``model_type=nncf.ModelType.TRANSFORMER``: NNCF then keeps
    the operations that lose most in int8 (Softmax, LayerNorm-like reductions, the attention score
    products' sensitive inputs) in float, applies SmoothQuant to the MatMul inputs, and uses the
    ``MIXED`` preset (asymmetric activations, symmetric weights).

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

    present = {name for port in model.inputs for name in port.get_names()}
    items = [{name: array for name, array in feed.items() if name in present} for feed in feeds]
    options: dict[str, Any] = {"subset_size": len(items)}
    if transformer:
        options.update(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
    try:
        quantized = nncf.quantize(model, nncf.Dataset(items), **options)
    except Exception as error:
        raise BackendBuildError(f"openvino: int8 nncf.quantize failed: {type(error).__name__}: {error}") from error
    log(
        f"openvino: int8 post-training quantization (nncf.quantize, {len(items)} recorded calls"
        + (", model_type=TRANSFORMER)" if transformer else ")")
    )
    return quantized
