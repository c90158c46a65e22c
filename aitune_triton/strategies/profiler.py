"""Timing backends: warm-up, then repeated runs until the median is stable.

One profiler serves the strategies (which candidate is fastest), the tuning report and the
benchmarks, so every number a user reads was measured the same way.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from aitune_triton.errors import InvalidArgumentError

__all__ = ["Profiler", "Timing", "sample_ms"]


def sample_ms(run: Callable[[], Any], repeats: int, device: torch.device | None) -> float:
    """Milliseconds per call of ``run`` over one sample of ``repeats`` back-to-back calls; a CUDA
    ``device`` is synchronized before and after the sample, so its clock reads cover the work."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else None
    if sync:
        sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if sync:
        sync(device)
    return (time.perf_counter() - start) * 1000.0 / repeats


@dataclass(frozen=True)
class Timing:
    """Wall times of repeated runs of one call.

    Attributes:
        median_ms: Median run time in milliseconds.
        min_ms: Fastest run in milliseconds.
        max_ms: Slowest run in milliseconds.
        runs: Timed runs (warm-up runs not counted).
    """

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return asdict(self)


class Profiler:
    """Times a callable: ``warmup_runs`` untimed runs, then timed runs until the median is stable.

    A call shorter than ``min_sample_ms`` (timed during the warm-up) is run several times per
    timed run and its time divided, so that clock resolution and the timer's own cost do not
    dominate microsecond calls. After ``min_runs`` timed runs, the profiler stops as soon as the
    median of all runs so far moved by less than ``rtol`` (relative) since the previous run, or
    when ``max_runs`` runs or ``max_time_s`` seconds of timed runs are reached, whichever comes
    first. On CUDA the device is synchronized before each clock read, so queued kernels are
    counted in the run that launched them.

    Args:
        warmup_runs: Untimed runs first (compilation, allocator and thread pool warm-up); at least
            one runs, since the last one also tells how long one call takes.
        min_runs: Timed runs before the stability test applies (at least 1).
        max_runs: Cap on timed runs.
        max_time_s: Cap on the total time of timed runs, in seconds.
        rtol: Relative change of the median under which it counts as stable.
        min_sample_ms: Shortest timed run, in milliseconds: shorter calls are repeated within one
            timed run (at most 1000 times).

    Raises:
        InvalidArgumentError: (a ValueError) a count is below its minimum, ``max_runs < min_runs``,
            or ``max_time_s``/``rtol`` is not positive.
    """

    def __init__(
        self,
        warmup_runs: int = 1,
        min_runs: int = 5,
        max_runs: int = 50,
        max_time_s: float = 2.0,
        rtol: float = 0.02,
        min_sample_ms: float = 1.0,
    ):
        for option, value, low in (("warmup_runs", warmup_runs, 0), ("min_runs", min_runs, 1), ("max_runs", max_runs, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgumentError(f"{option}: expected an integer >= {low}, got {value!r}")
        if max_runs < min_runs:
            raise InvalidArgumentError(f"max_runs: expected at least min_runs ({min_runs}), got {max_runs}")
        for option, number in (("max_time_s", max_time_s), ("rtol", rtol), ("min_sample_ms", min_sample_ms)):
            if not isinstance(number, (int, float)) or isinstance(number, bool) or not number > 0:
                raise InvalidArgumentError(f"{option}: expected a positive number, got {number!r}")
        self.warmup_runs = warmup_runs
        self.min_runs = min_runs
        self.max_runs = max_runs
        self.max_time_s = float(max_time_s)
        self.rtol = float(rtol)
        self.min_sample_ms = float(min_sample_ms)

    def time(self, run: Callable[[], object], device: torch.device | None = None) -> Timing:
        """Time ``run()``.

        Args:
            run: The call to time; its result is discarded.
            device: Where it runs; a CUDA device is synchronized around every timed run.

        Returns:
            The :class:`Timing` of the timed runs.

        Raises:
            Exception: whatever ``run()`` raises.
        """
        sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else None
        for _ in range(max(self.warmup_runs, 1)):
            if sync:
                sync(device)
            start = time.perf_counter()
            run()
            if sync:
                sync(device)
            once_ms = (time.perf_counter() - start) * 1000.0
        # Calls per timed run: enough to last min_sample_ms (the last warm-up run tells how long one takes).
        repeats = max(1, min(1000, int(self.min_sample_ms / max(once_ms, 1e-6)) + 1)) if once_ms < self.min_sample_ms else 1
        times: list[float] = []
        median = float("inf")
        spent = 0.0
        while len(times) < self.max_runs:
            per_call_ms = sample_ms(run, repeats, device)
            spent += per_call_ms * repeats / 1000.0
            times.append(per_call_ms)
            previous, median = median, statistics.median(times)
            if len(times) >= self.min_runs and (abs(median - previous) <= self.rtol * median or spent >= self.max_time_s):
                break
        return Timing(median, min(times), max(times), len(times))

    def __repr__(self) -> str:
        return (
            f"Profiler(warmup_runs={self.warmup_runs}, min_runs={self.min_runs}, max_runs={self.max_runs}, "
            f"max_time_s={self.max_time_s}, rtol={self.rtol}, min_sample_ms={self.min_sample_ms})"
        )
