"""config.pbtxt messages: graph models, the entry (router) model and deployment options.

The IO mappings come from a real module recorded and tuned with ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from nets import TwoInputNet
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton import Module, OneBackendStrategy
from aitune_triton.errors import ExportError
from aitune_triton.triton.config import (
    ROUTES_PARAMETER,
    TritonModelOptions,
    graph_model_config,
    model_config_text,
    read_model_config,
    router_model_config,
    write_model_config,
)
from aitune_triton.triton.io import ModelIO



class _Sequence(torch.nn.Module):
    """Each sample's outputs depend on the batch (its mean), so one recorded batch size stays fixed."""

    def forward(self, tokens):
        return {"doubled": tokens * 2 - tokens.mean(0), "total": tokens.sum(-1)}


@pytest.fixture(scope="module")
def ios(tmp_path_factory):
    """ModelIO of four real graph specs.

    ``with_y``: (x, y); ``x_only``: (x,); ``x_scaled``: (x, scale=2.0), the same tensor names as
    ``x_only``; ``not_batching``: one batch size recorded of a module mixing samples (max_batch_size 0).
    """
    cache = tmp_path_factory.mktemp("config_cache")
    torch.manual_seed(0)
    net = Module(
        TwoInputNet().eval(),
        name="test_config_two_input_net",
        strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False),  # the recorded range 1..5
        cache_dir=cache,
    )
    for batch in (1, 3, 5):
        net(torch.randn(batch, 8), torch.randn(batch, 4))
        net(torch.randn(batch, 8))
        net(torch.randn(batch, 8), scale=2.0)
    net.tune()
    sequence = Module(_Sequence().eval(), name="test_config_one_batch", strategy=OneBackendStrategy("onnxruntime"), cache_dir=cache)
    for length in (4, 6):
        sequence(torch.randn(2, length))
    sequence.tune()

    def io(model, model_name, index):
        entry = model.to_dict()["graphs"][index]
        return ModelIO.from_graph(model_name, entry["graph"], entry["backend"])

    result = {
        "with_y": io(net, "net.graph_0", 0),
        "x_only": io(net, "net.graph_1", 1),
        "x_scaled": io(net, "net.graph_2", 2),
        "not_batching": io(sequence, "seq.graph_0", 0),
    }
    assert result["x_scaled"].description.endswith("scale: const(2.0)")
    yield result
    del net, sequence


def _routes(name, ios):
    return {"module": name, "signature": [], "strict": True, "graphs": [io.to_dict() for io in ios]}


def _tensors(messages):
    return {m.name: m for m in messages}


def test_graph_model_config_describes_a_batching_python_model(ios):
    io = ios["with_y"]

    config = graph_model_config(io, TritonModelOptions())

    assert isinstance(config, mc.ModelConfig)
    assert (config.name, config.backend, config.max_batch_size) == ("net.graph_0", "python", 5)
    assert [(t.name, list(t.dims), t.data_type) for t in config.input] == [
        ("x", [8], mc.TYPE_FP32),
        ("y", [4], mc.TYPE_FP32),
    ]
    assert [t.name for t in config.output] == ["hidden.0", "hidden.1", "logits"]
    assert all(t.data_type == mc.TYPE_FP32 for t in config.output)
    assert config.version_policy.latest.num_versions == 1
    assert "aitune_triton.io" not in config.parameters  # the mapping lives in io.json and the entry model only


def test_per_sample_rank_0_outputs_are_declared_as_dims_1_reshaped_to_scalar(ios):
    config = graph_model_config(ios["with_y"], TritonModelOptions())
    outputs = _tensors(config.output)

    assert list(outputs["hidden.1"].dims) == [1]
    assert outputs["hidden.1"].HasField("reshape")
    assert list(outputs["hidden.1"].reshape.shape) == []
    for name in ("hidden.0", "logits"):
        assert not outputs[name].HasField("reshape")
    for tensor in config.input:
        assert not tensor.HasField("reshape")


def test_dynamic_batching_is_present_with_the_options_when_the_model_batches(ios):
    options = TritonModelOptions(max_queue_delay_microseconds=2500, preferred_batch_size=(2, 4, 8))

    config = graph_model_config(ios["with_y"], options)

    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    # Sizes above max_batch_size (5) are left out.
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]


def test_the_measured_preferred_batch_size_of_a_graph_spec_reaches_the_dynamic_batcher_unless_options_say_otherwise(ios):
    measured = dataclasses.replace(ios["with_y"], preferred_batch_size=4)

    config = graph_model_config(measured, TritonModelOptions())
    overridden = graph_model_config(measured, TritonModelOptions(preferred_batch_size=(2,)))
    again = text_format.Parse(model_config_text(config), mc.ModelConfig())

    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert list(overridden.dynamic_batching.preferred_batch_size) == [2]
    assert again == config
    assert ModelIO.from_dict(json.loads(json.dumps(measured.to_dict()))).preferred_batch_size == 4


def test_dynamic_batching_is_absent_and_dims_are_full_when_max_batch_size_is_0(ios):
    io = ios["not_batching"]

    config = graph_model_config(io, TritonModelOptions(max_queue_delay_microseconds=2500))

    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("tokens", [2, -1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("doubled", [2, -1]), ("total", [2])]
    assert not any(t.HasField("reshape") for t in list(config.input) + list(config.output))


def test_a_0_d_tensor_of_a_model_that_does_not_batch_is_declared_as_dims_1_without_reshape():
    from aitune_triton.triton.io import TensorIO

    io = ModelIO("m.graph_0", "graph_0", "{}", "x", "onnxruntime", "model.onnx", 0,
                 [TensorIO("x", "x", "float32", "TYPE_FP32", (3,), None, ((3, 3),))],
                 [TensorIO("total", "total", "float32", "TYPE_FP32", (), None, ())], "[]", [None])

    config = graph_model_config(io, TritonModelOptions())

    (total,) = config.output
    assert list(total.dims) == [1] and not total.HasField("reshape")  # Triton refuses an empty reshape here
    assert io.wire_shape(io.outputs[0], ()) == (1,)


def test_cpu_backends_get_kind_cpu_instances_and_cuda_backends_kind_gpu_under_auto(ios):
    io = ios["with_y"]

    cpu = graph_model_config(io, TritonModelOptions(instance_count=3), device="cpu")
    cuda = graph_model_config(io, TritonModelOptions(), device="cuda:0")
    forced_cpu = graph_model_config(io, TritonModelOptions(instance_kind="cpu"), device="cuda:0")
    forced_gpu = graph_model_config(io, TritonModelOptions(instance_kind="gpu"), device="cpu")

    assert [(g.kind, g.count) for g in cpu.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
    assert [g.kind for g in cuda.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert [g.kind for g in forced_cpu.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert [g.kind for g in forced_gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]


@pytest.mark.parametrize("which", ["batching", "not_batching", "router"])
def test_write_then_read_model_config_gives_back_an_equal_message(ios, tmp_path, which):
    if which == "router":
        chosen = [ios["with_y"], ios["x_only"]]
        config = router_model_config("net", chosen, _routes("net", chosen), TritonModelOptions())
    else:
        config = graph_model_config(ios["with_y" if which == "batching" else "not_batching"], TritonModelOptions())

    written = write_model_config(config, tmp_path / "config.pbtxt")

    assert written == tmp_path / "config.pbtxt"
    assert read_model_config(written) == config
    assert written.read_text() == model_config_text(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]  # no temporary file left


def test_write_model_config_replaces_an_existing_file(ios, tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text("this is not protobuf text")

    write_model_config(graph_model_config(ios["x_only"], TritonModelOptions()), path)

    assert read_model_config(path).name == "net.graph_1"


def test_read_model_config_rejects_a_misspelt_field(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_bach_size: 4\n')

    with pytest.raises(text_format.ParseError, match="max_bach_size"):
        read_model_config(path)


def test_router_inputs_are_the_union_of_graph_inputs_and_all_optional(ios):
    chosen = [ios["with_y"], ios["x_only"]]
    routes = _routes("net", chosen)

    config = router_model_config("net", chosen, routes, TritonModelOptions(instance_count=2, entry_instance_count=3))

    assert (config.name, config.backend, config.max_batch_size) == ("net", "python", 0)
    assert not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims), t.optional) for t in config.input] == [("x", [-1, 8], True), ("y", [-1, 4], True)]
    assert [(t.name, list(t.dims)) for t in config.output] == [
        ("hidden.0", [-1, 16]),
        ("hidden.1", [-1]),
        ("logits", [-1, 3]),
    ]
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]  # the entry model has its own count
    assert json.loads(config.parameters[ROUTES_PARAMETER].string_value) == routes


def test_router_rejects_one_input_name_with_two_dtypes_naming_both_graphs(ios):
    as_int = dataclasses.replace(ios["x_only"].inputs[0], dtype="int64", data_type="TYPE_INT64")
    conflicting = dataclasses.replace(ios["x_only"], inputs=[as_int])

    with pytest.raises(ExportError) as raised:
        router_model_config("net", [ios["with_y"], conflicting], {}, TritonModelOptions())

    message = str(raised.value)
    assert "'x'" in message
    assert "TYPE_FP32" in message and "TYPE_INT64" in message
    assert "graph_0" in message and "graph_1" in message


def test_router_rejects_one_input_name_with_two_ranks(ios):
    rank_3 = dataclasses.replace(ios["x_only"].inputs[0], dims=(8, 2))
    conflicting = dataclasses.replace(ios["x_only"], inputs=[rank_3])

    with pytest.raises(ExportError, match=r"'x' is TYPE_FP32 rank 2 in graph_0 but TYPE_FP32 rank 3 in graph_1"):
        router_model_config("net", [ios["with_y"], conflicting], {}, TritonModelOptions())


def test_router_accepts_two_graphs_that_take_the_same_input_names_and_declares_each_input_once(ios):
    # graph_1 and graph_2 were recorded with the same tensors, once with scale=2.0: the router
    # refuses such requests at run time (it cannot see constants); RemoteModule tells them apart.
    chosen = [ios["with_y"], ios["x_only"], ios["x_scaled"]]
    config = router_model_config("net", chosen, _routes("net", chosen), TritonModelOptions())

    assert sorted(t.name for t in config.input) == ["x", "y"]


@pytest.mark.parametrize(
    "arguments, argument",
    [
        ({"instance_count": 0}, "instance_count"),
        ({"instance_count": "2"}, "instance_count"),
        ({"instance_count": 1.5}, "instance_count"),
        ({"instance_kind": "tpu"}, "instance_kind"),
        ({"max_queue_delay_microseconds": -1}, "max_queue_delay_microseconds"),
        ({"max_queue_delay_microseconds": 0.5}, "max_queue_delay_microseconds"),
    ],
)
def test_triton_model_options_reject_bad_values_naming_the_argument(arguments, argument):
    with pytest.raises(ExportError) as raised:
        TritonModelOptions(**arguments)

    assert str(raised.value).startswith(f"{argument}: ")
    assert repr(next(iter(arguments.values()))) in str(raised.value)


def test_triton_model_options_reject_a_preferred_batch_size_below_1():
    with pytest.raises(ExportError, match=r"^preferred_batch_size: "):
        TritonModelOptions(preferred_batch_size=(0,))
