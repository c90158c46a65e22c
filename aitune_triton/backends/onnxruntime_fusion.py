"""ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``) on an
exported graph: the fused attention, LayerNorm and GELU operators of ONNX Runtime's contrib domain,
where the graph is a recognised transformer.

What the exporters give (measured on all-MiniLM-L6-v2, transformers 5.25, torch 2.13, ONNX Runtime
1.32): with the model's default attention (``scaled_dot_product_attention``) neither exporter's
graph matches the attention pattern (the export scales queries and keys separately and guards the
softmax with ``IsNaN``/``Where``); both fuse 12 SkipLayerNormalization, 6 BiasGelu and 1
LayerNormalization. With ``attn_implementation="eager"`` the TorchScript export also fuses 6
Attention and 1 EmbedLayerNormalization when the head count and hidden size are given (read from
the module's ``config`` here), the dynamo export still none. ONNX Runtime's own session optimizer
(``graph_optimization_level`` ``extended``/``all``) fuses LayerNorm, SkipLayerNorm and GELU itself,
so the offline fusions are not always faster: that is why ``transformer_fusion=None`` measures them
(see :class:`~aitune_triton.backends.onnxruntime.OnnxRuntimeBackend`). Measured (MiniLM-L6, every
optimization, 2 threads, ratios to eager side by side in 3 rotated rounds, 2 busy shared cores, so
noisy): TorchScript export plain / fused 0.42 / 0.55x eager at 8 x 128 and 0.58 / 0.63x at 32 x 101
(the same at 1 x 16); in another run 0.67 / 0.52x and 0.60 / 0.66x, the dynamo export 0.62 / 0.59x
and 0.63 / 0.67x; the eager-attention TorchScript export with Attention fused 0.46 / 0.54x and
0.60 / 0.59x. The fused graphs matched eager within 7e-6.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from aitune_triton.backends.flat import quiet_export

__all__ = ["FUSED_OPERATORS", "Fusion", "fuse_transformer"]

#: Fused operators (as ``get_fused_operator_statistics()`` names them) whose presence makes a graph
#: a recognised transformer.
FUSED_OPERATORS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "GemmFastGelu",
)
#: Name prefixes of the loggers of ``onnxruntime.transformers`` (its modules log under their bare
#: names), kept quiet while the optimizer runs.
_LOGGER_PREFIXES = ("fusion", "onnx_model", "optimizer", "shape_infer", "onnxruntime.transformers", "float16")


@dataclass
class Fusion:
    """What the transformer optimizer did to one graph.

    Attributes:
        recognised: Whether any of :data:`FUSED_OPERATORS` was fused (the fused graph was written).
        counts: Fused operator -> how many, the non-zero ones only.
        reason: Why the graph is not recognised (empty when it is).
    """

    recognised: bool
    counts: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def describe(self) -> str:
        """``"6 Attention, 12 SkipLayerNormalization"``: the fused operators, for logs."""
        return ", ".join(f"{count} {name}" for name, count in self.counts.items()) or "nothing fused"


@contextlib.contextmanager
def _quiet_optimizer() -> Iterator[None]:
    """The optimizer's own loggers at ERROR (it warns, e.g., when it cannot detect the head count)."""
    names = [name for name in list(logging.root.manager.loggerDict) if name.startswith(_LOGGER_PREFIXES)]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _attention_shape(module: torch.nn.Module) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` from a Hugging Face style ``module.config``; 0 where absent (the
    optimizer then reads them from the graph's reshapes, which a dynamic export may not hold)."""
    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", 0)
    hidden = getattr(config, "hidden_size", 0)
    if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden > 0 and hidden % heads == 0:
        return heads, hidden
    return 0, 0


def _output_names(model: object) -> list[str]:
    return [output.name for output in getattr(model, "graph").output]


def fuse_transformer(source: Path, target: Path, module: torch.nn.Module) -> Fusion:
    """Run the transformer optimizer (``model_type="bert"``, ``opt_level=0``: only its fusions, so
    ONNX Runtime's session optimizer still runs on the result at load) on ``source``; write the
    fused graph to ``target`` (weights inline) where the graph is recognised.

    Args:
        source: The exported ``.onnx`` file (float32).
        target: Where to write the fused graph; not written when the graph is not recognised.
        module: The exported module; its ``config.num_attention_heads`` / ``config.hidden_size`` are
            passed to the optimizer when present (0, detected from the graph, otherwise).

    Returns:
        The :class:`Fusion`: recognised (and what was fused), or not and why. An optimizer that
        raises counts as not recognised, the error in the reason.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = _attention_shape(module)
    try:
        with quiet_export(), _quiet_optimizer():
            optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
            statistics = optimized.get_fused_operator_statistics()
    except Exception as error:
        return Fusion(False, reason=f"the transformer optimizer failed on the graph: {type(error).__name__}: {error}")
    counts = {name: int(statistics.get(name, 0)) for name in FUSED_OPERATORS if statistics.get(name, 0)}
    before, after = _output_names(onnx.load(str(source), load_external_data=False)), _output_names(optimized.model)
    if counts and before != after:
        return Fusion(False, counts, f"the fused graph's outputs {after} differ from the exported graph's {before}")
    if not counts:
        return Fusion(
            False,
            reason=(
                "the transformer optimizer (model_type 'bert') fused none of "
                f"{', '.join(FUSED_OPERATORS[:4])}, ... in the graph: it is not a recognised transformer"
            ),
        )
    try:
        with quiet_export(), _quiet_optimizer():
            optimized.save_model_to_file(str(target))
    except Exception as error:  # e.g. a graph over protobuf's 2 GB limit cannot be saved with its weights inline
        target.unlink(missing_ok=True)
        return Fusion(False, counts, f"the fused graph could not be saved: {type(error).__name__}: {error}")
    return Fusion(True, counts)
