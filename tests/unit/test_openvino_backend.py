"""The OpenVINO backend: fp32 against eager on a tiny net and a tiny transformer-like net over
their recorded ranges, int8 (NNCF) within a cosine tolerance, bf16 refused on CPUs without native
bf16, option refusals, the checkpoint round trip, and its native target's signature and settings."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from aitune_triton import MinLatencyStrategy, Module, _cpu
from aitune_triton.backends import Backend, LoadContext, OpenVINOBackend
from aitune_triton.backends.openvino_options import OPENVINO_TARGET, openvino_settings
from aitune_triton.errors import BackendBuildError, BackendUnavailableError, InvalidArgumentError
from aitune_triton.module.recording import Recorder
from aitune_triton.served.runtimes.openvino import Runtime, compile_properties
from aitune_triton.spec import ForwardSignature, flatten_call
from aitune_triton.strategies import default_candidates
from nets import WideNet, build_on_recorded, eager, run_built


class TinyEncoder(torch.nn.Module):
    """Token ids and a mask (dynamic batch and sequence) -> one self-attention block, a dict out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embedding = torch.nn.Embedding(60, 32)
        self.qkv = torch.nn.Linear(32, 96)
        self.out = torch.nn.Linear(32, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        hidden = self.embedding(ids)
        q, k, v = self.qkv(hidden).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / 32**0.5 + (1.0 - mask[:, None, :]) * -1e4
        hidden = self.norm(hidden + self.out(torch.softmax(scores, dim=-1) @ v))
        hidden = self.norm(hidden + self.ffn(hidden))
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return {"hidden": hidden, "pooled": pooled}


ENCODER_SHAPES = ((1, 4), (3, 11), (2, 16), (4, 7))


def _encoder_call(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (batch, length), generator=generator)
    mask = torch.ones(batch, length)
    mask[0, length // 2 + 1 :] = 0.0
    return ids, mask


_build = build_on_recorded
_run = run_built


@pytest.fixture(scope="module")
def encoder_built(tmp_path_factory):
    net = TinyEncoder().eval()
    calls = [_encoder_call(b, n, seed) for seed, (b, n) in enumerate(ENCODER_SHAPES)]
    backend = OpenVINOBackend()
    context, lines = _build(backend, net, calls, tmp_path_factory.mktemp("encoder"))
    return net, calls, backend, context, lines


def test_fp32_matches_eager_on_every_recorded_call_and_on_unrecorded_sizes_inside_the_range(encoder_built):
    net, calls, backend, context, _ = encoder_built
    reference = eager(net)

    for ids, mask in [*calls, _encoder_call(3, 5, seed=9), _encoder_call(1, 16, seed=10)]:
        with torch.no_grad():
            want = reference(ids, mask)
        got = _run(backend, context, ids, mask)
        assert len(got) == 2
        torch.testing.assert_close(got[0], want["hidden"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[1], want["pooled"], atol=1e-4, rtol=1e-4)


def test_the_ir_is_dynamic_within_the_graph_spec_ranges_and_names_its_tensors_by_position(encoder_built):
    _, _, backend, context, _ = encoder_built
    import openvino

    model = openvino.Core().read_model(str(backend.artifacts["model"]))

    assert [sorted(p.get_names()) for p in model.inputs] == [["input_0"], ["input_1"]]
    assert [sorted(p.get_names()) for p in model.outputs] == [["output_0"], ["output_1"]]
    assert [str(p.get_partial_shape()) for p in model.inputs] == ["[1..4,4..16]"] * 2
    assert sorted(p.name for p in backend.artifacts["model"].parent.iterdir()) == ["model.bin", "model.xml"]
    signature = OPENVINO_TARGET.signature(backend.artifacts["model"], context.graph.to_dict())
    assert [(t.name, t.dtype) for t in signature.inputs] == [("input_0", "int64"), ("input_1", "float32")]
    assert [(t.name, t.dtype) for t in signature.outputs] == [("output_0", "float32"), ("output_1", "float32")]


def test_the_input_contract_comes_from_the_exported_program(encoder_built):
    _, _, backend, _, _ = encoder_built

    ids_axes, mask_axes = backend.input_axes
    assert ids_axes[1] == mask_axes[1] and isinstance(ids_axes[1], str)  # the model ties the token axes
    assert backend.index_ranges[0][0]["size"] == 60  # ids index the 60-row table


def test_measured_threads_are_stored_logged_and_round_trip_through_to_dict_and_from_dict(encoder_built):
    net, calls, backend, context, lines = encoder_built

    assert backend.options["inference_num_threads"] in {1, os.cpu_count()}
    if os.cpu_count() and os.cpu_count() > 1:
        (line,) = [line for line in lines if "measured INFERENCE_NUM_THREADS" in line]
        assert f"chose {backend.options['inference_num_threads']}" in line
        assert "over the recorded shapes smallest, typical, largest (geometric mean" in line  # not the largest call alone
    data = json.loads(json.dumps(backend.to_dict()))
    assert set(data["artifacts"]) == {"model", "weights"}
    restored = Backend.from_dict(
        data, LoadContext(net, context.graph, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()})
    )
    assert isinstance(restored, OpenVINOBackend) and restored.options == backend.options
    assert restored.input_axes == backend.input_axes
    for g, w in zip(_run(restored, context, *calls[1]), _run(backend, context, *calls[1])):
        assert torch.equal(g, w)
    assert backend.clone().options == {} and not backend.clone().active


@pytest.mark.skipif(_cpu.native_bf16(), reason="this CPU computes bf16 natively")
def test_a_bf16_checkpoint_loads_on_a_cpu_without_native_bf16_and_runs_in_f32_with_a_warning(encoder_built, caplog):
    net, calls, backend, context, _ = encoder_built
    data = json.loads(json.dumps(backend.to_dict()))
    data["options"] = {**data["options"], "precision": "bf16"}  # a bf16 build is the f32 IR compiled with the bf16 hint

    with caplog.at_level(logging.WARNING, logger="aitune_triton.backends.openvino"):
        restored = Backend.from_dict(
            data, LoadContext(net, context.graph, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()})
        )

    assert restored.options["precision"] == "bf16"
    assert any("runs in f32 here" in record.getMessage() for record in caplog.records)
    for g, w in zip(_run(restored, context, *calls[1]), _run(backend, context, *calls[1])):
        assert torch.equal(g, w)


def test_the_served_runtime_compiles_with_the_same_properties_and_returns_the_same_outputs(encoder_built):
    _, calls, backend, context, _ = encoder_built
    options = backend.options

    properties = compile_properties(options)
    runtime = Runtime(str(backend.artifacts["model"]), False, 0, options)
    try:
        served = runtime.run([t.numpy() for t in calls[2]])
    finally:
        runtime.close()

    assert properties == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                          "INFERENCE_NUM_THREADS": options["inference_num_threads"]}
    for g, w in zip(served, _run(backend, context, *calls[2])):
        assert torch.equal(torch.from_numpy(g), w)
    assert compile_properties({**options, "intra_op_num_threads": 3})["INFERENCE_NUM_THREADS"] == 3  # the export's threads win


def test_int8_quantizes_with_nncf_on_the_recorded_calls_and_stays_close_to_eager(tmp_path, monkeypatch):
    net = TinyEncoder().eval()
    calls = [_encoder_call(b, n, seed) for seed, (b, n) in enumerate(ENCODER_SHAPES * 3)]
    backend = OpenVINOBackend(precision="int8", inference_num_threads=1)
    context, lines = _build(backend, net, calls, tmp_path)

    assert backend.options == {"precision": "int8", "inference_num_threads": 1}
    assert any("int8 post-training quantization" in line and "model_type=TRANSFORMER" in line for line in lines)
    import openvino

    ops = {op.get_type_name() for op in openvino.Core().read_model(str(backend.artifacts["model"])).get_ops()}
    assert "FakeQuantize" in ops  # it is the quantized model that was saved
    ids, mask = _encoder_call(3, 9, seed=21)  # a shape never recorded
    with torch.no_grad():
        want = eager(net)(ids, mask)["hidden"]
    got = _run(backend, context, ids, mask)[0]
    cosine = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=-1)
    assert cosine.min() >= 0.99
    assert not torch.allclose(got, want, atol=1e-6)
    # Loading the int8 IR needs only openvino: nncf is for quantizing at build.
    data = json.loads(json.dumps(backend.to_dict()))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real_find_spec(name, *a))
    restored = Backend.from_dict(data, LoadContext(net, context.graph, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()}))
    assert torch.equal(_run(restored, context, ids, mask)[0], got)


def test_int8_on_a_net_without_attention_is_quantized_as_a_plain_model(tmp_path):
    net = WideNet().eval()
    generator = torch.Generator().manual_seed(5)
    calls = [(torch.randn(batch, 64, generator=generator),) for batch in (1, 4, 8, 16)]
    backend = OpenVINOBackend(precision="int8", inference_num_threads=1)
    context, lines = _build(backend, net, calls, tmp_path)

    assert any("int8 post-training quantization" in line and "TRANSFORMER" not in line for line in lines)
    x = torch.randn(6, 64, generator=generator)
    with torch.no_grad():
        want = eager(net)(x)
    (got,) = _run(backend, context, x)
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= 0.98


@pytest.mark.skipif(_cpu.native_bf16(), reason="this CPU computes bf16 natively")
def test_bf16_without_native_bf16_is_unavailable_with_the_cpu_reason_before_anything_is_written(tmp_path):
    backend = OpenVINOBackend(precision="bf16")

    with pytest.raises(BackendUnavailableError) as info:
        _build(backend, WideNet().eval(), [(torch.randn(2, 64),)], tmp_path)

    assert str(info.value) == _cpu.native_bf16_reason("openvino")
    assert not any(tmp_path.iterdir())


def test_a_cuda_device_is_unavailable():
    assert "CPU plugin only" in OpenVINOBackend.unavailable_reason(torch.device("cuda", 0))


def test_a_model_openvino_cannot_convert_is_a_build_error(tmp_path):
    class Fft(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return torch.fft.rfft(x).abs()  # complex tensors: no OpenVINO conversion

    with pytest.raises(BackendBuildError, match="openvino: "):
        _build(OpenVINOBackend(inference_num_threads=1), Fft().eval(), [(torch.randn(2, 8),)], tmp_path)


def test_a_model_openvino_cannot_convert_is_a_failed_candidate_with_the_reason_and_the_tune_goes_on(tmp_path):
    class Fft(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return torch.fft.rfft(x).abs()

    module = Module(Fft().eval(), name="openvino_fft_net", cache_dir=tmp_path,
                    strategy=MinLatencyStrategy([OpenVINOBackend(inference_num_threads=1), "eager"]))
    with torch.no_grad():
        for batch in (1, 3):
            module(torch.randn(batch, 8))
    module.tune()

    (graph,) = module.tuned_graphs
    report = {c.backend: c for c in graph.report.candidates}
    assert graph.backend.name == "eager"
    assert report["openvino"].status == "failed" and "openvino: " in report["openvino"].reason


@pytest.mark.parametrize(
    ("options", "named", "allowed"),
    [
        ({"precision": "fp16"}, "'precision'", "['fp32', 'bf16', 'int8']"),
        ({"precision": "f32"}, "'precision'", "['fp32', 'bf16', 'int8']"),
        ({"inference_num_threads": 0}, "'inference_num_threads'", "an int >= 1"),
        ({"inference_num_threads": 2.0}, "'inference_num_threads'", "an int >= 1"),
        ({"inference_num_threads": True}, "'inference_num_threads'", "an int >= 1"),
    ],
)
def test_bad_options_are_refused_naming_the_option_the_allowed_values_and_the_value_given(options, named, allowed):
    with pytest.raises(InvalidArgumentError) as info:
        OpenVINOBackend(**options)

    message = str(info.value)
    assert "OpenVINOBackend" in message and named in message and allowed in message
    assert f"got {next(iter(options.values()))!r}" in message


def test_an_unknown_stored_option_is_refused_on_load(tmp_path):
    data = {"name": "openvino", "options": {"threads": 2}, "device": "cpu", "artifacts": {}}
    net = WideNet().eval()
    recorder = Recorder(ForwardSignature.from_callable(net.forward))
    with torch.no_grad():
        recorder.record(net, (torch.randn(2, 64),), {})
    (graph,) = recorder.graph_specs()

    with pytest.raises(InvalidArgumentError, match="unknown option 'threads'"):
        Backend.from_dict(data, LoadContext(net, graph, torch.device("cpu"), {}))


def test_native_settings_name_the_triton_openvino_backend_parameters():
    assert openvino_settings({"inference_num_threads": 2}, None).parameters == {
        "PERFORMANCE_HINT": "LATENCY", "SKIP_OV_DYNAMIC_BATCHSIZE": "YES", "INFERENCE_NUM_THREADS": "2",
    }
    bf16 = openvino_settings({"precision": "bf16", "inference_num_threads": 2}, 1).parameters
    assert bf16["HINT_BF16"] == "YES" and bf16["INFERENCE_NUM_THREADS"] == "1"  # the export's threads win
    assert OPENVINO_TARGET.backend == "openvino" and OPENVINO_TARGET.default_model_filename == "model.xml"


@pytest.mark.parametrize("native", [True, False])
def test_native_settings_warn_that_an_fp32_or_int8_model_runs_in_bf16_on_a_cpu_with_native_bf16(native, monkeypatch, caplog):
    monkeypatch.setattr(_cpu, "native_bf16", lambda: native)

    with caplog.at_level(logging.WARNING, logger="aitune_triton.backends.openvino_options"):
        for options in ({}, {"precision": "int8"}, {"precision": "bf16"}):
            openvino_settings(options, 1)

    warned = [record.getMessage() for record in caplog.records if "target='python'" in record.getMessage()]
    assert len(warned) == (2 if native else 0)  # fp32 and int8; a bf16 model asks for bf16
    assert all("runs the model in bf16" in line for line in warned)


def test_the_default_candidates_on_cpu_include_openvino_fp32():
    assert any(isinstance(b, OpenVINOBackend) and b.options == {} for b in default_candidates())


def test_artifact_kinds_refuse_a_pickle_in_place_of_the_ir(tmp_path):
    pickle = tmp_path / "model.xml"
    torch.save({"a": 1}, pickle)
    assert "not an XML document" in OpenVINOBackend.artifact_problem("model", pickle)
    xml = tmp_path / "ok.xml"
    xml.write_text('<?xml version="1.0"?>\n<net name="m" version="11"></net>\n')
    assert OpenVINOBackend.artifact_problem("model", xml) is None
