"""Timing build-time settings (thread counts, optimization levels, fused or plain graphs) of the ONNX
Runtime and OpenVINO backends over the recorded range, not only on the largest call.

The shapes are the ones the strategy times candidates at (smallest, typical = median, largest by
total input elements; see :mod:`aitune_triton.strategies.over_range`): the smallest and typical of
``BuildContext.samples`` and the build example as the largest, each distinct shape once. Every
setting is timed on every shape in :data:`MEASURE_ROUNDS` rounds whose order rotates between
rounds; a setting's score is the geometric mean over the shapes of its median time per shape (each
shape weighed the same, the rule of the in-process thread measurement in
:mod:`aitune_triton.strategies.layout`), so a thread count that only helps the largest call does
not win when it slows the small ones down more.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from aitune_triton.backends.base import BuildContext
    from aitune_triton.spec import CallStructure

__all__ = ["MEASURE_MAX_RUNS", "MEASURE_ROUNDS", "MEASURE_SECONDS_PER_SETTING", "Timed", "build_shapes", "time_settings"]

#: Rounds of the measurement; the order of the settings rotates between rounds.
MEASURE_ROUNDS = 3
#: Timed runs per setting, shape and round are chosen so that one setting takes about this long per round.
MEASURE_SECONDS_PER_SETTING = 0.25
MEASURE_MAX_RUNS = 20


def build_shapes(context: "BuildContext") -> dict[str, "CallStructure"]:
    """Label (``"smallest"``, ``"typical"``, ``"largest"``) -> recorded call to time settings on, one
    label per distinct input shape (a graph spec with one recorded shape gives one call)."""
    from aitune_triton.strategies.over_range import call_size, distinct_shapes  # strategies import backends

    ordered = sorted(context.samples or [context.example], key=call_size)
    shapes = {"smallest": ordered[0], "typical": ordered[len(ordered) // 2], "largest": context.example}
    owners = distinct_shapes(shapes)
    return {label: call for label, call in shapes.items() if owners[label] == label}


class Timed:
    """The outcome of :func:`time_settings`.

    Attributes:
        scores_ms: Per setting, the geometric mean over the shapes of its median time per shape, in ms.
        runs: Timed runs per setting and shape (over all rounds).
    """

    def __init__(self, scores_ms: list[float], runs: int):
        self.scores_ms = scores_ms
        self.runs = runs

    @property
    def best(self) -> int:
        """Index of the setting with the lowest score (the first on a tie)."""
        return min(range(len(self.scores_ms)), key=lambda position: self.scores_ms[position])


def time_settings(runners: Sequence[Sequence[Callable[[], object]]]) -> Timed:
    """Time every setting on every shape.

    Args:
        runners: Per setting, one callable per shape (the same shapes in the same order for every
            setting) that runs the setting once on that shape.

    Returns:
        A :class:`Timed`; each callable is run once first, untimed (first-run allocations and
        shape-specific kernels), and that run sizes the timed ones.
    """
    warm_s = []
    for per_shape in runners:
        total = 0.0
        for run in per_shape:
            start = time.perf_counter()
            run()
            total += time.perf_counter() - start
        warm_s.append(total)
    runs = max(1, min(MEASURE_MAX_RUNS, int(MEASURE_SECONDS_PER_SETTING / max(max(warm_s), 1e-9))))
    times: list[list[list[float]]] = [[[] for _ in per_shape] for per_shape in runners]
    for round_index in range(MEASURE_ROUNDS):
        shift = round_index % len(runners)
        for position in list(range(shift, len(runners))) + list(range(shift)):
            for shape, run in enumerate(runners[position]):
                for _ in range(runs):
                    start = time.perf_counter()
                    run()
                    times[position][shape].append(time.perf_counter() - start)
    scores_ms = [
        math.exp(statistics.fmean(math.log(max(statistics.median(per_shape), 1e-12)) for per_shape in per_setting)) * 1e3
        for per_setting in times
    ]
    return Timed(scores_ms, runs * MEASURE_ROUNDS)
