"""Selection over the whole recorded range (weights, the per-shape speed gate, per-shape ratios)
and measurements a user can trust (eager against itself, rotated re-timing, the noise verdict,
a stable tie-break).

The candidates are the sleeping backends of ``test_selection``: their cost per batch row is set
by the test, so which shape a candidate loses at is known, not left to a busy machine's noise.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from rich.console import Console
from test_selection import FAST_PROFILER, SleepBackend, SleepyNet, _by_name, _context, sleepy

from aitune_triton.backends import Backend, get_backend_class, register_backend
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.module.recording import Recorder
from aitune_triton.spec import ForwardSignature, StoredCall, flatten_call
from aitune_triton.strategies import GraphTuneReport, MinLatencyStrategy, NoiseCheck, OneBackendStrategy, TuneContext, report_table
from aitune_triton.strategies.evaluation import Measurements
from aitune_triton.strategies.report import graph_summary


def _recorded(tmp_path, batches) -> tuple[TuneContext, Recorder]:
    """A context of SleepyNet's calls at ``batches`` (every call stored), with the recorder's sizes."""
    net = SleepyNet()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for batch in batches:
            recorder.record(net.core, (torch.randn(batch, 4),), {})
    (graph,) = recorder.graph_specs()
    samples = [StoredCall(signature, flatten_call(signature, s.args, s.kwargs)) for s in recorder.samples(graph)]
    largest = recorder.largest_sample(graph)
    example = StoredCall(signature, flatten_call(signature, largest.args, largest.kwargs))
    context = TuneContext(net, signature, graph, samples, example, tmp_path, torch.device("cpu"),
                          call_sizes=recorder.call_sizes(graph))
    return context, recorder


def _weights(context: TuneContext) -> dict[str, float]:
    return Measurements(context, dict(context.graph.dims), None, False, None).weights


# ------------------------------------------------------------------------------------ weights
def test_each_recorded_call_counts_for_the_timed_shape_nearest_in_size(tmp_path):
    # Five calls of 1 row, one of 2, one of 4: the typical call has the smallest's shape, so they are one shape.
    context, recorder = _recorded(tmp_path, [1, 1, 1, 1, 1, 2, 4])
    assert recorder.call_sizes(context.graph) == [4, 4, 4, 4, 4, 8, 16]

    weights = _weights(context)

    # 2 rows (8 elements) are nearer the 1-row shape (4) than the 4-row one (16).
    assert weights == pytest.approx({"typical": 6 / 7, "largest": 1 / 7})


def test_a_graph_spec_with_one_recorded_shape_has_one_weight(tmp_path):
    context, _ = _recorded(tmp_path, [2, 2, 2])
    assert _weights(context) == {"typical": 1.0}


def test_the_weights_count_every_recorded_call_not_only_the_stored_samples(tmp_path):
    context, _ = _recorded(tmp_path, [1, 2, 4])
    assert _weights(context) == pytest.approx({"smallest": 1 / 3, "typical": 1 / 3, "largest": 1 / 3})

    context.call_sizes = [16] * 8 + [4, 8]  # many more large calls were recorded than stored
    assert _weights(context) == pytest.approx({"smallest": 0.1, "typical": 0.1, "largest": 0.8})


# --------------------------------------------------------------------------- the range gate
def test_a_candidate_fast_at_the_typical_shape_but_slower_than_eager_at_the_largest_is_refused_naming_it(tmp_path):
    # Eager: 8 ms + 2 ms a row (10, 12, 16 ms at 1, 2, 4 rows); the candidate 5 ms a row (5, 10, 20 ms):
    # faster at the typical shape and on the weighted latency (11.7 vs 12.7 ms), 1.25x eager's time at the largest.
    net = SleepyNet(fixed_ms=8, per_row_ms=2)
    steep = sleepy(per_row_ms=5)
    backend, report = MinLatencyStrategy([steep], profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == "eager"
    refused = _by_name(report)[steep.name]
    assert refused.status == "too slow"
    assert "at the largest recorded shape (x: 4x4)" in refused.reason and "speed gate" in refused.reason
    assert refused.ratios_to_eager["typical"] < 1.0 < refused.ratios_to_eager["largest"]
    assert refused.weighted_latency_ms < report.eager.weighted_latency_ms
    assert report.shape_weights == pytest.approx({"smallest": 1 / 3, "typical": 1 / 3, "largest": 1 / 3})

    console = Console(width=220, record=True)
    console.print(report_table(report))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith(steep.name))
    shown = " ".join(f"{refused.ratios_to_eager[shape]:.2f}" for shape in ("smallest", "typical", "largest"))
    assert "x eager s/t/l" in text and shown in row


def test_without_the_per_shape_gate_the_weighted_latency_decides(tmp_path):
    net = SleepyNet(fixed_ms=8, per_row_ms=2)
    steep = sleepy(per_row_ms=5)
    backend, report = MinLatencyStrategy([steep], profiler=FAST_PROFILER, gate_every_shape=False).tune(_context(tmp_path, net))

    assert backend.name == steep.name
    assert "per shape smallest" in report.decision and "largest 1." in report.decision


def test_one_backend_stays_ungated_over_the_range(tmp_path):
    net = SleepyNet(fixed_ms=8, per_row_ms=2)
    steep = sleepy(per_row_ms=5)
    backend, report = OneBackendStrategy(steep, profiler=FAST_PROFILER).tune(_context(tmp_path, net))

    assert backend.name == steep.name and report.candidates[0].status == "chosen"


class TableBackend(SleepBackend):
    """The module's ``core`` after sleeping ``smallest_ms`` / ``typical_ms`` / ``largest_ms`` at 1 / 2 / 4 rows."""

    def __init__(self, smallest_ms: float = 0.0, typical_ms: float = 0.0, largest_ms: float = 0.0) -> None:
        Backend.__init__(self, smallest_ms=smallest_ms, typical_ms=typical_ms, largest_ms=largest_ms)
        self._module = None

    def _infer(self, call):
        (x,) = call.flat.tensors
        ms = {1: self.options["smallest_ms"], 2: self.options["typical_ms"]}.get(x.shape[0], self.options["largest_ms"])
        time.sleep(ms / 1000.0)
        output = self._module.core(x)
        return [output["out"], output["parts"][0]]


def table(smallest_ms: float, typical_ms: float, largest_ms: float) -> TableBackend:
    name = f"table_{len(_tables)}_{id(_tables)}"
    _tables.append(name)
    register_backend(type(f"Table{name}", (TableBackend,), {"name": name}))
    return get_backend_class(name)(smallest_ms, typical_ms, largest_ms)  # type: ignore[return-value,call-arg]


_tables: list[str] = []


def test_candidates_the_speed_gate_refuses_never_prune_one_it_would_pass(tmp_path):
    # Eager 20 ms at every shape. A is fast but at the largest shape (refused there), B but at the smallest;
    # X, half eager's time everywhere, is twice the faster of A and B at every shape, and the only one the gate passes.
    net = SleepyNet(fixed_ms=20, per_row_ms=0)
    a, b, x = table(5, 5, 30), table(30, 5, 5), table(10, 10, 10)
    backend, report = MinLatencyStrategy([a, b, x], profiler=FAST_PROFILER, find_max_batch_size=False).tune(_context(tmp_path, net))

    by_name = _by_name(report)
    assert by_name[a.name].status == "too slow" and by_name[b.name].status == "too slow"
    assert backend.name == x.name and by_name[x.name].status == "chosen"


def test_the_eager_candidate_is_compared_on_its_weighted_latency_like_the_others(tmp_path):
    # Eager 10 / 20 / 40 ms at 1 / 2 / 4 rows: 20 ms at the typical shape, 23.3 ms weighted. The other
    # candidate, 21.5 ms flat, is faster on the weighted measure and must not lose to eager's typical time.
    net = SleepyNet(fixed_ms=0, per_row_ms=10)
    flat = sleepy(fixed_ms=21.5)
    strategy = MinLatencyStrategy(["eager", flat], profiler=FAST_PROFILER, find_max_batch_size=False, gate_every_shape=False,
                                  noise_check=None)  # fmt: skip
    backend, report = strategy.tune(_context(tmp_path, net))

    eager_candidate = report.candidates[0]
    assert eager_candidate.backend == "eager" and eager_candidate.weighted_latency_ms is not None
    assert eager_candidate.shapes == report.eager.shapes and eager_candidate.shapes
    assert backend.name == flat.name


# ------------------------------------------------------------------------------------- noise
class DriftingNet(SleepyNet):
    """Eager whose every call sleeps 4% longer than the one before: unstable against itself."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor):
        self.calls += 1
        time.sleep(0.001 * 1.04 ** self.calls)
        return self.core(x)


def test_unstable_measurements_are_re_measured_then_reported_in_the_report_and_the_decision(tmp_path):
    net = DriftingNet()
    fast = sleepy(fixed_ms=0.5)
    strategy = MinLatencyStrategy([fast], profiler=FAST_PROFILER, noise_check=NoiseCheck(rounds=2, threshold=1.25, remeasures=1))
    backend, report = strategy.tune(_context(tmp_path, net))

    assert backend.name == fast.name
    assert report.noisy is True
    assert report.eager_spread > 1.25
    assert "measurements unstable" in report.noise and "re-measured 1x" in report.noise
    kept, _, rest = report.decision.partition("; ")
    assert kept.startswith(f"kept {fast.name}") and rest.startswith("measurements unstable (eager vs itself ")
    summary = graph_summary(report, fast.name)  # module.summary()'s line keeps the rule and the verdict
    assert "lowest latency" in summary and "measurements unstable" in summary
    again = GraphTuneReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report


def test_candidates_within_the_noise_of_each_other_keep_the_declared_order(tmp_path):
    # Two candidates of the same cost: which measures faster is noise; the first declared is kept, tune after tune.
    net = SleepyNet(fixed_ms=20)
    first, second = sleepy(fixed_ms=4), sleepy(fixed_ms=4)
    kept = []
    for attempt in range(2):
        backend, report = MinLatencyStrategy([first, second], profiler=FAST_PROFILER).tune(_context(tmp_path / str(attempt), net))
        kept.append(backend.name)
        assert report.retime_spread is not None and report.retime_spread >= 1.0
        assert all(c.spread is not None for c in report.candidates)
    assert kept == [first.name, first.name]


def test_the_noise_check_options_are_checked():
    with pytest.raises(InvalidArgumentError, match="NoiseCheck.rounds"):
        NoiseCheck(rounds=1)
    with pytest.raises(InvalidArgumentError, match="NoiseCheck.threshold"):
        NoiseCheck(threshold=0.2)
    with pytest.raises(InvalidArgumentError, match="noise_check"):
        MinLatencyStrategy(["eager"], noise_check="loud")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="gate_every_shape"):
        MinLatencyStrategy(["eager"], gate_every_shape=1)  # type: ignore[arg-type]


def test_a_report_written_before_the_range_and_noise_fields_still_loads():
    old = {"graph": "graph_0", "strategy": "MinLatencyStrategy([aoti])", "chosen": "aoti", "eager_latency_ms": 3.0,
           "candidates": [{"backend": "aoti", "status": "chosen", "reason": "", "latency_ms": 2.0,
                           "latencies_ms": {"typical": 2.0}}], "decision": "kept aoti"}
    report = GraphTuneReport.from_dict(old)
    assert report.noisy is False and report.shape_weights == {} and report.noise == ""
    assert report.candidates[0].ratios_to_eager == {} and report.candidates[0].weighted_latency_ms is None
    assert MinLatencyStrategy(["eager"]).speed(report.candidates[0]) == 2.0  # the typical shape, as before


@pytest.mark.filterwarnings("ignore:graph_0. kept on eager")
def test_a_tuned_module_weighs_shapes_by_every_recorded_call_not_the_few_stored(unique_name):
    import aitune_triton

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).eval()
    strategy = OneBackendStrategy("eager", profiler=FAST_PROFILER, find_max_batch_size=False)
    module = aitune_triton.Module(net, name=unique_name, strategy=strategy, max_samples=3)
    with torch.no_grad():
        for batch in (4, 1, 1, 1, 1, 1, 2):  # 7 calls, 3 stored
            module(torch.randn(batch, 4))
        module.tune()

    (graph,) = module.tuned_graphs
    weights = graph.report.shape_weights
    assert all(abs(weight * 7 - round(weight * 7)) < 1e-9 for weight in weights.values())  # counts of 7 calls
    assert weights == pytest.approx({"smallest": 5 / 7, "typical": 1 / 7, "largest": 1 / 7})
