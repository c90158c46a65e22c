"""FirstWinsStrategy: evaluate backends in order, keep the first that matches eager and passes the speed gate."""

from __future__ import annotations

from aitune_triton.strategies.backend_list import BackendListStrategy
from aitune_triton.strategies.base import CandidateReport
from aitune_triton.strategies.report import CandidateStatus

__all__ = ["FirstWinsStrategy"]


class FirstWinsStrategy(BackendListStrategy):
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

    def rule(self) -> str:
        return "the first in order that matched eager"

    def prunes(self) -> bool:
        """Never: the rule is the order, and evaluation stops at the first candidate that passed anyway."""
        return False

    def stop_after(self, report: CandidateReport) -> bool:
        """Stop at the first candidate that matched eager and passed the speed gate."""
        return report.status is CandidateStatus.PASSED

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The first candidate that passed."""
        return passed[0]
