"""Selection rules, the speed gate, the profiler, the batch size sweep and the accuracy gate.

The candidates here are real backends whose cost is known: they compute the module's result
(``core``) and sleep for ``fixed_ms + per_row_ms * rows`` first, so which one is faster at which
batch size is set by the test, not by the noise of a busy machine. The module's own forward
sleeps too, so eager is the slowest unless a test says otherwise.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
import torch

import aitune_triton
from aitune_triton.backends import Backend, BuildContext, register_backend
from aitune_triton.errors import InvalidArgumentError, TuningError
from aitune_triton.module.recording import Recorder
from aitune_triton.module.tuning import decide_batch_axis
from aitune_triton.spec import CallStructure, DimRange, ForwardSignature, StoredCall, flatten_call
from aitune_triton.strategies import (
    FirstWinsStrategy,
    GraphTuneReport,
    LatencyBudgetStrategy,
    MaxThroughputStrategy,
    MinLatencyStrategy,
    OneBackendStrategy,
    Profiler,
    TuneContext,
    report_table,
)

_ids = itertools.count()


class SleepyNet(torch.nn.Module):
    """``core(x)`` after sleeping ``fixed_ms + per_row_ms * batch``."""

    def __init__(self, fixed_ms: float = 8.0, per_row_ms: float = 2.0) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.linear = torch.nn.Linear(4, 3)
        self.fixed_ms, self.per_row_ms = fixed_ms, per_row_ms

    def core(self, x: torch.Tensor) -> dict[str, Any]:
        hidden = torch.tanh(self.linear(x))
        return {"out": hidden, "parts": [hidden.sum(-1)]}

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        time.sleep((self.fixed_ms + self.per_row_ms * x.shape[0]) / 1000.0)
        return self.core(x)


class SleepBackend(Backend):
    """The module's ``core`` after a known sleep; ``noise`` is added to every float output;
    ``rows_cap``: rows above it cost like ``per_row_ms`` each, rows up to it cost nothing more
    (a device that runs ``rows_cap`` rows in parallel)."""

    bakes_constants = False
    ahead_of_time = False

    def __init__(self, fixed_ms: float = 0.0, per_row_ms: float = 0.0, noise: float = 0.0, precision: str = "fp32",
                 rows_cap: int = 0) -> None:
        super().__init__(fixed_ms=fixed_ms, per_row_ms=per_row_ms, noise=noise, precision=precision, rows_cap=rows_cap)
        self._module: Any = None

    def _build(self, context: BuildContext) -> None:
        self._module = context.module

    def _load(self) -> None:
        pass

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        (x,) = call.flat.tensors
        rows = x.shape[0]
        cap = self.options["rows_cap"]
        cost_rows = max(rows, cap) if cap else rows
        time.sleep((self.options["fixed_ms"] + self.options["per_row_ms"] * cost_rows) / 1000.0)
        output = self._module.core(x)
        return [output["out"] + self.options["noise"], output["parts"][0] + self.options["noise"]]


def sleepy(**options: Any) -> SleepBackend:
    """A SleepBackend registered under a fresh name."""
    name = f"sleep_{next(_ids)}"
    register_backend(type(f"Sleep{name}", (SleepBackend,), {"name": name}))
    from aitune_triton.backends import get_backend_class

    return get_backend_class(name)(**options)  # type: ignore[return-value]


FAST_PROFILER = Profiler(warmup_runs=1, min_runs=3, max_runs=5, max_time_s=0.5)


def _context(tmp_path, net: torch.nn.Module, batches=(1, 2, 4), independent: bool = True) -> TuneContext:
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in batches:
            recorder.record(net.core, (torch.randn(batch, 4, generator=generator),), {})
    (graph,) = recorder.graph_specs()
    samples = [StoredCall(signature, flatten_call(signature, s.args, s.kwargs)) for s in recorder.samples(graph)]
    largest = recorder.largest_sample(graph)
    example = StoredCall(signature, flatten_call(signature, largest.args, largest.kwargs))
    if independent:
        decide_batch_axis(net.forward, signature, graph, samples, declared=False)
    return TuneContext(net, signature, graph, samples, example, tmp_path, torch.device("cpu"))


def _by_name(report: GraphTuneReport) -> dict[str, Any]:
    return {candidate.backend: candidate for candidate in report.candidates}


# ------------------------------------------------------------------------------- the profiler
def test_the_profiler_stops_once_the_median_is_stable_and_reports_min_median_max():
    calls = []
    timing = Profiler(warmup_runs=2, min_runs=3, max_runs=40, rtol=0.5).time(lambda: calls.append(time.sleep(0.002)))

    assert 3 <= timing.runs < 40
    assert len(calls) == timing.runs + 2  # the warm-up runs are not timed
    assert timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timing.median_ms >= 2.0


def test_the_profiler_stops_at_its_time_cap_even_when_the_median_keeps_moving():
    delays = itertools.cycle([0.001, 0.02])
    timing = Profiler(warmup_runs=0, min_runs=2, max_runs=1000, max_time_s=0.1, rtol=1e-9).time(lambda: time.sleep(next(delays)))

    assert timing.runs < 30


def test_the_profiler_repeats_a_microsecond_call_within_each_timed_run():
    calls = []
    timing = Profiler(warmup_runs=1, min_runs=3, max_runs=3, min_sample_ms=2.0).time(lambda: calls.append(None))

    assert timing.runs == 3
    assert len(calls) > 3 * 10  # many calls per timed run, each timing divided by their number
    assert timing.median_ms < 0.5


@pytest.mark.parametrize(
    "options",
    [{"min_runs": 0}, {"max_runs": 2, "min_runs": 3}, {"max_time_s": 0}, {"rtol": -1}, {"warmup_runs": 1.5}, {"min_sample_ms": 0}],
)
def test_the_profiler_refuses_options_out_of_range(options):
    with pytest.raises(InvalidArgumentError):
        Profiler(**options)


# -------------------------------------------------------------------------- selection rules
def test_min_latency_keeps_the_fastest_at_the_typical_shape_not_the_first(tmp_path):
    net = SleepyNet(fixed_ms=20)
    slow, fast = sleepy(fixed_ms=6), sleepy(fixed_ms=1)
    backend, report = MinLatencyStrategy([slow, fast], profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == fast.name and backend.active
    candidates = _by_name(report)
    assert candidates[fast.name].status == "chosen"
    assert candidates[slow.name].status == "passed" and fast.name in candidates[slow.name].reason
    assert not (tmp_path / slow.name).exists()  # the candidate not kept is removed from the cache
    assert set(candidates[fast.name].latencies_ms) == {"smallest", "typical", "largest"}
    assert "lowest latency" in report.decision


def test_first_wins_keeps_the_first_that_passes_the_gate_and_does_not_build_the_rest(tmp_path):
    net = SleepyNet(fixed_ms=20)
    first, second = sleepy(fixed_ms=6), sleepy(fixed_ms=1)
    backend, report = FirstWinsStrategy([first, second], profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == first.name
    assert _by_name(report)[second.name].status == "not tried"


def test_max_throughput_keeps_the_candidate_fastest_at_large_batches(tmp_path):
    net = SleepyNet(fixed_ms=12, per_row_ms=3)
    per_row = sleepy(fixed_ms=0.5, per_row_ms=1)  # fast on small batches: 2.5 ms at batch 2, 32.5 at 32
    fixed = sleepy(fixed_ms=10, per_row_ms=0.1)  # fast on large batches: 10.2 ms at batch 2, 13.2 at 32
    context = _context(tmp_path, net)
    minimal, _ = MinLatencyStrategy([per_row, fixed], profiler=FAST_PROFILER).tune(_context(tmp_path / "a", net))
    backend, report = MaxThroughputStrategy([per_row, fixed], batch_sizes=[1, 2, 32], profiler=FAST_PROFILER).tune(context)

    assert minimal.name == per_row.name
    assert backend.name == fixed.name
    chosen = _by_name(report)[fixed.name]
    assert set(chosen.batch_latencies_ms) == {"1", "2", "32"}
    assert chosen.throughput[32] > _by_name(report)[per_row.name].throughput[32]
    assert chosen.max_batch_size == 32 and context.graph.preferred_batch_size == 32
    assert context.graph.dims["batch"].bounds == (1, 32)  # built, checked and served up to the best profiled size


@pytest.mark.parametrize("budget_ms, expected", [(6.0, "per_row"), (20.0, "fixed")])
def test_latency_budget_keeps_the_highest_throughput_within_the_budget(tmp_path, budget_ms, expected):
    net = SleepyNet(fixed_ms=12, per_row_ms=3)
    # Within 6 ms only per_row fits (batch 4: 4.5 ms); within 20 ms fixed's batch 32 (13.2 ms) beats
    # per_row's batch 16 (16.5 ms) by 2.5x.
    candidates = {"per_row": sleepy(fixed_ms=0.5, per_row_ms=1), "fixed": sleepy(fixed_ms=10, per_row_ms=0.1)}
    strategy = LatencyBudgetStrategy(list(candidates.values()), latency_budget_ms=budget_ms, max_batch_size_limit=32,
                                     batch_gain_threshold=0.0, profiler=FAST_PROFILER)
    backend, report = strategy.tune(_context(tmp_path, net))

    assert backend.name == candidates[expected].name
    if expected == "per_row":
        refused = _by_name(report)[candidates["fixed"].name]
        assert refused.status == "too slow" and "within 6 ms" in refused.reason


# ------------------------------------------------------------------------------ speed gate
def test_the_speed_gate_keeps_eager_when_no_candidate_is_faster_and_says_why(tmp_path):
    net = SleepyNet(fixed_ms=1, per_row_ms=0)
    slower = sleepy(fixed_ms=8)
    backend, report = MinLatencyStrategy([slower], profiler=FAST_PROFILER, prune=False).tune(_context(tmp_path, net))

    assert backend.name == "eager" and backend.active
    assert report.chosen == "eager"
    refused = _by_name(report)[slower.name]
    assert refused.status == "too slow"
    assert "speed gate" in refused.reason and "speed_margin=0.01" in refused.reason
    assert "stays on eager" in report.decision


def test_a_candidate_just_under_the_margin_is_refused_and_the_margin_is_configurable(tmp_path):
    net = SleepyNet(fixed_ms=20, per_row_ms=0)
    nearly = sleepy(fixed_ms=10)  # about 2x faster than eager
    strict, _ = MinLatencyStrategy([nearly], speed_margin=0.8, profiler=FAST_PROFILER).tune(_context(tmp_path / "a", net))
    relaxed, _ = MinLatencyStrategy([nearly], speed_margin=0.05, profiler=FAST_PROFILER).tune(_context(tmp_path / "b", net))

    assert strict.name == "eager"
    assert relaxed.name == nearly.name


def test_speed_margin_none_turns_the_gate_off(tmp_path):
    net = SleepyNet(fixed_ms=0.5, per_row_ms=0)
    slower = sleepy(fixed_ms=5)
    backend, _ = MinLatencyStrategy([slower], speed_margin=None, profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == slower.name


def test_one_backend_strategy_has_no_speed_gate(tmp_path):
    net = SleepyNet(fixed_ms=0.5, per_row_ms=0)
    slower = sleepy(fixed_ms=5)
    backend, report = OneBackendStrategy(slower, profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == slower.name
    assert report.candidates[0].latencies_ms["typical"] > report.eager.latencies_ms["typical"]


def test_a_gated_strategy_whose_candidates_all_fail_raises_and_lists_them(tmp_path):
    net = SleepyNet(fixed_ms=5)
    wrong = sleepy(noise=1.0)
    with pytest.raises(TuningError, match=r"outputs differ from eager"):
        MinLatencyStrategy([wrong], profiler=FAST_PROFILER).tune(_context(tmp_path, net))


@pytest.mark.parametrize("margin", [-0.1, 1.0, "1%"])
def test_a_speed_margin_outside_zero_to_one_is_refused(margin):
    with pytest.raises(InvalidArgumentError, match="speed_margin"):
        MinLatencyStrategy(["eager"], speed_margin=margin)


# ---------------------------------------------------------------------- batch size sweep
def test_the_batch_sweep_stops_where_throughput_stops_growing_and_sets_the_preferred_batch_size(tmp_path):
    net = SleepyNet(fixed_ms=50, per_row_ms=15)
    parallel4 = sleepy(fixed_ms=0, per_row_ms=10, rows_cap=4)  # 40 ms up to 4 rows, then 10 ms a row
    context = _context(tmp_path, net)
    strategy = MaxThroughputStrategy([parallel4], profiler=FAST_PROFILER, max_batch_size_limit=32, batch_gain_threshold=0.2)
    backend, report = strategy.tune(context)

    chosen = _by_name(report)[parallel4.name]
    assert chosen.max_batch_size == 4
    assert set(chosen.batch_latencies_ms) == {"1", "2", "4", "8"}  # 8 gained nothing: the sweep stopped
    assert report.max_batch_size == 4
    assert context.graph.preferred_batch_size == 4
    assert context.graph.dims["batch"].bounds == (1, 4)  # reaches the best size, never below the recorded range


def test_the_batch_sweep_never_narrows_the_recorded_range(tmp_path):
    net = SleepyNet(fixed_ms=50, per_row_ms=15)
    parallel2 = sleepy(fixed_ms=0, per_row_ms=10, rows_cap=2)
    context = _context(tmp_path, net, batches=(1, 8))
    MaxThroughputStrategy([parallel2], profiler=FAST_PROFILER, max_batch_size_limit=16, batch_gain_threshold=0.2).tune(context)

    assert context.graph.preferred_batch_size == 2
    assert context.graph.dims["batch"].bounds == (1, 8)


def test_the_batch_sweep_checks_the_largest_batch_against_eager(tmp_path):
    class WrongOnBigBatches(SleepBackend):
        def _infer(self, call):
            outputs = super()._infer(call)
            return [o + 1.0 for o in outputs] if call.flat.tensors[0].shape[0] > 2 else outputs

    name = f"wrong_big_{next(_ids)}"
    register_backend(type(name, (WrongOnBigBatches,), {"name": name}))
    net = SleepyNet(fixed_ms=20, per_row_ms=4)
    from aitune_triton.backends import get_backend_class

    candidate = get_backend_class(name)(fixed_ms=20)  # throughput doubles with each batch size: the sweep goes to 16
    with pytest.raises(TuningError, match=r"batch of \d+: .*max abs diff"):
        MaxThroughputStrategy([candidate], profiler=FAST_PROFILER, max_batch_size_limit=16).tune(
            _context(tmp_path, net, batches=(1, 2))
        )


def test_a_graph_not_proved_batch_independent_is_not_swept(tmp_path):
    net = SleepyNet(fixed_ms=20, per_row_ms=1)
    context = _context(tmp_path, net, independent=False)
    _, report = MaxThroughputStrategy([sleepy(fixed_ms=1)], profiler=FAST_PROFILER).tune(context)

    assert report.max_batch_size is None
    assert context.graph.preferred_batch_size is None
    assert len(report.candidates[0].batch_latencies_ms) == 1  # only the typical call's own batch


def test_the_kept_candidate_alone_is_swept_into_new_dims_leaving_the_recorded_dict_alone(tmp_path):
    net = SleepyNet(fixed_ms=20, per_row_ms=0)
    first, kept = sleepy(fixed_ms=6), sleepy(fixed_ms=2)  # 2 ms whatever the batch: throughput doubles per size
    context = _context(tmp_path, net, batches=(1, 2))
    recorded = context.graph.dims
    strategy = MinLatencyStrategy([first, kept], speed_margin=None, profiler=FAST_PROFILER, max_batch_size_limit=8)
    backend, report = strategy.tune(context)

    assert backend.name == kept.name
    assert recorded == {"batch": DimRange(1, 2, 2)}  # never written in place: the graph spec got new dicts
    # the swept range, its opt the preferred batch size measured
    assert context.graph.dims == {"batch": DimRange(1, 8, 8)} and context.graph.preferred_batch_size == 8
    assert report.batch_sweep is not None and list(report.batch_sweep.latencies_ms) == ["1", "2", "4", "8"]
    assert report.batch_sweep.stop_reason == "reached max_batch_size_limit 8"
    assert _by_name(report)[first.name].batch_sweep is None  # the candidate not kept was not swept
    assert set(_by_name(report)[first.name].batch_latencies_ms) == {"1", "2"}  # only the recorded range


def test_a_kept_candidate_wrong_at_the_largest_swept_batch_keeps_the_recorded_range(tmp_path):
    class WrongOnBigBatches(SleepBackend):
        def _infer(self, call):
            outputs = super()._infer(call)
            return [o + 1.0 for o in outputs] if call.flat.tensors[0].shape[0] > 2 else outputs

    name = f"wrong_big_{next(_ids)}"
    register_backend(type(name, (WrongOnBigBatches,), {"name": name}))
    from aitune_triton.backends import get_backend_class

    context = _context(tmp_path, SleepyNet(fixed_ms=20, per_row_ms=0), batches=(1, 2))
    strategy = OneBackendStrategy(get_backend_class(name)(fixed_ms=2), profiler=FAST_PROFILER, max_batch_size_limit=8)
    backend, report = strategy.tune(context)

    assert backend.name == name  # it matched eager on every recorded call
    assert {name: dim.bounds for name, dim in context.graph.dims.items()} == {"batch": (1, 2)} and context.graph.preferred_batch_size is None
    assert report.batch_sweep is not None and report.batch_sweep.max_batch_size is None
    assert "the recorded batch range stays" in report.batch_sweep.stop_reason and "batch of 8" in report.batch_sweep.stop_reason
    assert list(report.batch_sweep.latencies_ms) == ["1", "2", "4", "8"]  # what was timed stays in the report


def test_a_failed_tune_leaves_the_recorded_batch_range(tmp_path):
    context = _context(tmp_path, SleepyNet(fixed_ms=1, per_row_ms=0), batches=(1, 2))
    with pytest.raises(TuningError):
        OneBackendStrategy(sleepy(noise=1.0), profiler=FAST_PROFILER).tune(context)

    assert {name: dim.bounds for name, dim in context.graph.dims.items()} == {"batch": (1, 2)} and context.graph.preferred_batch_size is None


# ---------------------------------------------------------------------------- accuracy gate
def _cosine_at_least(threshold: float):
    def metric(eager, tuned) -> float:
        return float(torch.nn.functional.cosine_similarity(eager["out"], tuned["out"], dim=-1).min())

    return metric


def test_a_lower_precision_candidate_whose_metric_fails_keeps_fp32(tmp_path):
    net = SleepyNet(fixed_ms=20)
    lossy = sleepy(fixed_ms=0.5, noise=0.5, precision="int8")
    exact = sleepy(fixed_ms=5)
    strategy = MinLatencyStrategy([lossy, exact], accuracy=_cosine_at_least(0.999), min_accuracy=0.999, profiler=FAST_PROFILER)
    backend, report = strategy.tune(_context(tmp_path, net))

    assert backend.name == exact.name
    refused = _by_name(report)[f"{lossy.name}[int8]"]
    assert refused.status == "failed" and "accuracy" in refused.reason and "min_accuracy 0.999" in refused.reason
    assert refused.accuracy is not None and refused.accuracy < 0.999


def test_a_lower_precision_candidate_passing_its_metric_is_kept_and_its_accuracy_reported(tmp_path):
    net = SleepyNet(fixed_ms=20)
    close = sleepy(fixed_ms=0.5, noise=1e-3, precision="int8")  # beyond fp32's 1e-4, fine by the metric
    exact = sleepy(fixed_ms=5)
    strategy = MinLatencyStrategy([close, exact], accuracy=_cosine_at_least(0.99), min_accuracy=0.99, profiler=FAST_PROFILER)
    backend, report = strategy.tune(_context(tmp_path, net))

    assert backend.name == close.name
    chosen = _by_name(report)[f"{close.name}[int8]"]
    assert chosen.precision == "int8" and chosen.accuracy >= 0.99
    assert chosen.max_abs_diff == pytest.approx(1e-3, rel=1e-2)


def test_without_a_metric_lower_precision_is_judged_by_its_documented_tolerance(tmp_path):
    net = SleepyNet(fixed_ms=20)
    within = sleepy(fixed_ms=1, noise=0.05, precision="int8")  # int8 tolerance: atol = rtol = 0.1
    beyond = sleepy(fixed_ms=1, noise=0.5, precision="int8")
    kept, _ = MinLatencyStrategy([within], profiler=FAST_PROFILER).tune(_context(tmp_path / "a", net))
    with pytest.raises(TuningError):
        MinLatencyStrategy([beyond], profiler=FAST_PROFILER).tune(_context(tmp_path / "b", net))
    assert kept.name == within.name


def test_a_metric_returning_a_score_without_min_accuracy_raises_saying_what_to_pass(tmp_path):
    net = SleepyNet(fixed_ms=20)
    lossy = sleepy(fixed_ms=1, noise=0.01, precision="int8")
    strategy = MinLatencyStrategy([lossy, "eager"], accuracy=lambda eager, tuned: 0.5, profiler=FAST_PROFILER)
    with pytest.raises(InvalidArgumentError, match="pass min_accuracy="):
        strategy.tune(_context(tmp_path, net))
    assert not any((tmp_path).glob("sleep_*"))  # the candidate's work directory is gone


def test_min_accuracy_without_a_metric_is_refused():
    with pytest.raises(InvalidArgumentError, match="min_accuracy: given"):
        MinLatencyStrategy(["eager"], min_accuracy=0.99)


def test_a_candidate_without_a_measurement_is_not_kept_by_the_speed_gate(tmp_path):
    class Unmeasured(MinLatencyStrategy):
        def speed(self, report):
            return None if report.backend != "eager" else super().speed(report)

    net = SleepyNet(fixed_ms=20)
    backend, report = Unmeasured([sleepy(fixed_ms=1)], profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == "eager"
    assert "not measured" in report.candidates[0].reason


# ---------------------------------------------------------------------------------- report
def test_the_report_round_trips_through_json_and_renders_as_a_table(tmp_path):
    net = SleepyNet(fixed_ms=20)
    fast = sleepy(fixed_ms=1)
    _, report = MinLatencyStrategy([fast, sleepy(noise=1.0)], profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    again = GraphTuneReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(report_table(again))
    text = console.export_text()
    assert "eager (reference)" in text and fast.name in text and "chosen" in text and "failed" in text


def test_a_report_written_before_the_measurements_existed_still_loads():
    old = {"graph": "graph_0", "strategy": "FirstWinsStrategy([aoti])", "chosen": "aoti", "eager_latency_ms": 3.0,
           "candidates": [{"backend": "aoti", "status": "chosen", "reason": "", "build_s": 1.0, "latency_ms": 2.0,
                           "max_abs_diff": 0.0}], "batch": "batch axis 1..4"}
    report = GraphTuneReport.from_dict(old)
    assert report.candidates[0].latency_ms == 2.0 and report.eager is None


def test_tuning_a_module_prints_the_report_table_and_saves_it_in_the_checkpoint(tmp_path, unique_name, capsys):
    net = SleepyNet(fixed_ms=2, per_row_ms=0).eval()
    fast = sleepy(fixed_ms=0)
    module = aitune_triton.Module(net, name=unique_name, strategy=MinLatencyStrategy([fast], profiler=FAST_PROFILER))
    with torch.no_grad():
        for batch in (1, 2):
            module(torch.randn(batch, 4))
    module.tune()

    assert "eager (reference)" in capsys.readouterr().err
    (tuned,) = module.tuned_graphs
    assert tuned.report.chosen == fast.name
    stored = json.loads((aitune_triton.save(module, tmp_path / "ckpt") / "manifest.json").read_text())
    assert json.dumps(stored).count('"eager"') >= 1 and "latencies_ms" in json.dumps(stored)


def test_describe_prints_the_stored_report_again_as_a_table_and_as_json(tmp_path, unique_name):
    from click.testing import CliRunner

    from aitune_triton.cli import main

    net = SleepyNet(fixed_ms=2, per_row_ms=0).eval()
    fast = sleepy(fixed_ms=0)
    module = aitune_triton.Module(net, name=unique_name, strategy=MinLatencyStrategy([fast, sleepy(noise=1.0)], profiler=FAST_PROFILER))
    with torch.no_grad():
        module(torch.randn(2, 4))
    module.tune()
    checkpoint = aitune_triton.save(module, tmp_path / "ckpt")

    table = CliRunner().invoke(main, ["describe", str(checkpoint)])
    as_json = CliRunner().invoke(main, ["describe", str(checkpoint), "--json"])
    missing = CliRunner().invoke(main, ["describe", str(tmp_path / "nowhere")])

    assert table.exit_code == 0, table.output
    assert "eager (reference)" in table.output and "chosen" in table.output and "failed: OutputMismatchError" in table.output
    assert as_json.exit_code == 0
    (stored,) = json.loads(as_json.output)
    assert stored["module"] == unique_name and stored["report"]["chosen"] == fast.name
    assert missing.exit_code == 1 and "Error:" in missing.output


def test_a_measured_max_batch_size_becomes_the_exported_max_and_preferred_batch_size(tmp_path, unique_name):
    from nets import IndependentNet

    from aitune_triton.triton.config import read_model_config

    torch.manual_seed(0)
    strategy = MaxThroughputStrategy(["onnxruntime"], speed_margin=None, max_batch_size_limit=16, profiler=FAST_PROFILER)
    module = aitune_triton.Module(IndependentNet().eval(), name=unique_name, strategy=strategy)
    with torch.no_grad():
        for batch in (1, 2):
            module(torch.randn(batch, 8))
    module.tune()
    (tuned,) = module.tuned_graphs
    best = tuned.report.max_batch_size
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False)
    config = read_model_config(tmp_path / "repository" / result.graph_models[0] / "config.pbtxt")

    assert best is not None and tuned.spec.preferred_batch_size == best
    assert config.max_batch_size == max(2, best)
    assert list(config.dynamic_batching.preferred_batch_size) == [best]
    with torch.no_grad():  # the module serves the whole range it was built and checked for
        x = torch.randn(max(2, best), 8)
        torch.testing.assert_close(module(x)["hidden"], torch.relu(module.linear(x)))


def test_describe_json_of_a_checkpoint_without_reports_prints_only_json_on_stdout(tmp_path, unique_name):
    from click.testing import CliRunner

    from aitune_triton.cli import main

    net = SleepyNet(fixed_ms=2, per_row_ms=0).eval()
    module = aitune_triton.Module(net, name=unique_name, strategy=MinLatencyStrategy([sleepy(fixed_ms=0)], profiler=FAST_PROFILER))
    with torch.no_grad():
        module(torch.randn(2, 4))
    module.tune()
    checkpoint = aitune_triton.save(module, tmp_path / "ckpt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    for stored in manifest["modules"]:  # as written before reports were stored
        for entry in stored["module"]["graphs"]:
            entry.pop("report", None)
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))

    as_json = CliRunner().invoke(main, ["describe", str(checkpoint), "--json"])
    table = CliRunner().invoke(main, ["describe", str(checkpoint)])

    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == []
    assert "no tuning report stored" in as_json.stderr
    assert table.exit_code == 0 and "no tuning report stored" in table.stdout


def test_the_latency_budget_caps_the_preferred_batch_size_at_the_largest_size_within_it(tmp_path):
    net = SleepyNet(fixed_ms=12, per_row_ms=3)
    # 0.5 ms + 1 ms a row: throughput grows at every size, but only batches up to 4 (4.5 ms) fit 6 ms.
    per_row = sleepy(fixed_ms=0.5, per_row_ms=1)
    context = _context(tmp_path, net)
    strategy = LatencyBudgetStrategy([per_row], latency_budget_ms=6.0, max_batch_size_limit=16, batch_gain_threshold=0.0,
                                     profiler=FAST_PROFILER)
    backend, report = strategy.tune(context)

    assert backend.name == per_row.name
    assert report.max_batch_size == 4
    assert context.graph.preferred_batch_size == 4
    assert context.graph.dims["batch"].bounds == (1, 4)  # the recorded range; no batch above the budget is formed


def test_eager_is_timed_again_after_the_candidates_and_its_faster_time_is_the_one_the_gate_uses(tmp_path):
    class ColdNet(SleepyNet):
        """30 ms a call until a candidate is built (a cold first pass), then 2 ms."""

        cold = True

        def forward(self, x):
            time.sleep(0.030 if self.cold else 0.002)
            return self.core(x)

    class WarmsUp(SleepBackend):
        def _build(self, context):
            super()._build(context)
            context.module.cold = False

    name = f"warms_up_{next(_ids)}"
    register_backend(type(name, (WarmsUp,), {"name": name}))
    from aitune_triton.backends import get_backend_class

    candidate = get_backend_class(name)(fixed_ms=10)  # faster than cold eager, slower than warm eager
    backend, report = MinLatencyStrategy([candidate], profiler=FAST_PROFILER).tune(_context(tmp_path, ColdNet()))

    assert backend.name == "eager"
    assert report.eager.latencies_ms["typical"] < 10
    assert report.candidates[0].status == "too slow"


def test_a_graph_kept_on_eager_among_the_candidates_says_the_others_did_not_pass_not_that_eager_was_fastest(tmp_path):
    net = SleepyNet(fixed_ms=1, per_row_ms=0)
    backend, report = MinLatencyStrategy([sleepy(fixed_ms=8), "eager"], profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == "eager"
    assert report.decision.startswith("kept eager: no other candidate matched eager and passed the speed gate")


def test_the_decision_names_the_batch_sweep_result(tmp_path):
    net = SleepyNet(fixed_ms=50, per_row_ms=15)
    strategy = MaxThroughputStrategy([sleepy(fixed_ms=0, per_row_ms=10, rows_cap=4)], profiler=FAST_PROFILER,
                                     max_batch_size_limit=32, batch_gain_threshold=0.2)
    _, report = strategy.tune(_context(tmp_path, net))

    assert "batch sweep: preferred batch size 4, batch range 1..4" in report.decision


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MinLatencyStrategy(["eager"], find_max_batch_size="no"), "find_max_batch_size: expected True or False"),
        (lambda: MinLatencyStrategy(["eager"], speed_margin=5), r"a fraction: 0.05 for 5%"),
        (lambda: MinLatencyStrategy([aitune_triton.OnnxRuntimeBackend]), r"got the class OnnxRuntimeBackend; pass an instance"),
    ],
)
def test_strategy_mistakes_are_refused_saying_what_to_pass(make, message):
    with pytest.raises((InvalidArgumentError, TypeError), match=message):
        make()


def test_a_strategy_repr_is_its_description():
    strategy = MinLatencyStrategy(["onnxruntime", "eager"])
    assert repr(strategy) == strategy.describe() == "MinLatencyStrategy([onnxruntime, eager])"
