"""MinLatencyStrategy: keep the candidate with the lowest latency at the typical recorded shape."""

from __future__ import annotations

from typing import Any, Sequence

from aitune_triton.backends import Backend
from aitune_triton.strategies.base import CandidateReport, TuneStrategy, resolve_backends

__all__ = ["MinLatencyStrategy"]


class MinLatencyStrategy(TuneStrategy):
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

    def __init__(self, backends: Sequence[str | Backend], atol: float = 1e-4, rtol: float = 1e-4, **options: Any):
        super().__init__(atol=atol, rtol=rtol, **options)
        self._backends = resolve_backends(backends)

    def candidates(self) -> list[Backend]:
        """Fresh copies of the given backends, in the given order."""
        return [b.clone() for b in self._backends]

    def rule(self) -> str:
        return "lowest latency at the typical shape"

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The candidate with the lowest typical-shape latency."""
        return self.fastest(passed)
