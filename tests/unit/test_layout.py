"""Served layouts and in-process threads: the rule on given numbers, the options that take the
measured layout (and the explicit ones that override it), the report round trip, and the
caller's torch thread count surviving a tuned call."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton._threads import torch_threads
from aitune_triton.backends import EagerBackend, register_backend
from aitune_triton.errors import InvalidArgumentError, InvalidOptionError
from aitune_triton.module.recording import Recorder
from aitune_triton.module.tuned import TunedGraph, TunedModule
from aitune_triton.spec import ForwardSignature, flatten_call
from aitune_triton.strategies import GraphTuneReport, LayoutReport, LayoutResult, MinLatencyStrategy, choose_layout, default_strategy
from aitune_triton.strategies.layout import MAX_INSTANCES, layouts_for, measure_in_process
from aitune_triton.triton.config import MEASURED, TritonModelOptions, graph_model_config
from aitune_triton.triton.io import ModelIO, TensorIO
from aitune_triton.triton.options import DEFAULT_INTRA_OP_THREADS, THREADS_PARAMETER, InstanceGroup


def _results(*rows: tuple[int, int, float, float]) -> list[LayoutResult]:
    return [LayoutResult(instances, threads, latency, latency, throughput) for instances, threads, latency, throughput in rows]


def test_the_rule_keeps_the_best_throughput_within_the_latency_tolerance():
    chosen, reason = choose_layout(_results((1, 2, 10.0, 100.0), (2, 1, 10.9, 150.0)))
    assert (chosen.instances, chosen.threads) == (2, 1)
    assert "within 10%" in reason and "1x2" in reason


def test_the_rule_leaves_out_layouts_over_the_latency_budget():
    results = _results((1, 2, 10.0, 100.0), (2, 1, 11.2, 150.0))
    chosen, reason = choose_layout(results)
    assert chosen.label == "1x2"
    assert "over the latency budget: 2x1" in reason
    assert choose_layout(results, latency_tolerance=0.2)[0].label == "2x1"


def test_the_rule_breaks_a_throughput_tie_with_fewer_instances_and_skips_unmeasured_layouts():
    results = _results((4, 1, 10.0, 100.0), (2, 2, 10.0, 100.0)) + [LayoutResult(1, 4)]
    assert choose_layout(results)[0].label == "2x2"


@pytest.mark.parametrize(
    "results, tolerance, field_name",
    [([LayoutResult(1, 2)], 0.1, "results"), ([], 0.1, "results"), (_results((1, 2, 1.0, 1.0)), -0.1, "latency_tolerance")],
)
def test_the_rule_refuses_what_it_cannot_judge(results, tolerance, field_name):
    with pytest.raises(InvalidArgumentError, match=field_name):
        choose_layout(results, tolerance)


def test_only_layouts_that_fill_the_machine_are_measured():
    assert layouts_for(1) == [(1, 1)]
    assert layouts_for(2) == [(1, 2), (2, 1)]
    assert layouts_for(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]
    assert all(i * t == 64 and i <= MAX_INSTANCES for i, t in layouts_for(64))


def test_the_layout_travels_with_the_tuning_report_and_older_reports_load():
    layout = LayoutReport(cores=2, layouts=_results((1, 2, 3.0, 50.0), (2, 1, 3.1, 80.0)), instances=2, threads=1,
                          reason="r", batch_size=8, in_process_threads=1, in_process_latencies_ms={"1": 2.0, "2": 3.0})
    report = GraphTuneReport("graph_0", "s", "aoti", 1.0, [], layout=layout)
    assert GraphTuneReport.from_dict(report.to_dict()).layout == layout
    older = report.to_dict()
    del older["layout"]
    assert GraphTuneReport.from_dict(older).layout is None


def test_the_default_strategy_measures_layouts_and_other_strategies_do_not_unless_asked():
    assert default_strategy().measure_layouts is True
    assert MinLatencyStrategy(["eager"]).measure_layouts is False
    assert MinLatencyStrategy(["eager"], measure_layouts=True).measure_layouts is True
    for bad in ({"measure_layouts": 1}, {"layout_seconds": 0}, {"layout_latency_tolerance": 1.5}):
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            MinLatencyStrategy(["eager"], **bad)


# ----------------------------------------------------------------------------------------- export options
def _io(name: str = "net.graph_0") -> ModelIO:
    x = TensorIO("x", "x", "float32", "TYPE_FP32", (4,), 0, ((1, 8), (4, 4)))
    y = TensorIO("y", "output", "float32", "TYPE_FP32", (4,), 0, ((1, 8), (4, 4)))
    return ModelIO(name, name.rpartition(".")[2], "{}", "x: float32[B,4]", "onnxruntime", "model.onnx", 8, [x], [y], "")


#: A measurement as a tuning records it: 2x1 chosen, 1x2 measured too.
MEASURED_LAYOUT = LayoutReport(cores=2, layouts=_results((1, 2, 3.0, 50.0), (2, 1, 3.1, 80.0)), instances=2, threads=1)


def _written(options: TritonModelOptions, layout: LayoutReport | None = MEASURED_LAYOUT, device: str = "cpu"):
    resolved, written = options.for_layout("net.graph_0", "graph_0", layout, device)
    config = graph_model_config(_io(), resolved, device)
    (group,) = config.instance_group
    threads = config.parameters[THREADS_PARAMETER].string_value if THREADS_PARAMETER in config.parameters else None
    return group.count, threads, written


def test_the_measured_layout_lands_in_the_instance_group_and_the_threads_parameter():
    count, threads, written = _written(TritonModelOptions())
    assert (count, threads) == (MEASURED_LAYOUT.instances, str(MEASURED_LAYOUT.threads))
    assert written == {"instances": 2, "instances_from": "measured", "intra_op_threads": 1, "threads_from": "measured"}


def test_without_a_measurement_the_defaults_apply():
    assert _written(TritonModelOptions(), layout=None)[:2] == (1, str(DEFAULT_INTRA_OP_THREADS))
    skipped = LayoutReport(cores=1, reason="not measured: one layout fits 1 core(s)")
    assert _written(TritonModelOptions(), layout=skipped)[:2] == (1, str(DEFAULT_INTRA_OP_THREADS))
    assert graph_model_config(_io(), TritonModelOptions()).parameters[THREADS_PARAMETER].string_value == str(DEFAULT_INTRA_OP_THREADS)


def test_explicit_options_override_the_measured_layout():
    # The count given: the threads of the measured layout with that count.
    assert _written(TritonModelOptions(instance_count=1))[:2] == (1, "2")
    # A count that was not measured: the default threads.
    assert _written(TritonModelOptions(instance_count=3))[:2] == (3, str(DEFAULT_INTRA_OP_THREADS))
    assert _written(TritonModelOptions(intra_op_threads=4))[:2] == (2, "4")
    assert _written(TritonModelOptions(intra_op_threads=None))[:2] == (2, None)
    count, threads, written = _written(TritonModelOptions(instance_groups={"graph_0": InstanceGroup("cpu", 1)}))
    assert (count, threads, written["instances_from"]) == (1, "2", "instance_groups")
    # GPU instances: the CPU measurement does not apply.
    assert _written(TritonModelOptions(instance_kind="gpu"))[:2] == (1, str(DEFAULT_INTRA_OP_THREADS))


def test_intra_op_threads_takes_an_integer_none_or_measured():
    assert TritonModelOptions().intra_op_threads == MEASURED
    with pytest.raises(InvalidOptionError, match="intra_op_threads: expected an integer >= 1, got 'many'"):
        TritonModelOptions(intra_op_threads="many")


# ------------------------------------------------------------------------------------ in-process threads
def test_torch_threads_restores_the_callers_count_nested_after_errors_and_per_thread():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
        with torch_threads(before):
            assert torch.get_num_threads() == before
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    seen = []
    worker = threading.Thread(target=lambda: seen.append(_in_thread(other)))
    worker.start()
    worker.join()
    assert seen == [(other, other)] and torch.get_num_threads() == before


def _in_thread(threads: int) -> tuple[int, int]:
    start = torch.get_num_threads()
    with torch_threads(threads):
        inside = torch.get_num_threads()
    assert torch.get_num_threads() == start
    return inside, threads


@register_backend
class _ThreadRecordingBackend(EagerBackend):
    """Eager, recording the torch thread count each call runs with."""

    name = "test_layout_thread_recording"

    def _infer(self, call):
        self.seen = getattr(self, "seen", []) + [torch.get_num_threads()]
        return super()._infer(call)


def test_a_tuned_call_runs_with_the_measured_threads_and_gives_the_callers_back():
    net = torch.nn.Linear(4, 3).eval()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        recorder.record(net, (torch.randn(2, 4),), {})
    (graph,) = recorder.graph_specs()
    from aitune_triton.backends import BuildContext

    backend = _ThreadRecordingBackend()
    backend.build(BuildContext(net, signature, graph, None, None, torch.device("cpu")))  # type: ignore[arg-type]
    before = torch.get_num_threads()
    measured = 1 if before != 1 else 2
    report = GraphTuneReport(graph.name, "s", backend.name, 1.0, [], layout=LayoutReport(in_process_threads=measured))
    tuned = TunedModule("layout_threads", signature, [TunedGraph(graph, backend, report)])
    x = torch.randn(2, 4)
    assert torch.allclose(tuned(net.forward, (x,), {}), net(x))
    assert backend.seen == [measured]
    assert torch.get_num_threads() == before
    unmeasured = TunedModule("layout_threads_none", signature, [TunedGraph(graph, backend, GraphTuneReport(graph.name, "s", backend.name, 1.0, []))])
    unmeasured(net.forward, (x,), {})
    assert backend.seen[-1] == before


@register_backend
class _ShapeThreadsBackend(EagerBackend):
    """Eager whose calls take a time set per (batch size, torch threads): 2 threads pay off at the
    typical and largest calls and are 4x slower at the smallest one (as small calls on a busy CPU)."""

    name = "test_layout_shape_threads"
    triton_runtime = "test"  # measured as a backend with an artifact
    #: (batch, threads) -> ms per call.
    MS = {(1, 1): 1.0, (1, 2): 4.0, (4, 1): 10.0, (4, 2): 9.0, (8, 1): 20.0, (8, 2): 18.0}

    def _infer(self, call):
        time.sleep(self.MS[(call.flat.tensors[0].shape[0], torch.get_num_threads())] / 1e3)
        return super()._infer(call)


def test_in_process_threads_are_chosen_over_the_recorded_shapes_not_the_typical_one_alone():
    net = torch.nn.Linear(4, 3).eval()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for batch in (1, 4, 8):
            recorder.record(net, (torch.randn(batch, 4),), {})
    (graph,) = recorder.graph_specs()
    from aitune_triton.backends import BuildContext

    def call(batch: int):
        return flatten_call(signature, (torch.randn(batch, 4),), {})

    backend = _ShapeThreadsBackend()
    backend.build(BuildContext(net, signature, graph, call(8), None, torch.device("cpu")))  # type: ignore[arg-type]
    before = torch.get_num_threads()
    typical_only, over_range = LayoutReport(), LayoutReport()

    measure_in_process(backend, {"typical": call(4)}, 2, typical_only)
    measure_in_process(backend, {"smallest": call(1), "typical": call(4), "largest": call(8), "again": call(8)}, 2, over_range)

    assert typical_only.in_process_threads == 2 and list(typical_only.in_process_shape_latencies_ms) == ["typical"]
    assert over_range.in_process_threads == 1  # geometric mean: 1 thread 5.8 ms, 2 threads 8.7 ms
    assert list(over_range.in_process_shape_latencies_ms) == ["smallest", "typical", "largest"]  # a repeated shape counts once
    assert over_range.in_process_shape_latencies_ms["smallest"]["2"] > 2 * over_range.in_process_shape_latencies_ms["smallest"]["1"]
    assert set(over_range.in_process_latencies_ms) == {"1", "2"}
    assert "smallest, typical, largest" in over_range.in_process_reason
    assert torch.get_num_threads() == before
    back = LayoutReport.from_dict(over_range.to_dict())
    assert back.in_process_shape_latencies_ms == over_range.in_process_shape_latencies_ms


# --------------------------------------------------------------------------------- the worker processes
SCRIPT_WITHOUT_MAIN_GUARD = """
import torch
import aitune_triton
print("script body ran", flush=True)
module = aitune_triton.Module(torch.nn.Linear(4, 3).eval(), name="no_guard",
                              strategy=aitune_triton.OneBackendStrategy("onnxruntime", measure_layouts=True, layout_seconds=0.1))
with torch.no_grad():
    for batch in (1, 2):
        module(torch.randn(batch, 4))
module.tune()
import json
print("layout", json.dumps(module.tuned_graphs[0].report.layout.to_dict()), flush=True)
"""


def test_a_script_without_a_main_guard_is_not_run_again_by_the_layout_workers(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from aitune_triton.strategies.layout import available_cores

    script = tmp_path / "tune_me.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD)
    env = dict(os.environ, AITUNE_TRITON_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("script body ran") == 1
    (line,) = [text for text in done.stdout.splitlines() if text.startswith("layout ")]
    layout = LayoutReport.from_dict(json.loads(line.removeprefix("layout ")))
    if len(layouts_for(available_cores())) > 1:
        assert layout.instances is not None, layout.reason
        assert all(r.throughput and r.latency_ms for r in layout.layouts)


class _OwnThreadsBackend(_ShapeThreadsBackend):
    """A backend whose options carry its own thread count, as ONNX Runtime's and OpenVINO's do."""

    def __init__(self, option: str):
        super().__init__()
        self.option = option

    @property
    def options(self):
        return {self.option: 3}


@pytest.mark.parametrize("option", ["intra_op_num_threads", "inference_num_threads"])
def test_a_backend_with_its_own_thread_count_is_not_timed_with_torch_threads(option):
    net = torch.nn.Linear(4, 3).eval()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        recorder.record(net, (torch.randn(4, 4),), {})
    (graph,) = recorder.graph_specs()
    from aitune_triton.backends import BuildContext

    call = flatten_call(signature, (torch.randn(4, 4),), {})
    backend = _OwnThreadsBackend(option)
    backend.build(BuildContext(net, signature, graph, call, None, torch.device("cpu")))  # type: ignore[arg-type]
    report = LayoutReport()

    measure_in_process(backend, {"typical": call}, 2, report)

    assert report.in_process_threads is None and not report.in_process_latencies_ms
    assert report.in_process_reason == f"the backend's own {option}=3"

