"""Backends: the registry, and eager/ONNX Runtime/AOTInductor backends built by a strategy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aitune_triton._versions import build_environment
from aitune_triton.backends import (
    AOTInductorBackend,
    Backend,
    EagerBackend,
    LoadContext,
    OnnxRuntimeBackend,
    backend_names,
    get_backend_class,
    register_backend,
)
from aitune_triton.backends.flat import FlatModule, export_dynamic_shapes
from aitune_triton.errors import ModuleStateError
from aitune_triton.module.recording import Recorder
from aitune_triton.spec import ForwardSignature, flatten_call
from aitune_triton.strategies import OneBackendStrategy, TuneContext
from nets import eager


class SmallNet(torch.nn.Module):
    """x: (batch, 6) -> (batch, 5) and its row sums."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(6, 5)

    def forward(self, x, bias: float = 0.0):
        out = torch.tanh(self.linear(x)) + bias
        return out, out.sum(-1)


def _context(module, calls, workdir: Path) -> TuneContext:
    """Record ``calls`` (``[(args, kwargs)]``, one input structure) and build the TuneContext of the spec."""
    signature = ForwardSignature.from_callable(module.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for args, kwargs in calls:
            recorder.record(module, args, kwargs)
    (graph,) = recorder.graph_specs()
    samples = [flatten_call(signature, s.args, s.kwargs) for s in recorder.samples(graph)]
    largest = recorder.largest_sample(graph)
    example = flatten_call(signature, largest.args, largest.kwargs)
    return TuneContext(module, signature, graph, samples, example, workdir, torch.device("cpu"))


def _eager(module, *args, **kwargs) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(module(*args, **kwargs))


def _infer(backend: Backend, context: TuneContext, *args, **kwargs) -> list[torch.Tensor]:
    with torch.no_grad():
        return backend.infer(flatten_call(context.signature, args, kwargs))


@pytest.fixture(scope="module")
def onnx_built(tmp_path_factory):
    """One ONNX Runtime backend over batch sizes 1..8 (recorded: 1, 2, 8), shared by the tests below."""
    net = SmallNet().eval()
    context = _context(net, [((torch.randn(b, 6),), {}) for b in (2, 8, 1)], tmp_path_factory.mktemp("onnx"))
    backend, report = OneBackendStrategy("onnxruntime").tune(context)
    return net, context, backend, report


# ---------------------------------------------------------------------------------- registry
def test_builtin_backends_are_registered_by_name():
    assert {"eager", "onnxruntime", "aoti"} <= set(backend_names())
    assert backend_names() == sorted(backend_names())
    assert get_backend_class("eager") is EagerBackend
    assert get_backend_class("onnxruntime") is OnnxRuntimeBackend
    assert get_backend_class("aoti") is AOTInductorBackend


def test_registering_another_class_under_a_taken_name_raises_value_error():
    class OtherEager(EagerBackend):
        name = "eager"

    with pytest.raises(ValueError, match="backend name 'eager' is already registered by aitune_triton.backends.eager.EagerBackend"):
        register_backend(OtherEager)

    assert get_backend_class("eager") is EagerBackend


def test_registering_the_same_class_twice_is_allowed():
    class Twice(EagerBackend):
        name = "test_backends_twice"

    assert register_backend(Twice) is Twice
    assert register_backend(Twice) is Twice
    assert get_backend_class("test_backends_twice") is Twice


def test_unknown_backend_name_error_lists_registered_names():
    with pytest.raises(ValueError) as info:
        get_backend_class("tensorrt_llm")

    message = str(info.value)
    assert "'tensorrt_llm'" in message
    for name in ("aoti", "eager", "onnxruntime"):
        assert repr(name) in message


# ------------------------------------------------------------------------------------- eager
def test_eager_backend_built_by_one_backend_strategy_runs_the_module(tmp_path):
    net = SmallNet().eval()
    context = _context(net, [((torch.randn(b, 6),), {"bias": 0.5}) for b in (1, 3)], tmp_path)

    backend, report = OneBackendStrategy("eager").tune(context)

    assert isinstance(backend, EagerBackend) and backend.active
    assert report.chosen == "eager"
    assert [(c.backend, c.status, c.max_abs_diff) for c in report.candidates] == [("eager", "chosen", 0.0)]
    x = torch.randn(7, 6)
    for got, want in zip(_infer(backend, context, x, bias=0.5), _eager(net, x, bias=0.5)):
        assert torch.equal(got, want)
    assert backend.to_dict() == {"name": "eager", "options": {}, "device": "cpu", "artifacts": {}, "built_on": build_environment("cpu")}


# ------------------------------------------------------------------------------- onnxruntime
def test_onnxruntime_backend_matches_eager_on_recorded_batch_sizes(onnx_built):
    net, context, backend, report = onnx_built

    assert isinstance(backend, OnnxRuntimeBackend) and backend.active
    assert report.chosen == "onnxruntime"
    assert report.candidates[0].status == "chosen"
    assert report.candidates[0].max_abs_diff < 1e-5
    assert backend.artifacts["model"] == context.workdir / "onnxruntime" / "model.onnx"
    assert backend.artifacts["model"].stat().st_size > 0
    for batch in (1, 2, 8):
        x = torch.randn(batch, 6)
        got, want = _infer(backend, context, x), _eager(net, x)
        assert [t.shape for t in got] == [(batch, 5), (batch,)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_onnxruntime_dynamic_batch_runs_a_batch_size_inside_the_range_that_was_never_recorded(onnx_built):
    net, context, backend, _ = onnx_built
    assert {name: dim.bounds for name, dim in context.graph.dims.items()} == {"batch": (1, 8)}
    x = torch.randn(5, 6)

    got, want = _infer(backend, context, x), _eager(net, x)

    assert got[0].shape == (5, 5) and got[1].shape == (5,)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_onnxruntime_backend_to_dict_from_dict_round_trip(onnx_built):
    net, context, backend, _ = onnx_built

    data = json.loads(json.dumps(backend.to_dict()))
    assert data == {
        "name": "onnxruntime",
        "options": {  # measured at build (tests/unit/test_backends_onnxruntime.py)
            "graph_optimization_level": data["options"]["graph_optimization_level"],
            "intra_op_num_threads": data["options"]["intra_op_num_threads"],
            "transformer_fusion": False,  # tried: not a recognised transformer
        },
        "device": "cpu",
        "artifacts": {"model": str(backend.artifacts["model"])},
        "input_axes": [[data["input_axes"][0][0], 6]],  # batch axis: a symbol; feature axis fixed at 6
        "index_ranges": [[]],  # a float input indexes nothing
        "built_on": build_environment("cpu"),  # torch version and device facts at build
    }
    assert isinstance(data["input_axes"][0][0], str)
    restored = Backend.from_dict(
        data,
        LoadContext(net, context.graph, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()}),
    )

    assert isinstance(restored, OnnxRuntimeBackend) and restored is not backend and restored.active
    assert restored.to_dict()["built_on"] == data["built_on"]  # kept, not re-read on this machine
    x = torch.randn(3, 6)
    for g, w in zip(_infer(restored, context, x), _eager(net, x)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_onnxruntime_options_survive_clone_and_to_dict():
    backend = OnnxRuntimeBackend(opset_version=18, providers=["CPUExecutionProvider"])

    clone = backend.clone()

    assert clone is not backend and clone.options == {"opset_version": 18, "providers": ["CPUExecutionProvider"]}
    assert clone.to_dict()["options"] == {"opset_version": 18, "providers": ["CPUExecutionProvider"]}
    assert not clone.active and clone.artifacts == {}


def test_onnxruntime_backend_deactivate_releases_the_session_and_activate_brings_it_back(onnx_built):
    net, context, backend, _ = onnx_built
    x = torch.randn(4, 6)
    before = _infer(backend, context, x)

    backend.deactivate()
    try:
        assert not backend.active
        with pytest.raises(ModuleStateError, match="onnxruntime backend is not active; call activate"):
            _infer(backend, context, x)
        backend.deactivate()  # a second deactivate is a no-op
        assert not backend.active
    finally:
        backend.activate()

    assert backend.active
    after = _infer(backend, context, x)
    for b, a in zip(before, after):
        assert torch.equal(b, a)


# ------------------------------------------------------------------------------------ export helpers
def test_export_dynamic_shapes_gives_each_dynamic_axis_its_own_hint_bounded_by_its_range(onnx_built):
    _, context, _, _ = onnx_built

    (per_input,) = export_dynamic_shapes(context.graph)

    assert len(per_input) == 1 and list(per_input[0]) == [0]
    dim = per_input[0][0]
    assert (dim, dim.min, dim.max) == (torch.export.Dim.DYNAMIC(min=1, max=8), 1, 8)


def test_flat_module_takes_tensors_in_flattening_order_and_keeps_constants(tmp_path):
    net = SmallNet().eval()
    context = _context(net, [((torch.randn(2, 6),), {"bias": 2.0})], tmp_path)
    flat = FlatModule(net, context.signature, context.example)
    x = torch.randn(3, 6)

    with torch.no_grad():
        got = flat(x)

    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, _eager(net, x, bias=2.0)):
        assert torch.equal(g, w)
    # one call: every axis static but the candidate batch axis (tuning keeps or drops it before building)
    (per_input,) = export_dynamic_shapes(context.graph)
    assert [list(axes) for axes in per_input] == [[0]]


# -------------------------------------------------------------------------------------- aoti
def test_aoti_backend_compiles_and_matches_eager_inside_the_recorded_range(tmp_path):
    net = SmallNet().eval()
    context = _context(net, [((torch.randn(b, 6),), {}) for b in (2, 6)], tmp_path)

    backend, report = OneBackendStrategy("aoti").tune(context)

    assert isinstance(backend, AOTInductorBackend) and report.chosen == "aoti"
    assert backend.artifacts["model"].name == "model.pt2" and backend.artifacts["model"].is_file()
    x = torch.randn(4, 6)  # never recorded
    for g, w in zip(_infer(backend, context, x), _eager(net, x)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    backend.deactivate()
    assert not backend.active
    backend.activate()
    torch.testing.assert_close(_infer(backend, context, x)[1], _eager(net, x)[1], atol=1e-5, rtol=1e-5)


def test_aoti_keeps_axes_apart_that_were_equal_in_every_recorded_call_and_exports_a_batch_range_of_1_to_2(tmp_path):
    from aitune_triton import Module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    module = Module(net, name="test_backends_square_aoti", strategy=OneBackendStrategy("aoti"), cache_dir=tmp_path)
    with torch.no_grad():
        for batch, side in ((1, 8), (2, 12), (1, 12)):  # square images only; batches 1 and 2 only
            module(torch.randn(batch, 3, side, side))
    module.tune()

    x = torch.randn(2, 3, 8, 12)  # never square-tied by the model itself
    with torch.no_grad():
        torch.testing.assert_close(module(x), eager(net)(x), atol=1e-5, rtol=1e-5)
        channels_last = torch.randn(2, 3, 12, 8).to(memory_format=torch.channels_last)
        torch.testing.assert_close(module(channels_last), eager(net)(channels_last), atol=1e-5, rtol=1e-5)
