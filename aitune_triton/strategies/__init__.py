"""Tuning strategies."""

from aitune_triton.strategies.base import CandidateReport, GraphTuneReport, TuneContext, TuneStrategy, resolve_backend
from aitune_triton.strategies.first_wins import FirstWinsStrategy
from aitune_triton.strategies.one_backend import OneBackendStrategy


def default_strategy() -> TuneStrategy:
    """The strategy used when neither the constructor nor ``tune()`` names one.

    ``FirstWinsStrategy(["aoti", "onnxruntime", "eager"])``: AOTInductor was the fastest CPU
    backend measured on MiniLM-L6 (about 175 ms vs 220 ms eager, design notes), ONNX Runtime is
    the portable second choice, and eager keeps a module that neither can export working.
    """
    return FirstWinsStrategy(["aoti", "onnxruntime", "eager"])


__all__ = [
    "CandidateReport",
    "FirstWinsStrategy",
    "GraphTuneReport",
    "OneBackendStrategy",
    "TuneContext",
    "TuneStrategy",
    "default_strategy",
    "resolve_backend",
]
