"""LatencyBudgetStrategy: the highest throughput among batch sizes whose latency fits a budget."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from aitune_triton.backends import Backend
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.strategies.backend_list import BackendListStrategy
from aitune_triton.strategies.base import CandidateReport

__all__ = ["LatencyBudgetStrategy"]


class LatencyBudgetStrategy(BackendListStrategy):
    """Evaluate every backend and keep the one with the highest throughput counting only batch
    sizes whose latency per call is within ``latency_budget_ms``; a candidate with no batch size
    within the budget is refused ("too slow"), and so is one whose throughput within the budget
    does not beat eager's by the speed gate.

    Args:
        backends: Registered names or configured Backend instances.
        latency_budget_ms: The longest one call (one batch) may take, in milliseconds.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy` (``find_max_batch_size``
            defaults to True here: batch sizes are swept to find the throughput the budget allows).

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty or ``latency_budget_ms`` is not
            a positive number.
    """

    #: The rule compares throughput over batch sizes: every candidate is swept.
    sweeps_every_candidate: ClassVar[bool] = True

    def __init__(
        self, backends: Sequence[str | Backend], latency_budget_ms: float, atol: float = 1e-4, rtol: float = 1e-4, **options: Any
    ):
        if not isinstance(latency_budget_ms, (int, float)) or isinstance(latency_budget_ms, bool) or not latency_budget_ms > 0:
            raise InvalidArgumentError(f"latency_budget_ms: expected a positive number of milliseconds, got {latency_budget_ms!r}")
        options.setdefault("find_max_batch_size", True)
        super().__init__(backends, atol=atol, rtol=rtol, **options)
        self.latency_budget_ms = float(latency_budget_ms)

    def describe(self) -> str:
        return super().describe()[:-1] + f", latency_budget_ms={self.latency_budget_ms:g})"

    def rule(self) -> str:
        return f"highest throughput within {self.latency_budget_ms:g} ms per call"

    def speed(self, report: CandidateReport) -> float | None:
        """Seconds per sample at the best batch size within the budget (None: none fits)."""
        best = report.best_throughput(self.latency_budget_ms)
        return 1.0 / best if best else None

    def refusal(self, report: CandidateReport, eager: CandidateReport) -> str | None:
        """Over budget at every profiled batch size, or not faster than eager within it."""
        if report.best_throughput(self.latency_budget_ms) is None:
            fastest = min(report.batch_latencies_ms.values(), default=float("nan"))
            return f"no profiled batch size runs within {self.latency_budget_ms:g} ms (fastest call {fastest:.3g} ms)"
        if eager.best_throughput(self.latency_budget_ms) is None:
            return None  # eager itself does not fit the budget: anything that fits beats it
        return super().refusal(report, eager)

    def best_batch_size(self, report: CandidateReport) -> int | None:
        """The swept size with the highest throughput among those within the budget (a larger
        swept size that runs over the budget is never preferred); None when not searched."""
        if report.max_batch_size is None:
            return None
        within = {
            int(size): int(size) / ms
            for size, ms in report.batch_latencies_ms.items()
            if ms > 0 and ms <= self.latency_budget_ms and int(size) <= report.max_batch_size
        }
        return max(within, key=lambda size: within[size]) if within else min(int(s) for s in report.batch_latencies_ms)

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The candidate with the highest throughput within the budget."""
        return self.fastest(passed)
