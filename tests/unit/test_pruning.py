"""Pruning candidates that cannot win, the eager candidate taking eager's measurements, the report
table (one line per candidate) and ``Module.summary()``.

The candidates are real backends of known cost: they compute the module's result and sleep first,
so which one is slower, and by how much, is set by the test and not by a busy machine's noise.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import torch
from rich.console import Console

import aitune_triton
from aitune_triton.backends import Backend, BuildContext, get_backend_class, register_backend
from aitune_triton.module.recording import Recorder
from aitune_triton.module.tuning import decide_batch_axis
from aitune_triton.spec import CallStructure, ForwardSignature, StoredCall, flatten_call
from aitune_triton.strategies import MinLatencyStrategy, Profiler, TuneContext, report_table
from aitune_triton.strategies.evaluation import Evaluation, Measurements
from aitune_triton.strategies.pruning import FAMILY_FACTOR, PRUNE_FACTOR, Pruning
from aitune_triton.strategies.report import CandidateReport, CandidateStatus

_ids = itertools.count()
FAST_PROFILER = Profiler(warmup_runs=1, min_runs=3, max_runs=5, max_time_s=0.3)


class Sleepy(torch.nn.Module):
    """``linear(x)`` after sleeping ``sleep_ms``."""

    def __init__(self, sleep_ms: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)
        self.sleep_ms = sleep_ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.sleep_ms / 1000.0)
        return self.linear(x)


class SleepBackend(Backend):
    """The module's linear after sleeping ``sleep_ms``; ``builds`` counts the builds of its class."""

    bakes_constants = False
    ahead_of_time = False
    builds = 0

    def __init__(self, sleep_ms: float = 0.0, variant: int = 0, precision: str = "fp32") -> None:
        super().__init__(sleep_ms=sleep_ms, variant=variant, precision=precision)
        self._module: Any = None

    def _build(self, context: BuildContext) -> None:
        type(self).builds += 1
        self._module = context.module

    def _load(self) -> None:
        pass

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        time.sleep(self.options["sleep_ms"] / 1000.0)
        return [self._module.linear(call.flat.tensors[0])]


def sleep_class(family: str | None = None) -> type[SleepBackend]:
    """A SleepBackend subclass registered under a fresh name (in ``family`` when given)."""
    name = f"prune_sleep_{next(_ids)}"
    register_backend(type(f"Sleep{name}", (SleepBackend,), {"name": name, "compiler_family": family, "builds": 0}))
    return get_backend_class(name)  # type: ignore[return-value]


def _context(tmp_path, net: torch.nn.Module) -> TuneContext:
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for batch in (1, 2, 4):
            recorder.record(net.forward, (torch.randn(batch, 4),), {})
    (graph,) = recorder.graph_specs()
    samples = [StoredCall(signature, flatten_call(signature, s.args, s.kwargs)) for s in recorder.samples(graph)]
    largest = recorder.largest_sample(graph)
    example = StoredCall(signature, flatten_call(signature, largest.args, largest.kwargs))
    decide_batch_axis(net.forward, signature, graph, samples, declared=False)
    return TuneContext(net, signature, graph, samples, example, tmp_path, torch.device("cpu"))


def _by_name(report) -> dict[str, Any]:
    return {candidate.backend: candidate for candidate in report.candidates}


def test_a_candidate_far_slower_than_one_that_passed_is_pruned_with_its_ratios_and_the_winner_is_kept(tmp_path):
    fast, slow = sleep_class()(sleep_ms=2), sleep_class()(sleep_ms=2 * 4 * PRUNE_FACTOR)
    strategy = MinLatencyStrategy([fast, slow, "eager"], profiler=FAST_PROFILER, find_max_batch_size=False)

    backend, report = strategy.tune(_context(tmp_path, Sleepy(sleep_ms=20)))

    by_name = _by_name(report)
    assert backend.name == fast.name and by_name[fast.name].status == "chosen"
    pruned = by_name[slow.name]
    assert pruned.status == "pruned"
    assert pruned.reason.startswith(f">= {PRUNE_FACTOR:g}x the best time so far at every shape")
    assert "typical re-timed beside " + fast.name in pruned.reason
    assert pruned.max_abs_diff is None and not pruned.batch_latencies_ms  # not checked, not profiled in full
    assert not (tmp_path / slow.name).exists()  # released, its artifacts removed
    assert by_name["eager"].status == "passed" and by_name["eager"].max_abs_diff == 0.0
    assert set(by_name["eager"].latencies_ms) == {"smallest", "typical", "largest"}  # eager's own numbers, not run again


def test_the_winner_is_never_pruned_when_it_comes_after_slower_candidates(tmp_path):
    slower, slow, fastest = sleep_class()(sleep_ms=12), sleep_class()(sleep_ms=8), sleep_class()(sleep_ms=1)
    strategy = MinLatencyStrategy([slower, slow, fastest], profiler=FAST_PROFILER, find_max_batch_size=False)

    backend, report = strategy.tune(_context(tmp_path, Sleepy(sleep_ms=20)))

    assert backend.name == fastest.name
    assert _by_name(report)[fastest.name].status == "chosen"
    assert all(candidate.status != "pruned" for candidate in report.candidates)  # none was 1.5x slower than the best so far


def test_a_sibling_of_a_far_slower_family_member_is_not_built(tmp_path):
    fast = sleep_class()(sleep_ms=1)
    family = sleep_class("test-compiler")
    first, sibling = family(sleep_ms=2 * 8 * FAMILY_FACTOR), family(sleep_ms=1, variant=1)

    backend, report = MinLatencyStrategy([fast, first, sibling], profiler=FAST_PROFILER, find_max_batch_size=False).tune(
        _context(tmp_path, Sleepy(sleep_ms=20))
    )

    by_name = {(c.backend, c.options.get("variant")): c for c in report.candidates}
    assert backend.name == fast.name
    assert by_name[(family.name, 0)].status == "pruned"
    skipped = by_name[(family.name, 1)]
    assert skipped.status == "pruned" and skipped.reason.startswith("not built:") and "same family: test-compiler" in skipped.reason
    assert family.builds == 1


def test_a_lower_precision_variant_of_a_far_slower_family_member_is_still_built(tmp_path):
    # The fp32 member is 8x the best time; an int8 (or bf16) variant is no sibling of it: it may be the winner.
    fast = sleep_class()(sleep_ms=4)
    family = sleep_class("test-compiler")
    fp32, int8 = family(sleep_ms=2 * 8 * FAMILY_FACTOR), family(sleep_ms=1, precision="int8")

    backend, report = MinLatencyStrategy([fast, fp32, int8], profiler=FAST_PROFILER, find_max_batch_size=False).tune(
        _context(tmp_path, Sleepy(sleep_ms=20))
    )

    assert family.builds == 2
    assert _by_name(report)[family.name].status == "pruned"
    assert backend.name == family.name and report.chosen == f"{family.name}[int8]"


def test_the_screen_leaves_no_quick_timing_behind_when_it_goes_on(tmp_path):
    # No reference timed the smallest shape: the screen goes on, and its 3-run typical timing must not stand as the profile.
    context = _context(tmp_path, Sleepy(sleep_ms=1))
    strategy = MinLatencyStrategy(["eager"], profiler=FAST_PROFILER, find_max_batch_size=False)
    evaluation = Evaluation(strategy._settings(), context, Measurements(context, dict(context.graph.dims), None, False, None), "")
    eager = CandidateReport("eager", CandidateStatus.REFERENCE, latencies_ms={"typical": 1.0})
    slow = sleep_class()(sleep_ms=5)
    (tmp_path / "slow").mkdir()
    slow.build(context.build_context(tmp_path / "slow"))
    report = CandidateReport(slow.name, CandidateStatus.FAILED)

    assert Pruning(evaluation, eager).screen(slow, report) is None
    assert report.latencies_ms == {}


def test_keeping_eager_while_another_candidate_passed_does_not_say_none_passed(tmp_path):
    class KeepsEager(MinLatencyStrategy):
        def select(self, passed, eager):
            return next(report for report in passed if report.backend == "eager")

    fast, slow = sleep_class()(sleep_ms=1), sleep_class()(sleep_ms=30)
    backend, report = KeepsEager(["eager", fast, slow], profiler=FAST_PROFILER, find_max_batch_size=False).tune(
        _context(tmp_path, Sleepy(sleep_ms=20))
    )

    assert backend.name == "eager" and _by_name(report)[slow.name].status == "pruned"
    assert report.decision.startswith("kept eager") and "no other candidate" not in report.decision


def test_prune_false_evaluates_every_candidate_in_full(tmp_path):
    fast, slow = sleep_class()(sleep_ms=1), sleep_class()(sleep_ms=30)
    strategy = MinLatencyStrategy([fast, slow], profiler=FAST_PROFILER, find_max_batch_size=False, prune=False)

    _, report = strategy.tune(_context(tmp_path, Sleepy(sleep_ms=20)))

    assert _by_name(report)[slow.name].status == "too slow" and _by_name(report)[slow.name].max_abs_diff is not None


def test_every_candidate_pruned_slower_than_eager_keeps_eager(tmp_path):
    slow = sleep_class()(sleep_ms=30)

    backend, report = MinLatencyStrategy([slow], profiler=FAST_PROFILER, find_max_batch_size=False).tune(
        _context(tmp_path, Sleepy(sleep_ms=2))
    )

    assert backend.name == "eager" and report.chosen == "eager"
    assert _by_name(report)[slow.name].status == "pruned" and "re-timed beside eager" in _by_name(report)[slow.name].reason


def test_the_report_table_shows_one_line_per_candidate_and_the_decision_once(tmp_path):
    fast, slow = sleep_class()(sleep_ms=1), sleep_class()(sleep_ms=30)
    _, report = MinLatencyStrategy([fast, slow, "eager"], profiler=FAST_PROFILER, find_max_batch_size=False).tune(
        _context(tmp_path, Sleepy(sleep_ms=10))
    )
    console = Console(width=160, record=True)
    console.print(report_table(report))
    lines = console.export_text().splitlines()

    rows = {name: [line for line in lines if f" {name} " in line] for name in (fast.name, slow.name)}
    assert len(rows[fast.name]) == 1 and "chosen" in rows[fast.name][0]
    assert re.search(r" 0\.\d\d 0\.\d\d 0\.\d\d ", rows[fast.name][0])  # its time over eager's at the three shapes
    assert len(rows[slow.name]) == 1 and "pruned" in rows[slow.name][0]
    assert sum(report.decision[:40] in line for line in lines) == 1
    assert sum("was kept" in line for line in lines) == 0  # the decision is not repeated per candidate


def test_summary_lists_each_graph_spec_backend_precision_ratio_and_why(tmp_path, capsys):
    fast = sleep_class()(sleep_ms=0)
    module = aitune_triton.Module(
        Sleepy(sleep_ms=3).eval(), name=f"prune_summary_{next(_ids)}", cache_dir=tmp_path,
        strategy=MinLatencyStrategy([fast], profiler=FAST_PROFILER, find_max_batch_size=False),
    )
    with torch.no_grad():
        for batch in (1, 2):
            module(torch.randn(batch, 4))
    module.tune()
    capsys.readouterr()

    summary = module.summary()

    assert capsys.readouterr() == ("", "")  # returns the text, prints nothing
    (graph,) = module.tuned_graphs
    assert f"'{module.name}'" in summary
    line = next(line for line in summary.splitlines() if graph.spec.name in line)
    assert fast.name in line and "fp32" in line and "x eager" in line and "lowest latency" in line


def test_the_layout_window_is_cut_for_fast_calls_and_kept_for_slow_ones():
    from aitune_triton.strategies.layout import MIN_WINDOW_S, WINDOW_CALLS, layout_window_s

    assert layout_window_s(1.0, 0.1) == MIN_WINDOW_S  # 100 calls of 0.1 ms: the shortest window
    assert layout_window_s(1.0, 5.0) == WINDOW_CALLS * 5.0 / 1000.0
    assert layout_window_s(1.0, 50.0) == 1.0  # never past layout_seconds
    assert layout_window_s(1.0, None) == 1.0


class DriftingSleepBackend(SleepBackend):
    """Sleeps ``sleep_ms`` grown by 15% at every call: its timings never agree with each other."""

    name = "prune_drifting_sleep"

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        self.calls = getattr(self, "calls", 0) + 1
        time.sleep(self.options["sleep_ms"] * 1.15 ** min(self.calls, 40) / 1000.0)
        return [self._module.linear(call.flat.tensors[0])]


register_backend(DriftingSleepBackend)


def test_a_slow_candidate_whose_timings_do_not_agree_is_evaluated_in_full_not_pruned(tmp_path):
    fast, drifting = sleep_class()(sleep_ms=2), DriftingSleepBackend(sleep_ms=2 * 4 * PRUNE_FACTOR)
    logged: list[str] = []
    context = _context(tmp_path, Sleepy(sleep_ms=20))
    context.log = logged.append
    strategy = MinLatencyStrategy([fast, drifting], profiler=FAST_PROFILER, find_max_batch_size=False, noise_check=None)

    backend, report = strategy.tune(context)

    assert backend.name == fast.name
    judged = _by_name(report)[drifting.name]
    assert judged.status == "too slow" and judged.max_abs_diff is not None  # checked and profiled, then refused by the gate
    assert any("not pruned: timings too unstable" in line for line in logged)
