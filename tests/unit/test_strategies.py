"""Strategies: candidate order, fall-through on failure, reports, tolerances, output comparison."""

from __future__ import annotations

import itertools

import pytest
import torch

from aitune_triton.backends import Backend, EagerBackend, OnnxRuntimeBackend, register_backend
from aitune_triton.errors import BackendBuildError, OutputMismatchError, TuningError
from aitune_triton.module.recording import Recorder
from aitune_triton.spec import DimRange, ForwardSignature, flatten_call
from aitune_triton.strategies import (
    FirstWinsStrategy,
    GraphTuneReport,
    MinLatencyStrategy,
    OneBackendStrategy,
    TuneContext,
    default_strategy,
    resolve_backend,
)
from aitune_triton.strategies.validation import compare_outputs, measure_latency_ms, raise_on_mismatch

_ids = itertools.count()


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return {"out": torch.sigmoid(self.linear(x))}


def _context(tmp_path, batches=(1, 3)) -> TuneContext:
    net = SmallNet().eval()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for batch in batches:
            recorder.record(net, (torch.randn(batch, 4),), {})
    (graph,) = recorder.graph_specs()
    samples = [flatten_call(signature, s.args, s.kwargs) for s in recorder.samples(graph)]
    largest = recorder.largest_sample(graph)
    return TuneContext(net, signature, graph, samples, flatten_call(signature, largest.args, largest.kwargs), tmp_path, torch.device("cpu"))


def _register(base: type[Backend], **members) -> str:
    """Register a subclass of ``base`` under a fresh name and return the name."""
    name = f"test_strategies_{base.__name__.lower()}_{next(_ids)}"
    register_backend(type(f"Failing{next(_ids)}", (base,), {"name": name, **members}))
    return name


def _plus_one(self, call):
    return [t + 1.0 for t in super(type(self), self).infer(call)]


def _unavailable(cls, device):
    return "needs a device this machine does not have"


def _broken_build(self, context):
    raise BackendBuildError("compiler exploded")


# ------------------------------------------------------------------------- FirstWinsStrategy
def test_first_wins_falls_through_a_candidate_whose_outputs_differ_and_reports_why(tmp_path):
    off_by_one = _register(OnnxRuntimeBackend, infer=_plus_one)
    context = _context(tmp_path)
    strategy = FirstWinsStrategy([off_by_one, "eager", "onnxruntime"])

    backend, report = strategy.tune(context)

    assert isinstance(backend, EagerBackend) and backend.active
    assert isinstance(report, GraphTuneReport)
    assert report.chosen == "eager"
    assert report.graph == "graph_0"
    assert report.strategy == f"FirstWinsStrategy([{off_by_one}, eager, onnxruntime])"
    assert [(c.backend, c.status) for c in report.candidates] == [
        (off_by_one, "failed"),
        ("eager", "chosen"),
        ("onnxruntime", "not tried"),
    ]
    failed = report.candidates[0]
    assert failed.reason.startswith(f"OutputMismatchError: {off_by_one}: outputs differ from eager")
    assert "sample 0: out: max abs diff 1 exceeds atol=0.0001 + rtol=0.0001*|eager|" in failed.reason
    assert "sample 1: out:" in failed.reason
    assert failed.max_abs_diff == pytest.approx(1.0, abs=1e-6)
    assert failed.build_s > 0
    assert failed.latency_ms is None
    assert not (context.workdir / off_by_one).exists()  # built, rejected, and its artifacts removed
    assert report.eager_latency_ms > 0


def test_first_wins_keeps_the_first_candidate_that_passes(tmp_path):
    context = _context(tmp_path)

    backend, report = FirstWinsStrategy(["eager", "onnxruntime"]).tune(context)

    assert backend.name == "eager"
    assert [(c.backend, c.status) for c in report.candidates] == [("eager", "chosen"), ("onnxruntime", "not tried")]
    assert not (context.workdir / "onnxruntime").exists()


def test_tuning_error_lists_the_reason_of_every_failed_candidate(tmp_path):
    off_by_one = _register(EagerBackend, infer=_plus_one)
    unavailable = _register(EagerBackend, unavailable_reason=classmethod(_unavailable))
    broken = _register(EagerBackend, _build=_broken_build)

    with pytest.raises(TuningError) as info:
        FirstWinsStrategy([off_by_one, unavailable, broken]).tune(_context(tmp_path))

    message = str(info.value)
    assert message.startswith(f"graph_0: no candidate of FirstWinsStrategy([{off_by_one}, {unavailable}, {broken}]) passed:")
    assert f"{off_by_one}: failed: OutputMismatchError: {off_by_one}: outputs differ from eager" in message
    assert f"{unavailable}: unavailable: {unavailable}: needs a device this machine does not have" in message
    assert f"{broken}: failed: BackendBuildError: compiler exploded" in message


def test_one_backend_strategy_raises_tuning_error_when_its_backend_fails(tmp_path):
    off_by_one = _register(EagerBackend, infer=_plus_one)

    with pytest.raises(TuningError, match=f"{off_by_one}: failed: OutputMismatchError"):
        OneBackendStrategy(off_by_one).tune(_context(tmp_path))


def test_loose_tolerance_accepts_a_candidate_that_the_default_tolerance_rejects(tmp_path):
    off_by_one = _register(EagerBackend, infer=_plus_one)

    backend, report = OneBackendStrategy(off_by_one, atol=1.0001, rtol=0.0).tune(_context(tmp_path))

    assert backend.name == off_by_one
    assert report.candidates[0].status == "chosen"
    assert report.candidates[0].max_abs_diff == pytest.approx(1.0, abs=1e-6)


def test_a_candidate_raising_at_inference_is_reported_as_failed(tmp_path):
    def crash(self, call):
        raise RuntimeError("runtime went away")

    crashing = _register(EagerBackend, infer=crash)

    _, report = FirstWinsStrategy([crashing, "eager"]).tune(_context(tmp_path))

    assert (report.candidates[0].status, report.candidates[0].reason) == ("failed", "RuntimeError: runtime went away")
    assert report.chosen == "eager"


def test_a_failed_candidate_is_deactivated_and_the_chosen_one_stays_active(tmp_path):
    built = []

    def plus_one_tracked(self, call):
        built.append(self)
        return _plus_one(self, call)

    off_by_one = _register(EagerBackend, infer=plus_one_tracked)

    chosen, _ = FirstWinsStrategy([off_by_one, "eager"]).tune(_context(tmp_path))

    assert built and all(b is built[0] for b in built)
    assert not built[0].active
    assert chosen.active


# --------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("atol, rtol", [(-1e-4, 1e-4), (1e-4, -1e-9), (-1.0, -1.0)])
def test_negative_tolerances_are_rejected(atol, rtol):
    with pytest.raises(ValueError, match=r"atol/rtol: expected non-negative tolerances"):
        FirstWinsStrategy(["eager"], atol=atol, rtol=rtol)
    with pytest.raises(ValueError, match=rf"atol={atol!r}, rtol={rtol!r}"):
        OneBackendStrategy("eager", atol=atol, rtol=rtol)


def test_zero_tolerances_are_allowed():
    strategy = OneBackendStrategy("eager", atol=0.0, rtol=0.0)

    assert (strategy.atol, strategy.rtol) == (0.0, 0.0)


@pytest.mark.parametrize("backends", [[], (), "eager", EagerBackend()])
def test_first_wins_needs_a_non_empty_list(backends):
    with pytest.raises(ValueError, match="backends: expected a non-empty list of backend names or instances"):
        FirstWinsStrategy(backends)


def test_resolve_backend_rejects_an_object_that_is_neither_a_name_nor_a_backend():
    with pytest.raises(TypeError, match="backend: expected a registered backend name or a Backend instance, got int"):
        resolve_backend(3)
    with pytest.raises(TypeError, match="got the class EagerBackend; pass an instance"):
        OneBackendStrategy(EagerBackend)  # the class, not an instance
    with pytest.raises(TypeError, match="got NoneType"):
        FirstWinsStrategy(["eager", None])


def test_resolve_backend_rejects_an_unknown_name_listing_registered_names():
    with pytest.raises(ValueError, match=r"backend: expected one of \[.*'onnxruntime'.*\], got 'onnx'"):
        resolve_backend("onnx")
    with pytest.raises(ValueError, match="got 'tensorrt'"):
        FirstWinsStrategy(["eager", "tensorrt"])


def test_resolve_backend_returns_a_fresh_copy_of_a_configured_instance():
    configured = OnnxRuntimeBackend(opset_version=17)

    resolved = resolve_backend(configured)

    assert type(resolved) is OnnxRuntimeBackend and resolved is not configured
    assert resolved.options == {"opset_version": 17}
    assert type(resolve_backend("eager")) is EagerBackend


def test_candidates_are_fresh_each_time():
    strategy = FirstWinsStrategy(["eager", OnnxRuntimeBackend(opset_version=18)])

    first, second = strategy.candidates(), strategy.candidates()

    assert [b.name for b in first] == ["eager", "onnxruntime"]
    assert all(a is not b for a, b in zip(first, second))
    assert first[1].options == {"opset_version": 18}
    assert strategy.describe() == "FirstWinsStrategy([eager, onnxruntime(opset_version=18)])"


def test_default_strategy_measures_every_cpu_candidate_and_falls_back_to_eager():
    strategy = default_strategy()
    names = [backend.name for backend in strategy.candidates()]

    assert isinstance(strategy, MinLatencyStrategy)
    assert {"aoti", "onnxruntime"} <= set(names) and names[-1] == "eager"
    assert strategy.speed_margin == 0.01
    assert all(backend.options.get("precision", "fp32") == "fp32" for backend in strategy.candidates())


def test_compare_outputs_reports_a_shape_mismatch():
    mismatches, _ = compare_outputs([torch.zeros(2, 3)], [torch.zeros(3, 2)], ["hidden.0"], 1e-4, 1e-4, "sample 4: ")

    assert mismatches == ["sample 4: hidden.0: shape (3, 2) != eager (2, 3)"]


def test_compare_outputs_reports_a_dtype_mismatch():
    mismatches, _ = compare_outputs([torch.zeros(2)], [torch.zeros(2, dtype=torch.float64)], ["logits"], 1e-4, 1e-4)

    assert mismatches == ["logits: dtype torch.float64 != eager torch.float32"]


def test_compare_outputs_reports_a_value_mismatch_with_the_max_abs_diff():
    reference = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0])]
    actual = [torch.tensor([0.0, 1.5, 2.0]), torch.tensor([1.0])]

    mismatches, worst = compare_outputs(reference, actual, ["output.0", "output.1"], atol=0.1, rtol=0.01)

    assert mismatches == ["output.0: max abs diff 0.5 exceeds atol=0.1 + rtol=0.01*|eager|"]
    assert worst == pytest.approx(0.5)


def test_compare_outputs_uses_relative_tolerance_scaled_by_the_eager_value():
    reference = [torch.tensor([1000.0])]

    ok, _ = compare_outputs(reference, [torch.tensor([1000.9])], ["x"], atol=0.0, rtol=1e-3)
    bad, _ = compare_outputs(reference, [torch.tensor([1001.1])], ["x"], atol=0.0, rtol=1e-3)

    assert ok == []
    assert len(bad) == 1 and bad[0].startswith("x: max abs diff 1.1")


def test_compare_outputs_counts_differing_integer_values():
    mismatches, worst = compare_outputs([torch.tensor([1, 2, 3, 4])], [torch.tensor([1, 0, 3, 0])], ["ids"], 1.0, 1.0)

    assert mismatches == ["ids: 2 of 4 values differ"]
    assert worst == float("inf")


def test_compare_outputs_reports_a_different_number_of_outputs():
    mismatches, worst = compare_outputs([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], ["a", "b"], 1e-4, 1e-4, "s0: ")

    assert mismatches == ["s0: expected 2 output tensors, got 1"]
    assert worst == float("inf")


def test_compare_outputs_reports_nan_where_eager_has_a_number():
    mismatches, _ = compare_outputs([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, float("nan")])], ["x"], 1e-4, 1e-4)

    assert len(mismatches) == 1 and mismatches[0].startswith("x: max abs diff")


def test_raise_on_mismatch_lists_every_mismatch():
    raise_on_mismatch("onnxruntime", [])  # nothing to report: no error

    with pytest.raises(OutputMismatchError) as info:
        raise_on_mismatch("onnxruntime", ["sample 0: a: bad", "sample 1: b: worse"])

    assert info.value.mismatches == ["sample 0: a: bad", "sample 1: b: worse"]
    assert str(info.value) == "onnxruntime: outputs differ from eager\n  sample 0: a: bad\n  sample 1: b: worse"


def test_measure_latency_runs_once_to_warm_up_then_repeats():
    calls = []

    latency = measure_latency_ms(lambda: calls.append(1), repeats=5)

    assert len(calls) == 6
    assert latency >= 0.0


# ------------------------------------------------------------------- seams and typed options
def test_a_registered_backend_that_declares_default_candidates_joins_the_default_strategy():
    class Declaring(EagerBackend):
        @classmethod
        def default_candidates(cls) -> list[Backend]:
            return [cls()]

    name = _register(Declaring)
    names = [backend.name for backend in default_strategy().candidates()]

    assert name in names and names.index(name) < names.index("eager")  # before the eager fallback appended last
    assert names[:4] == ["onnxruntime", "onnxruntime", "aoti", "openvino"]  # the built-ins, in registration order (inductor: none)
    assert _register(EagerBackend) not in [backend.name for backend in default_strategy().candidates()]  # none by default


def test_backend_options_are_typed_frozen_and_stored_as_before():
    import dataclasses

    from aitune_triton.backends.aoti import AOTInductorOptions
    from aitune_triton.backends.onnxruntime import OnnxRuntimeOptions
    from aitune_triton.errors import InvalidArgumentError

    backend = OnnxRuntimeBackend(providers=["CPUExecutionProvider"], exporter="torchscript")
    assert backend.typed_options.providers == ("CPUExecutionProvider",) and backend.typed_options.exporter == "torchscript"
    assert backend.options == {"exporter": "torchscript", "providers": ["CPUExecutionProvider"]}  # defaults left out
    assert OnnxRuntimeOptions.from_dict(backend.options) == backend.typed_options
    with pytest.raises(dataclasses.FrozenInstanceError):
        backend.typed_options.exporter = "dynamo"  # type: ignore[misc]
    with pytest.raises(InvalidArgumentError, match=r"OnnxRuntimeBackend: unknown option 'graph_level' .*graph_optimization_level"):
        OnnxRuntimeOptions.from_dict({"graph_level": "basic"})
    with pytest.raises(InvalidArgumentError, match=r"option 'intra_op_num_threads' must be None or an int >= 1, got 0"):
        OnnxRuntimeOptions.from_dict({"intra_op_num_threads": 0})
    with pytest.raises(InvalidArgumentError, match=r"aoti: option 'freezing' must be True or False, got 'yes'"):
        AOTInductorOptions.from_dict({"freezing": "yes"})
    assert AOTInductorOptions.from_dict({}).to_dict() == {"freezing": False}


def test_the_candidates_are_built_for_a_widened_copy_and_the_graph_spec_changes_once_at_the_end(tmp_path):
    seen = []

    def recording_build(self, context):
        seen.append((context.graph, dict(context.graph.dims), dict(graph.dims)))
        return EagerBackend._build(self, context)

    context = _context(tmp_path, batches=(1, 3))
    graph = context.graph
    graph.batch_independent = True
    recorded = dict(graph.dims)
    assert recorded == {"batch": DimRange(1, 3, 3)}  # opt: the size recorded most often (a tie: the larger)
    OneBackendStrategy(_register(EagerBackend, _build=recording_build), max_batch_size_limit=8).tune(context)

    ((built_for, built_dims, shared_dims_during_build),) = seen
    assert built_for is not graph and built_dims["batch"].bounds == (1, 8)  # built for the sweep limit, on a copy
    assert shared_dims_during_build == recorded  # the shared graph spec kept its recorded range meanwhile
    preferred = graph.preferred_batch_size  # measured: where the kept candidate's throughput stopped growing
    assert graph.dims == ({"batch": DimRange(1, preferred, max(3, preferred))} if preferred is not None else recorded)


def test_a_report_dict_holds_plain_status_strings_that_torch_load_weights_only_reads_back(tmp_path):
    from aitune_triton.strategies import CandidateReport, CandidateStatus

    report = GraphTuneReport("g", "s", "eager", 1.0, [CandidateReport("x", CandidateStatus.TOO_SLOW)], eager=CandidateReport("eager", "reference"))
    data = report.to_dict()
    torch.save({"report": data}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["report"]

    assert type(loaded["candidates"][0]["status"]) is str and loaded["candidates"][0]["status"] == "too slow"
    assert GraphTuneReport.from_dict(loaded).candidates[0].status is CandidateStatus.TOO_SLOW
