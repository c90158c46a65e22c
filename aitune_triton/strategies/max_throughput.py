"""MaxThroughputStrategy: keep the candidate with the highest throughput over the batch sizes profiled."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from aitune_triton.backends import Backend
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.strategies.backend_list import BackendListStrategy
from aitune_triton.strategies.base import CandidateReport

__all__ = ["MaxThroughputStrategy"]


class MaxThroughputStrategy(BackendListStrategy):
    """Evaluate every backend and keep the one with the highest throughput (samples per second)
    over the profiled batch sizes, if it beats eager's by the speed gate.

    Like every strategy it searches the max batch size (``find_max_batch_size=True``): batch sizes
    1, 2, 4, ... built from recorded samples (graph specs whose samples proved independent along
    the batch axis) until throughput grows by less than ``batch_gain_threshold``; the kept
    candidate's best size becomes Triton's preferred batch size and the batch range reaches it.
    Unlike the others, it sweeps every candidate (its rule compares their throughput).

    Args:
        backends: Registered names or configured Backend instances.
        batch_sizes: Batch sizes to profile instead of the sweep (each built from recorded
            samples); the one with the highest throughput is recorded as the preferred batch size,
            like the sweep's. None sweeps.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy` (``find_max_batch_size``
            defaults to True here, unless ``batch_sizes`` is given).

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty or ``batch_sizes`` holds
            something other than positive integers.
    """

    #: The rule compares throughput over batch sizes: every candidate is swept.
    sweeps_every_candidate: ClassVar[bool] = True

    def __init__(
        self,
        backends: Sequence[str | Backend],
        batch_sizes: Sequence[int] | None = None,
        atol: float = 1e-4,
        rtol: float = 1e-4,
        **options: Any,
    ):
        if batch_sizes is not None:
            sizes = list(batch_sizes) if not isinstance(batch_sizes, (str, bytes, int)) else None
            if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
                raise InvalidArgumentError(f"batch_sizes: expected a non-empty list of positive integers or None, got {batch_sizes!r}")
            batch_sizes = sorted(set(sizes))
            options.setdefault("find_max_batch_size", False)
            options.setdefault("max_batch_size_limit", batch_sizes[-1])
        else:
            options.setdefault("find_max_batch_size", True)
        super().__init__(backends, atol=atol, rtol=rtol, **options)
        self.batch_sizes = list(batch_sizes) if batch_sizes is not None else None

    def rule(self) -> str:
        return "highest throughput"

    def speed(self, report: CandidateReport) -> float | None:
        """Seconds per sample at the best profiled batch size (lower is better)."""
        best = report.best_throughput()
        return 1.0 / best if best else None

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The candidate with the highest throughput."""
        return self.fastest(passed)
