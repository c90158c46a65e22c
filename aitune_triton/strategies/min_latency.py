"""MinLatencyStrategy: keep the candidate with the lowest latency at the typical recorded shape."""

from __future__ import annotations

from aitune_triton.strategies.base import BackendListStrategy, CandidateReport

__all__ = ["MinLatencyStrategy"]


class MinLatencyStrategy(BackendListStrategy):
    """Evaluate every backend and keep the one with the lowest median latency at the typical
    recorded shape (the median recorded call by input elements), if it beats eager by the speed
    gate. Ties keep the earlier candidate.

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
        return "lowest latency at the typical shape"

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The candidate with the lowest typical-shape latency."""
        return self.fastest(passed)
