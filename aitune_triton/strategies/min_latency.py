"""MinLatencyStrategy: keep the candidate with the lowest latency over the recorded shapes."""

from __future__ import annotations

from aitune_triton.strategies.backend_list import BackendListStrategy
from aitune_triton.strategies.base import CandidateReport

__all__ = ["MinLatencyStrategy"]


class MinLatencyStrategy(BackendListStrategy):
    """Evaluate every backend and keep the one with the lowest weighted latency over the recorded
    shapes (smallest, typical, largest by input elements; each weighted by the share of recorded
    calls nearest in size to it, :mod:`~aitune_triton.strategies.over_range`), if it passes the
    speed gate. Candidates within the measurement noise of the fastest are a tie: the earlier
    one is kept (:meth:`~aitune_triton.strategies.TuneStrategy.fastest`).

    Args:
        backends: Registered names or configured Backend instances.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy`.

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
    """

    def rule(self) -> str:
        return "lowest latency over the recorded shapes"

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The candidate with the lowest weighted latency (the earlier one within the noise)."""
        return self.fastest(passed)
