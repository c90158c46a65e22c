"""The ONNX Runtime backend's transformer fusions and static int8, on a tiny BERT built offline and a tiny CNN."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from transformers import BertConfig, BertModel

from aitune_triton.backends import Backend, BuildContext, LoadContext, OnnxRuntimeBackend
from aitune_triton.backends.onnxruntime_options import OnnxRuntimeOptions
from aitune_triton.backends.onnxruntime_quantize import static_quantized_nodes
from aitune_triton.backends.serving import onnx_signature, onnxruntime_settings
from aitune_triton.errors import BackendBuildError, InvalidArgumentError
from aitune_triton.module.recording import Recorder
from aitune_triton.spec import ForwardSignature, flatten_call
from nets import eager

FUSED_OPS = {"Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "BiasGelu", "Gelu", "FastGelu"}
BERT_SHAPES = ((1, 5), (3, 12), (2, 16))


def tiny_bert() -> BertModel:
    """A 2-layer BERT with a 32-wide hidden state (random weights: nothing downloaded)."""
    torch.manual_seed(11)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=32)  # fmt: skip
    return BertModel(config).eval()


def bert_call(batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 64, (batch, length), generator=generator), "attention_mask": torch.ones(batch, length, dtype=torch.long)}


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def build(backend: OnnxRuntimeBackend, net: torch.nn.Module, calls: list[dict], workdir: Path) -> tuple[BuildContext, list[str]]:
    """Record ``calls`` (keyword arguments), build ``backend`` with every recorded call as a sample."""
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for kwargs in calls:
            recorder.record(net, (), kwargs)
    (graph,) = recorder.graph_specs()
    largest = recorder.largest_sample(graph)
    samples = [flatten_call(signature, s.args, s.kwargs) for s in recorder.samples(graph)]
    lines: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    context = BuildContext(
        net, signature, graph, flatten_call(signature, largest.args, largest.kwargs), workdir, torch.device("cpu"),
        log=lines.append, samples=samples,
    )  # fmt: skip
    backend.build(context)
    return context, lines


def hidden_state(backend: Backend, context: BuildContext, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return backend.infer(flatten_call(context.signature, (), kwargs))[0]


def ops(backend: Backend) -> set[str]:
    return {node.op_type for node in onnx.load(str(backend.artifacts["model"])).graph.node}


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_required_fusion_on_a_tiny_bert_is_recognised_and_matches_eager(exporter, tmp_path):
    net = tiny_bert()
    calls = [bert_call(b, n, seed) for seed, (b, n) in enumerate(BERT_SHAPES)]
    backend = OnnxRuntimeBackend(exporter=exporter, transformer_fusion=True, graph_optimization_level="all", intra_op_num_threads=1)

    context, lines = build(backend, net, calls, tmp_path)

    assert backend.options["transformer_fusion"] is True
    assert ops(backend) & FUSED_OPS  # the served file is the fused graph
    (line,) = [line for line in lines if "transformer optimizer fused" in line]
    assert "SkipLayerNormalization" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    for kwargs in [*calls, bert_call(2, 9, seed=7)]:  # (2, 9) never recorded
        with torch.no_grad():
            want = eager(net)(**kwargs).last_hidden_state
        torch.testing.assert_close(hidden_state(backend, context, kwargs), want, atol=1e-4, rtol=1e-4)


def test_fusion_left_to_measurement_on_a_tiny_bert_measures_both_graphs_and_stores_the_choice(tmp_path):
    net = tiny_bert()
    calls = [bert_call(b, n, seed) for seed, (b, n) in enumerate(BERT_SHAPES)]
    backend = OnnxRuntimeBackend(exporter="torchscript", intra_op_num_threads=1)

    context, lines = build(backend, net, calls, tmp_path)

    chosen = backend.options["transformer_fusion"]
    assert isinstance(chosen, bool)
    (line,) = [line for line in lines if "measured session options" in line]
    assert "fused/all/1t" in line and " all/1t" in line and f"transformer_fusion={chosen}" in line
    assert bool(ops(backend) & {"SkipLayerNormalization", "BiasGelu"}) == chosen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    data = json.loads(json.dumps(backend.to_dict()))
    restored = Backend.from_dict(data, LoadContext(net, context.graph, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()}))
    assert restored.options == backend.options
    kwargs = bert_call(3, 7, seed=8)
    assert torch.equal(hidden_state(restored, context, kwargs), hidden_state(backend, context, kwargs))
    assert backend.clone().options == {"exporter": "torchscript", "intra_op_num_threads": 1}  # measured again


def test_a_required_fusion_on_a_cnn_fails_with_the_reason(tmp_path):
    net = TinyCNN().eval()
    backend = OnnxRuntimeBackend(transformer_fusion=True, graph_optimization_level="all", intra_op_num_threads=1)

    with pytest.raises(BackendBuildError, match=r"transformer_fusion=True but .*not a recognised transformer.*transformer_fusion=None"):
        build(backend, net, [{"x": torch.randn(2, 3, 8, 8)}], tmp_path)


def test_fusion_left_to_measurement_on_a_cnn_builds_the_plain_graph_and_says_so(tmp_path):
    net = TinyCNN().eval()
    backend = OnnxRuntimeBackend(graph_optimization_level="all", intra_op_num_threads=1)
    x = torch.randn(3, 3, 8, 8)

    context, lines = build(backend, net, [{"x": torch.randn(2, 3, 8, 8)}, {"x": x}], tmp_path)

    assert backend.options["transformer_fusion"] is False
    assert any("transformer fusion not applied" in line and "not a recognised transformer" in line for line in lines)
    assert not [line for line in lines if "measured" in line]  # one graph, given options: nothing to measure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with torch.no_grad():
        (got,) = backend.infer(flatten_call(context.signature, (x,), {}))
    torch.testing.assert_close(got, eager(net)(x), atol=1e-5, rtol=1e-5)


def test_a_fused_graph_that_cannot_be_saved_falls_back_to_the_exported_graph(tmp_path, monkeypatch):
    from onnxruntime.transformers import optimizer

    def too_large(*args, **kwargs):
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    def optimize_model(*args, **kwargs):
        optimized = real_optimize_model(*args, **kwargs)
        optimized.save_model_to_file = too_large
        return optimized

    real_optimize_model = optimizer.optimize_model
    monkeypatch.setattr(optimizer, "optimize_model", optimize_model)
    net = tiny_bert()
    backend = OnnxRuntimeBackend(graph_optimization_level="all", intra_op_num_threads=1)
    kwargs = bert_call(2, 9, seed=3)

    context, lines = build(backend, net, [bert_call(1, 5, seed=1), kwargs], tmp_path)

    assert backend.options["transformer_fusion"] is False
    assert any("transformer fusion not applied" in line and "could not be saved" in line and "2GB" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert not ops(backend) & {"Attention", "MultiHeadAttention", "SkipLayerNormalization"}  # the exported graph, unfused
    with torch.no_grad():
        want = eager(net)(**kwargs).last_hidden_state
    torch.testing.assert_close(hidden_state(backend, context, kwargs), want, atol=1e-4, rtol=1e-4)


def test_static_int8_after_failed_pre_processing_leaves_only_the_model_in_the_artifact_folder(tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as shape_inference

    def fails(*args, **kwargs):
        raise RuntimeError("pre-processing failed")

    monkeypatch.setattr(shape_inference, "quant_pre_process", fails)
    net = TinyCNN().eval()
    backend = OnnxRuntimeBackend(precision="int8", quantization="static", transformer_fusion=False,
                                 graph_optimization_level="all", intra_op_num_threads=1)  # fmt: skip

    build(backend, net, [{"x": torch.randn(2, 3, 8, 8)}, {"x": torch.randn(3, 3, 8, 8)}], tmp_path)

    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(backend)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_static_int8_on_a_fused_tiny_bert_is_calibrated_keeps_the_gelu_readers_in_float_and_stays_close_to_eager(tmp_path):
    net = tiny_bert()
    calls = [bert_call(b, n, seed) for seed, (b, n) in enumerate(BERT_SHAPES)]
    backend = OnnxRuntimeBackend(precision="int8", quantization="static", transformer_fusion=True, intra_op_num_threads=1)

    context, lines = build(backend, net, calls, tmp_path)

    assert backend.options["quantization"] == "static" and backend.options["precision"] == "int8"
    model = onnx.load(str(backend.artifacts["model"]))
    found = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= found and "DynamicQuantizeLinear" not in found
    assert found & FUSED_OPS  # quantized after fusion
    (line,) = [line for line in lines if "int8 static quantization" in line]
    assert "on 3 recorded samples" in line and "4 around a GELU kept in float32" in line  # up and down, 2 layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    # Triton's own ONNX Runtime backend reads the same file: its signature and settings are the plain graph's.
    signature = onnx_signature(backend.artifacts["model"], {})
    assert [(t.name, t.dtype) for t in signature.inputs] == [("input_0", "int64"), ("input_1", "int64")]
    assert [(t.name, t.dtype) for t in signature.outputs][0] == ("output_0", "float32")
    assert onnxruntime_settings(backend.options, None).parameters == {"intra_op_thread_count": "1"}
    kwargs = bert_call(4, 11, seed=9)
    with torch.no_grad():
        want = eager(net)(**kwargs).last_hidden_state
    got = hidden_state(backend, context, kwargs)
    assert not torch.allclose(got, want, atol=1e-5)  # the quantized graph ran
    assert torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1)).min() >= 0.98


def test_static_quantization_keeps_the_matmuls_around_an_erf_gelu_and_quantizes_only_constant_weights():
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["projected"], name="projection"),
        helper.make_node("MatMul", ["projected", "w"], ["up"], name="up"),
        helper.make_node("Add", ["up", "w"], ["biased"], name="bias"),
        helper.make_node("Erf", ["biased"], ["erf"], name="erf"),
        helper.make_node("Mul", ["erf", "up"], ["gelu"], name="gelu"),
        helper.make_node("MatMul", ["gelu", "w"], ["down"], name="down"),
        helper.make_node("MatMul", ["down", "x"], ["scores"], name="scores"),  # activation x activation
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [4, 4])], [weight])  # fmt: skip

    assert static_quantized_nodes(helper.make_model(graph)) == (["projection"], ["up", "down"])


@pytest.mark.parametrize(
    ("options", "named", "allowed"),
    [
        ({"transformer_fusion": "yes"}, "'transformer_fusion'", "None, True or False"),
        ({"transformer_fusion": 1}, "'transformer_fusion'", "None, True or False"),
        ({"quantization": "qdq"}, "'quantization'", "['dynamic', 'static']"),
        ({"quantization": "static"}, "'quantization'", "unless precision='int8'"),
    ],
)
def test_bad_fusion_and_quantization_options_are_refused_naming_the_option(options, named, allowed):
    with pytest.raises(InvalidArgumentError) as info:
        OnnxRuntimeBackend(**options)

    message = str(info.value)
    assert named in message and allowed in message and f"got {next(iter(options.values()))!r}" in message


def test_fusion_and_quantization_options_round_trip_and_defaults_are_not_stored():
    options = OnnxRuntimeOptions(precision="int8", quantization="static", transformer_fusion=False)

    assert options.to_dict() == {"precision": "int8", "transformer_fusion": False, "quantization": "static"}
    assert OnnxRuntimeOptions.from_dict(options.to_dict()) == options
    assert OnnxRuntimeOptions().to_dict() == {} and OnnxRuntimeOptions(quantization="dynamic").to_dict() == {}
