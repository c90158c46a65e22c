"""FirstWinsStrategy: evaluate backends in order, keep the first that matches eager and passes the speed gate."""

from __future__ import annotations

from typing import Any, Sequence

from aitune_triton.backends import Backend
from aitune_triton.strategies.base import CandidateReport, TuneStrategy, resolve_backends

__all__ = ["FirstWinsStrategy"]


class FirstWinsStrategy(TuneStrategy):
    """Evaluate backends in the given order and keep the first one that builds, matches eager and
    beats eager by the speed gate; the rest are not built.

    Args:
        backends: Registered names or configured Backend instances, most preferred first.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy` (``speed_margin``,
            ``accuracy``, ``find_max_batch_size``, ``profiler``...).

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
        ArgumentTypeError: (a TypeError) an entry is neither a name nor a Backend.
    """

    def __init__(self, backends: Sequence[str | Backend], atol: float = 1e-4, rtol: float = 1e-4, **options: Any):
        super().__init__(atol=atol, rtol=rtol, **options)
        self._backends = resolve_backends(backends)

    def candidates(self) -> list[Backend]:
        """Fresh copies of the given backends, in the given order."""
        return [b.clone() for b in self._backends]

    def rule(self) -> str:
        return "the first in order that matched eager"

    def stop_after(self, report: CandidateReport) -> bool:
        """Stop at the first candidate that matched eager and passed the speed gate."""
        return report.status == "passed"

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The first candidate that passed."""
        return passed[0]
