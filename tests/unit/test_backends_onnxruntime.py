"""The ONNX Runtime backend's options: both exporters, measured and given session options, int8 and fp16."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch

from aitune_triton.backends import Backend, BuildContext, LoadContext, OnnxRuntimeBackend
from aitune_triton.backends.onnxruntime import session_options
from aitune_triton.errors import BackendUnavailableError, InvalidArgumentError
from aitune_triton.module.recording import Recorder
from aitune_triton.spec import ForwardSignature, flatten_call
from nets import WideNet, build_on_recorded, eager, run_built



class TokenNet(torch.nn.Module):
    """Token ids and a mask (dynamic batch and sequence, tied by the model) -> nested outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embedding = torch.nn.Embedding(50, 8)
        self.linear = torch.nn.Linear(8, 8)
        self.dropout = torch.nn.Dropout(0.5)  # in eval mode a no-op; any exporter that leaves it training shows

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        hidden = torch.tanh(self.dropout(self.linear(self.embedding(ids)))) * mask.unsqueeze(-1)
        pooled = hidden.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return {"hidden": hidden, "pooled": [pooled, pooled.norm(dim=-1)]}


TOKEN_SHAPES = ((1, 4), (3, 7), (2, 9))


def _token_call(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (batch, length), generator=generator)
    mask = (torch.rand(batch, length, generator=generator) > 0.2).float()
    return ids, mask


_build = build_on_recorded
_run = run_built


def _leaves(output) -> list[torch.Tensor]:
    return [output["hidden"], *output["pooled"]]


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def token_built(request, tmp_path_factory):
    """A TokenNet built with each exporter, session options measured."""
    net = TokenNet().eval()
    calls = [_token_call(b, n, seed) for seed, (b, n) in enumerate(TOKEN_SHAPES)]
    backend = OnnxRuntimeBackend(exporter=request.param)
    context, lines = _build(backend, net, calls, tmp_path_factory.mktemp(request.param))
    return net, calls, backend, context, lines


# ------------------------------------------------------------------------------------ exporters
def test_each_exporter_matches_eager_on_every_recorded_call_and_on_an_unrecorded_size_inside_the_range(token_built):
    net, calls, backend, context, _ = token_built
    reference = eager(net)

    for ids, mask in [*calls, _token_call(2, 5, seed=9)]:
        with torch.no_grad():
            want = _leaves(reference(ids, mask))
        got = _run(backend, context, ids, mask)
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_each_exporter_leaves_every_submodule_in_the_mode_it_was_in(token_built):
    net, calls, _, _, _ = token_built

    assert not any(module.training for module in net.modules())
    ids, mask = calls[0]
    with torch.no_grad():
        assert torch.equal(net(ids, mask)["hidden"], net(ids, mask)["hidden"])  # dropout off


def test_each_exporter_sets_the_input_contract_from_an_exported_program(token_built):
    _, _, backend, context, _ = token_built

    contract = backend.input_contract(context.graph)

    assert backend.input_axes is not None and len(backend.input_axes) == 2
    ids_axes, mask_axes = backend.input_axes
    assert ids_axes[1] == mask_axes[1] and isinstance(ids_axes[1], str)  # the model ties the token axes
    assert backend.index_ranges is not None and backend.index_ranges[0][0]["size"] == 50  # ids index the 50-row table
    assert contract.index_ranges is not None and contract.index_ranges[1] == []


def test_the_torchscript_export_names_each_dynamic_axis_after_its_graph_spec_dimension(tmp_path):
    net = TokenNet().eval()
    calls = [_token_call(b, n, seed) for seed, (b, n) in enumerate(TOKEN_SHAPES)]
    backend = OnnxRuntimeBackend(exporter="torchscript", graph_optimization_level="all", intra_op_num_threads=1)
    context, _ = _build(backend, net, calls, tmp_path)

    model = onnx.load(str(backend.artifacts["model"]))
    dims = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in [*model.graph.input, *model.graph.output]
    }
    ids_spec, mask_spec = context.graph.inputs
    assert dims["input_0"] == list(ids_spec.dim_names)  # ("batch", "<seq>"), shared by the mask
    assert dims["input_1"] == list(mask_spec.dim_names)
    assert dims["input_0"][1] == dims["input_1"][1]
    assert dims["output_0"] == [ids_spec.dim_names[0], ids_spec.dim_names[1], 8]


class BranchNet(torch.nn.Module):
    """A branch on a tensor's value: traced by TorchScript (one branch), refused by torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor):
        if x.sum() > 0:
            return self.linear(x)
        return -x


def test_a_torchscript_export_whose_module_torch_export_refuses_has_no_contract_beyond_the_ranges_and_says_so(tmp_path):
    net = BranchNet().eval()
    calls = [(torch.rand(batch, 4) + 1,) for batch in (1, 3)]
    backend = OnnxRuntimeBackend(exporter="torchscript", graph_optimization_level="all", intra_op_num_threads=1)

    context, lines = _build(backend, net, calls, tmp_path)

    assert backend.input_axes is None and backend.index_ranges is None
    assert "input_axes" not in backend.to_dict()
    (line,) = [line for line in lines if "torch.export.export failed" in line]
    assert "input contract holds the graph spec's ranges only" in line
    x = torch.rand(2, 4) + 1
    with torch.no_grad():
        want = eager(net)(x)
    (got,) = _run(backend, context, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- session options
def test_measured_session_options_are_stored_logged_and_round_trip_through_to_dict_and_from_dict(token_built):
    net, calls, backend, context, lines = token_built

    options = backend.options
    assert options["graph_optimization_level"] in ("basic", "extended", "all")
    assert options["intra_op_num_threads"] in {1, os.cpu_count()}
    (line,) = [line for line in lines if "measured session options" in line]
    assert "over the recorded shapes smallest, typical, largest (geometric mean" in line  # not the largest call alone
    assert f"graph_optimization_level={options['graph_optimization_level']!r}" in line
    assert f"intra_op_num_threads={options['intra_op_num_threads']}" in line
    data = json.loads(json.dumps(backend.to_dict()))
    assert data["options"] == options
    restored = Backend.from_dict(
        data, LoadContext(net, context.graph, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()})
    )
    assert isinstance(restored, OnnxRuntimeBackend) and restored.options == options
    ids, mask = calls[1]
    for g, w in zip(_run(restored, context, ids, mask), _run(backend, context, ids, mask)):
        assert torch.equal(g, w)


def test_a_clone_of_a_built_backend_keeps_the_given_options_and_measures_the_rest_again(token_built):
    _, _, backend, _, _ = token_built

    clone = backend.clone()

    assert "graph_optimization_level" in backend.options
    assert clone.options == ({"exporter": "torchscript"} if backend.options.get("exporter") == "torchscript" else {})
    assert not clone.active


def test_given_session_options_are_kept_and_not_measured(tmp_path):
    net = TokenNet().eval()
    calls = [_token_call(b, n, seed) for seed, (b, n) in enumerate(TOKEN_SHAPES)]
    backend = OnnxRuntimeBackend(graph_optimization_level="basic", intra_op_num_threads=1)

    _, lines = _build(backend, net, calls, tmp_path)

    assert backend.options == {"graph_optimization_level": "basic", "intra_op_num_threads": 1, "transformer_fusion": False}
    assert not [line for line in lines if "measured" in line]


def test_a_given_optimization_level_is_kept_while_the_threads_are_measured(tmp_path):
    net = TokenNet().eval()
    calls = [_token_call(b, n, seed) for seed, (b, n) in enumerate(TOKEN_SHAPES)]
    backend = OnnxRuntimeBackend(graph_optimization_level="disable")

    _, lines = _build(backend, net, calls, tmp_path)

    assert backend.options["graph_optimization_level"] == "disable"
    assert isinstance(backend.options["intra_op_num_threads"], int)
    measured = [line for line in lines if "measured session options" in line]
    if (os.cpu_count() or 1) > 1:  # one thread count to try on a one-core machine: nothing to measure
        (line,) = measured
        assert "disable/1t" in line and "basic/" not in line and "all/" not in line


def test_build_settings_are_timed_on_each_distinct_recorded_shape_and_scored_by_the_geometric_mean(monkeypatch):
    from aitune_triton.backends import build_timing

    net = TokenNet().eval()
    signature = ForwardSignature.from_callable(net.forward)
    calls = [flatten_call(signature, _token_call(b, n, seed), {}) for seed, (b, n) in enumerate(((1, 4), (1, 4), (2, 9), (3, 7)))]
    context = BuildContext(net, signature, None, calls[3], None, torch.device("cpu"), samples=calls)  # type: ignore[arg-type]
    shapes = build_timing.build_shapes(context)
    assert {label: tuple(call.flat.tensors[0].shape) for label, call in shapes.items()} == {
        "smallest": (1, 4), "typical": (2, 9), "largest": (3, 7),
    }
    one = BuildContext(net, signature, None, calls[0], None, torch.device("cpu"), samples=calls[:2])  # type: ignore[arg-type]
    assert list(build_timing.build_shapes(one)) == ["typical"]  # one recorded shape, timed once

    # Setting 0 is 4x faster at the small shape and a little slower at the large one: it wins on the
    # geometric mean (2.8 ms against 4.9 ms), though the largest call alone would pick setting 1.
    monkeypatch.setattr(build_timing, "MEASURE_SECONDS_PER_SETTING", 0.02)
    timed = build_timing.time_settings(
        [[lambda: time.sleep(0.001), lambda: time.sleep(0.008)], [lambda: time.sleep(0.004), lambda: time.sleep(0.006)]]
    )
    assert timed.best == 0 and timed.scores_ms[0] < timed.scores_ms[1]
    assert timed.runs >= build_timing.MEASURE_ROUNDS  # at least one timed run per shape and round


def test_session_options_in_process_and_in_the_served_runtime_are_the_same_function():
    from aitune_triton.backends import onnxruntime as backend_module
    from aitune_triton.served.runtimes import onnxruntime as served

    assert backend_module.session_options is served.session_options
    assert backend_module.load_session is served.load_session
    for options in ({}, {"graph_optimization_level": "extended", "intra_op_num_threads": 2}, {"graph_optimization_level": "disable"}):
        here = session_options(options)
        key = "session.intra_op.allow_spinning"
        assert here.get_session_config_entry(key) == "0" and here.inter_op_num_threads == 1
    extended = session_options({"graph_optimization_level": "extended", "intra_op_num_threads": 2})
    assert extended.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert extended.intra_op_num_threads == 2 and extended.inter_op_num_threads == 1


@pytest.mark.parametrize(
    ("options", "named", "allowed"),
    [
        ({"exporter": "jit"}, "'exporter'", "['dynamo', 'torchscript']"),
        ({"graph_optimization_level": "max"}, "'graph_optimization_level'", "'disable', 'basic', 'extended', 'all'"),
        ({"graph_optimization_level": 99}, "'graph_optimization_level'", "'disable', 'basic', 'extended', 'all'"),
        ({"intra_op_num_threads": 0}, "'intra_op_num_threads'", "an int >= 1"),
        ({"intra_op_num_threads": 2.0}, "'intra_op_num_threads'", "an int >= 1"),
        ({"intra_op_num_threads": True}, "'intra_op_num_threads'", "an int >= 1"),
        ({"precision": "bf16"}, "'precision'", "['fp32', 'fp16', 'int8']"),
        ({"precision": "float16"}, "'precision'", "['fp32', 'fp16', 'int8']"),
        ({"opset_version": "18"}, "'opset_version'", "an int >= 7"),
        ({"providers": "CPUExecutionProvider"}, "'providers'", "a non-empty list"),
        ({"providers": []}, "'providers'", "a non-empty list"),
    ],
)
def test_bad_options_are_refused_naming_the_option_the_allowed_values_and_the_value_given(options, named, allowed):
    with pytest.raises(InvalidArgumentError) as info:
        OnnxRuntimeBackend(**options)

    message = str(info.value)
    assert named in message and allowed in message
    assert f"got {next(iter(options.values()))!r}" in message


# ------------------------------------------------------------------------------------ precision
def test_int8_builds_runs_close_to_eager_and_its_served_file_is_smaller_than_fp32(tmp_path):
    net = WideNet().eval()
    generator = torch.Generator().manual_seed(5)
    calls = [(torch.randn(batch, 64, generator=generator),) for batch in (1, 4, 8)]
    fp32 = OnnxRuntimeBackend(graph_optimization_level="all", intra_op_num_threads=1)
    int8 = OnnxRuntimeBackend(precision="int8")
    fp32_context, _ = _build(fp32, net, calls, tmp_path / "fp32")
    int8_context, lines = _build(int8, net, calls, tmp_path / "int8")

    assert int8.options["precision"] == "int8" and "graph_optimization_level" in int8.options
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["model.onnx"]  # only the served artifact
    assert int8.artifacts["model"].stat().st_size < 0.5 * fp32.artifacts["model"].stat().st_size
    assert any("int8 dynamic quantization" in line for line in lines)
    ops = {node.op_type for node in onnx.load(str(int8.artifacts["model"])).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    x = torch.randn(6, 64, generator=generator)  # a batch size never recorded
    with torch.no_grad():
        want = eager(net)(x)
    (got,) = _run(int8, int8_context, x)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert cosine.min() >= 0.98
    assert not torch.allclose(got, want, atol=1e-6)  # it is the quantized model that ran


def test_fp16_on_cpu_is_unavailable_saying_to_use_int8_or_fp32(tmp_path):
    net = WideNet().eval()
    backend = OnnxRuntimeBackend(precision="fp16")

    with pytest.raises(BackendUnavailableError, match=r"precision 'fp16' needs a CUDA device, got 'cpu'.*use precision='int8' or 'fp32'"):
        _build(backend, net, [(torch.randn(2, 64),)], tmp_path)
    assert not any(tmp_path.iterdir())  # refused before exporting


def test_an_fp16_description_loaded_on_cpu_is_unavailable(tmp_path):
    net = WideNet().eval()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        recorder.record(net, (torch.randn(2, 64),), {})
    (graph,) = recorder.graph_specs()
    data = {"name": "onnxruntime", "options": {"precision": "fp16"}, "device": "cuda:0", "artifacts": {}}

    with pytest.raises(BackendUnavailableError, match="precision 'fp16' needs a CUDA device"):
        Backend.from_dict(data, LoadContext(net, graph, torch.device("cpu"), {"model": tmp_path / "model.onnx"}))
