"""Tuning strategies: one evaluation of every candidate (build, check, profile), then a selection rule."""

from aitune_triton.strategies.backend_list import BackendListStrategy
from aitune_triton.strategies.base import (
    PRECISION_TOLERANCES,
    AccuracyMetric,
    TuneContext,
    TuneStrategy,
    resolve_backend,
    resolve_backends,
)
from aitune_triton.strategies.candidates import default_candidates
from aitune_triton.strategies.first_wins import FirstWinsStrategy
from aitune_triton.strategies.latency_budget import LatencyBudgetStrategy
from aitune_triton.strategies.max_throughput import MaxThroughputStrategy
from aitune_triton.strategies.min_latency import MinLatencyStrategy
from aitune_triton.strategies.one_backend import OneBackendStrategy
from aitune_triton.strategies.noise import NoiseCheck
from aitune_triton.strategies.profiler import Profiler, Timing
from aitune_triton.strategies.layout import LayoutReport, LayoutResult, choose_layout
from aitune_triton.strategies.report import BatchSweep, CandidateReport, CandidateStatus, GraphTuneReport, report_table


def default_strategy() -> TuneStrategy:
    """The strategy used when neither the constructor nor ``tune()`` names one.

    ``MinLatencyStrategy(default_candidates() + ["eager"])`` with the default 1% speed gate: every
    CPU candidate (:func:`default_candidates`) is built, checked against eager and profiled on
    the recorded calls, and the one with the lowest latency over the recorded shapes (weighted by
    recorded calls) is kept when it is at least 1% faster than eager there and not more than 1%
    slower at any recorded shape; otherwise (or when none matches eager) the graph
    spec stays on eager. Then the served layouts and in-process threads of the kept backend are
    measured (``measure_layouts=True``, :mod:`aitune_triton.strategies.layout`). On a CUDA device the same backends build for CUDA (ONNX Runtime with its
    CUDA execution provider). Lower precisions are never chosen by default: they are opt-in.
    """
    return MinLatencyStrategy([*default_candidates(), "eager"], measure_layouts=True)


__all__ = [
    "PRECISION_TOLERANCES",
    "AccuracyMetric",
    "BackendListStrategy",
    "BatchSweep",
    "CandidateReport",
    "CandidateStatus",
    "FirstWinsStrategy",
    "GraphTuneReport",
    "LatencyBudgetStrategy",
    "LayoutReport",
    "LayoutResult",
    "MaxThroughputStrategy",
    "MinLatencyStrategy",
    "NoiseCheck",
    "OneBackendStrategy",
    "Profiler",
    "Timing",
    "TuneContext",
    "TuneStrategy",
    "choose_layout",
    "default_candidates",
    "default_strategy",
    "report_table",
    "resolve_backend",
    "resolve_backends",
]
