"""Whether the measurements can be trusted: eager timed against itself, and the built candidates
re-timed back to back in rotated order.

Eager is profiled before the candidates and again after them; its **self-spread** is, over the
shapes, the largest ratio of the slower to the faster of the two passes. Then every built
candidate and eager are re-timed at every distinct shape for :attr:`NoiseCheck.rounds` rounds,
back to back per shape, the order rotated by one each round (so no candidate always runs right
after the same neighbour or first in a cold cache). Each timing is the median of at most 3
samples started within 0.1 s (one at least; calls under 1 ms repeated to last about 1 ms), with no
warm-up: every participant already ran these calls. A participant's **spread** is, over the
shapes, the largest ratio of its slowest to its fastest round; the **re-timed spread** is the
largest over the participants, eager included.

When the self-spread or the re-timed spread is above :attr:`NoiseCheck.threshold`, the rounds are
run again, at most :attr:`NoiseCheck.remeasures` times; the verdict is then judged on the latest
rounds alone (eager's spread included). Still above the threshold: the measurements are
**unstable** (``GraphTuneReport.noisy``), which the report and the decision say.

Every latency kept is the fastest median a participant showed at that shape over all its timings
(its evaluation, eager's two passes, every round): noise on a CPU only adds time, and each side of
a comparison gets the same treatment. Cost: ``rounds * (1 + remeasures)`` timings per participant
and distinct shape, each about max(0.1 s, one call) at most, on candidates already built.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.strategies.profiler import sample_ms
if TYPE_CHECKING:
    from aitune_triton.strategies.evaluation import Evaluation
    from aitune_triton.strategies.report import CandidateReport

__all__ = ["NoiseCheck", "NoiseVerdict", "check_noise", "check_range_options", "report_fields", "retime_rounds", "spread", "with_verdict"]

#: Most timed samples per participant, shape and round (their median is the round's timing).
RETIME_SAMPLES = 3
#: Time after which no further sample of one timing starts, in seconds (one sample always runs).
RETIME_BUDGET_S = 0.1


@dataclass(frozen=True)
class NoiseCheck:
    """How the measurements are checked for stability (see the module docstring).

    Args:
        rounds: Re-timing rounds of every built candidate and eager (at least 2: one round has
            nothing to compare).
        threshold: The largest spread (slowest / fastest timing of one participant at one shape)
            still counted as stable; 1.25: 25%.
        remeasures: How many times the rounds are run again while the spread is above the threshold.

    Raises:
        InvalidArgumentError: (a ValueError) ``rounds`` is not an integer >= 2, ``threshold`` not a
            number > 1, or ``remeasures`` not an integer >= 0.
    """

    rounds: int = 2
    threshold: float = 1.25
    remeasures: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 2:
            raise InvalidArgumentError(f"NoiseCheck.rounds: expected an integer >= 2, got {self.rounds!r}")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or not self.threshold > 1:
            raise InvalidArgumentError(
                f"NoiseCheck.threshold: expected a ratio > 1 (1.25 for 25%), got {self.threshold!r}"
            )
        if not isinstance(self.remeasures, int) or isinstance(self.remeasures, bool) or self.remeasures < 0:
            raise InvalidArgumentError(f"NoiseCheck.remeasures: expected an integer >= 0, got {self.remeasures!r}")


@dataclass
class NoiseVerdict:
    """The outcome of a :class:`NoiseCheck`.

    Attributes:
        noisy: Whether the latest measurements were above the threshold.
        eager_spread: Eager's spread against itself in the latest measurements (>= 1).
        retime_spread: The largest spread of any participant in the latest rounds (>= 1).
        threshold: The threshold applied.
        remeasured: How many times the rounds were run again.
    """

    noisy: bool
    eager_spread: float
    retime_spread: float
    threshold: float
    remeasured: int

    def summary(self) -> str:
        """``measurements unstable (eager vs itself 1.62x, re-timed 1.40x; threshold 1.25x, re-measured 1x)``."""
        state = "unstable" if self.noisy else "stable"
        again = f", re-measured {self.remeasured}x" if self.remeasured else ""
        return (
            f"measurements {state} (eager vs itself {self.eager_spread:.2f}x, re-timed in rotated order "
            f"{self.retime_spread:.2f}x; threshold {self.threshold:.2f}x{again})"
        )


def spread(values: Sequence[float]) -> float:
    """Slowest over fastest of ``values`` (1.0 for fewer than two, or a non-positive one)."""
    positive = [value for value in values if value > 0]
    return max(positive) / min(positive) if len(positive) >= 2 else 1.0


def _time(run: Callable[[], Any], expected_ms: float, device: torch.device | None) -> float:
    """Median ms of one call of ``run`` over at most :data:`RETIME_SAMPLES` samples within
    :data:`RETIME_BUDGET_S` (at least one sample); a sample repeats a call shorter than 1 ms
    (``expected_ms``, its earlier median) until it lasts about 1 ms. No warm-up: the participant
    already ran these calls."""
    repeats = max(1, min(1000, math.ceil(1.0 / max(expected_ms, 1e-3))))
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < RETIME_SAMPLES and (not times or time.perf_counter() - began < RETIME_BUDGET_S):
        times.append(sample_ms(run, repeats, device))
    return statistics.median(times)


def retime_rounds(
    participants: Sequence[tuple[Callable[[Any], Any], Mapping[str, float]]],
    shapes: Mapping[str, Any],
    rounds: int,
    device: torch.device | None,
) -> list[dict[str, list[float]]]:
    """Time every participant (how it runs a call, and its earlier median ms per shape label) at
    every shape for ``rounds`` rounds: per round and shape, all participants back to back, the
    order rotated by one each round.

    Returns:
        Per participant (in the given order): shape label -> its median per round, in ms.

    Raises:
        Exception: whatever a participant raises.
    """
    timings: list[dict[str, list[float]]] = [{label: [] for label in shapes} for _ in participants]
    count = len(participants)
    with torch.no_grad():
        for round_index in range(rounds):
            order = [(round_index + offset) % count for offset in range(count)]
            for label, call in shapes.items():
                for index in order:
                    infer, expected = participants[index]
                    timings[index][label].append(_time(lambda: infer(call), expected.get(label, 1.0), device))
    return timings


def check_noise(
    evaluation: "Evaluation",
    eager: "CandidateReport",
    candidates: Sequence[tuple["CandidateReport", Callable[[Any], Any]]],
    eager_self_spread: float,
    check: NoiseCheck,
) -> NoiseVerdict | None:
    """Re-time eager and ``candidates`` (built, with how each runs a call) in rotated order, re-measure
    while unstable, keep each one's fastest median per shape (weighted latency updated) and its
    spread, and give the verdict (see the module docstring). None when a re-timing run failed (the
    measurements taken so far stay; the failure is logged)."""
    from aitune_triton.backends import EagerBackend

    measure, context = evaluation.measure, evaluation.context
    shapes = {label: call for label, call in measure.shapes.items() if measure.owners[label] == label}
    participants: list[tuple[Callable[[Any], Any], Mapping[str, float]]] = [
        (lambda call: EagerBackend.reference(context.run, call), eager.latencies_ms)
    ]
    participants += [(infer, report.latencies_ms) for report, infer in candidates]
    reports = [eager, *(report for report, _ in candidates)]
    eager_spread, remeasured = eager_self_spread, 0
    while True:
        try:
            timings = retime_rounds(participants, shapes, check.rounds, context.device)
        except Exception as error:  # a candidate that ran these calls before fails now: keep what was measured
            context.log(f"{context.graph.name}: re-timing in rotated order failed ({type(error).__name__}: {error}); noise not checked")
            return None
        for report, timing in zip(reports, timings):
            report.spread = max(spread(values) for values in timing.values())
            for label, values in timing.items():
                report.latencies_ms[label] = min([*values, report.latencies_ms.get(label, min(values))])
            for label, owner in measure.owners.items():
                report.latencies_ms[label] = report.latencies_ms[owner]
            measure.weigh(report)
        eager_spread = max(eager_spread, eager.spread or 1.0)
        retimed = max(report.spread or 1.0 for report in reports)
        verdict = NoiseVerdict(max(eager_spread, retimed) > check.threshold, eager_spread, retimed, check.threshold, remeasured)
        context.log(f"{context.graph.name}: {verdict.summary()}")
        if not verdict.noisy or remeasured >= check.remeasures:
            return verdict
        remeasured, eager_spread = remeasured + 1, 1.0  # judged on the latest rounds alone


def report_fields(verdict: NoiseVerdict | None) -> dict[str, Any]:
    """The :class:`~aitune_triton.strategies.report.GraphTuneReport` fields of ``verdict`` (defaults for None)."""
    if verdict is None:
        return {"noisy": False, "eager_spread": None, "retime_spread": None, "noise": ""}
    return {"noisy": verdict.noisy, "eager_spread": verdict.eager_spread, "retime_spread": verdict.retime_spread, "noise": verdict.summary()}


def with_verdict(decision: str, verdict: NoiseVerdict | None) -> str:
    """``decision`` with an unstable verdict in it: ``kept X; measurements unstable (...): rule``."""
    if verdict is None or not verdict.noisy:
        return decision
    head, _, rest = decision.partition(": ")
    return f"{head}; {verdict.summary()}: {rest}" if decision.startswith("kept ") and rest else f"{decision}; {verdict.summary()}"


def check_range_options(gate_every_shape: Any, noise_check: Any) -> tuple[bool, NoiseCheck | None]:
    """The strategy options ``gate_every_shape`` and ``noise_check``, checked.

    Raises:
        InvalidArgumentError: ``gate_every_shape`` is not a bool or ``noise_check`` not a NoiseCheck or None.
    """
    if not isinstance(gate_every_shape, bool):
        raise InvalidArgumentError(f"gate_every_shape: expected True or False, got {gate_every_shape!r}")
    if noise_check is not None and not isinstance(noise_check, NoiseCheck):
        raise InvalidArgumentError(
            f"noise_check: expected an aitune_triton.strategies.NoiseCheck or None, got {type(noise_check).__name__}"
        )
    return gate_every_shape, noise_check
