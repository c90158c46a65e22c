"""ModelIO: the mapping between a tuned graph spec's leaves and a Triton model's tensors.

Every graph spec description here comes from a real module that was recorded and tuned with
ONNX Runtime (``module.to_dict()["graphs"]``); nothing is written by hand except where a test
says so (a dtype that no backend here can produce).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from nets import TwoInputNet
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton import Module, OneBackendStrategy
from aitune_triton.errors import ExportError, InvalidStateDictError
from aitune_triton.module.description import TunedGraphDescription
from aitune_triton.triton.io import TORCH_TO_TRITON_DTYPE, ModelIO, TensorIO, triton_dtype

_TRITON_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class _Sequence(torch.nn.Module):
    """(batch, length) in; per-sample vector and per-sample scalar out."""

    def forward(self, tokens):
        return {"doubled": tokens * 2, "total": tokens.sum(-1)}


class _MixingSequence(torch.nn.Module):
    """Like _Sequence, but each sample's outputs depend on the batch (its mean): Triton must not join requests."""

    def forward(self, tokens):
        return {"doubled": tokens * 2 - tokens.mean(0), "total": tokens.sum(-1)}


class _Transposed(torch.nn.Module):
    """The output carries the batch on axis 1."""

    def forward(self, x):
        return x.t() * 1.0


class _Colliding(torch.nn.Module):
    """Leaf paths whose sanitized names collide: the input ``output`` and the lone output tensor
    (path ``output``), and the dict keys ``"a b"`` and ``"a_b"`` (both become ``d.a_b``)."""

    def forward(self, output, d):
        return output + d["a b"] + d["a_b"]



def _tuned_graphs(name, module, calls, cache_dir):
    # The recorded batch range: these tests check how recorded ranges map to Triton's (the sweep: test_batch_sweep.py).
    wrapped = Module(module.eval(), name=name, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False), cache_dir=cache_dir)
    for args in calls:
        wrapped(*args)
    wrapped.tune()
    return wrapped, wrapped.to_dict()["graphs"]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Real graph spec descriptions of several recorded and tuned modules (kept alive for the file)."""
    cache = tmp_path_factory.mktemp("io_cache")
    torch.manual_seed(0)
    keep, result = [], {}

    def add(key, name, module, calls):
        wrapped, described = _tuned_graphs(name, module, calls, cache)
        keep.append(wrapped)
        result[key] = described

    two = []
    for batch in (1, 3, 5):
        two.append((torch.randn(batch, 8), torch.randn(batch, 4)))
        two.append((torch.randn(batch, 8),))
    add("two_input", "test_io_two_input_net", TwoInputNet(), two)
    add("sequence", "test_io_sequence", _Sequence(), [(torch.randn(b, s),) for b, s in ((1, 4), (3, 6), (5, 8))])
    add("one_batch", "test_io_one_batch_size", _MixingSequence(), [(torch.randn(2, s),) for s in (4, 6, 7)])
    add("one_batch_independent", "test_io_one_batch_independent", _Sequence(), [(torch.randn(2, s),) for s in (4, 6, 7)])
    add("transposed", "test_io_transposed", _Transposed(), [(torch.randn(b, 8),) for b in (1, 3, 5)])
    add(
        "colliding",
        "test_io_colliding",
        _Colliding(),
        [(torch.randn(b, 3), {"a b": torch.randn(b, 3), "a_b": torch.randn(b, 3)}) for b in (1, 3, 5)],
    )
    yield result
    keep.clear()


def _io(graphs, key, index=0, model_name="m.graph"):
    entry = graphs[key][index]
    return ModelIO.from_graph(model_name, entry["graph"], entry["backend"])


def _by_name(tensors):
    return {t.name: t for t in tensors}


def test_tensor_names_are_the_leaf_paths_of_inputs_and_outputs_in_artifact_order(graphs):
    io = _io(graphs, "two_input", 0, "net.graph_0")

    assert io.model_name == "net.graph_0"
    assert io.graph == "graph_0"
    assert [(t.name, t.path) for t in io.inputs] == [("x", "x"), ("y", "y")]
    assert [(t.name, t.path) for t in io.outputs] == [
        ("hidden.0", "hidden.0"),
        ("hidden.1", "hidden.1"),
        ("logits", "logits"),
    ]
    assert io.backend == "onnxruntime"
    assert io.artifact == "model.onnx"
    assert io.key == graphs["two_input"][0]["graph"]["key"]


def test_the_graph_spec_called_without_y_has_only_x_as_input(graphs):
    io = _io(graphs, "two_input", 1)

    assert [t.name for t in io.inputs] == ["x"]
    assert [t.name for t in io.outputs] == ["hidden.0", "hidden.1", "logits"]
    assert io.description == "x: tensor(float32, rank=2)"


def test_a_batching_model_drops_the_batch_axis_from_dims_and_takes_the_largest_recorded_batch(graphs):
    io = _io(graphs, "two_input", 0)

    assert io.max_batch_size == 5
    inputs, outputs = _by_name(io.inputs), _by_name(io.outputs)
    assert inputs["x"].dims == (8,)
    assert inputs["y"].dims == (4,)
    assert outputs["hidden.0"].dims == (16,)
    assert outputs["hidden.1"].dims == ()
    assert outputs["logits"].dims == (3,)
    assert all(t.batch_axis == 0 for t in io.inputs + io.outputs)
    assert io.full_dims(inputs["x"]) == (-1, 8)
    assert io.full_dims(outputs["hidden.1"]) == (-1,)


def test_dtypes_are_the_artifact_dtypes_in_torch_triton_and_protocol_spelling(graphs):
    io = _io(graphs, "two_input", 0)

    for tensor in io.inputs + io.outputs:
        assert (tensor.dtype, tensor.data_type, tensor.client_datatype) == ("float32", "TYPE_FP32", "FP32")


def test_a_dimension_that_varied_besides_the_batch_is_minus_one(graphs):
    io = _io(graphs, "sequence")

    assert io.max_batch_size == 5
    assert _by_name(io.inputs)["tokens"].dims == (-1,)
    assert _by_name(io.outputs)["doubled"].dims == (-1,)
    assert _by_name(io.outputs)["total"].dims == ()


def test_one_recorded_batch_size_of_a_module_mixing_samples_gives_max_batch_size_0_and_full_dims(graphs):
    io = _io(graphs, "one_batch")

    assert io.max_batch_size == 0
    tokens, doubled, total = io.inputs[0], io.outputs[0], io.outputs[1]
    # Axis 0 was always 2 (static); the length varied (dynamic).
    assert tokens.dims == (2, -1)
    assert doubled.dims == (2, -1)
    assert total.dims == (2,)
    assert all(t.batch_axis is None for t in io.inputs + io.outputs)
    assert io.full_dims(tokens) == (2, -1)


def test_one_recorded_batch_size_of_a_module_with_independent_samples_batches_up_to_that_size(graphs):
    io = _io(graphs, "one_batch_independent")

    assert io.max_batch_size == 2
    tokens, doubled, total = io.inputs[0], io.outputs[0], io.outputs[1]
    assert tokens.dims == (-1,) and doubled.dims == (-1,) and total.dims == ()
    assert all(t.batch_axis == 0 for t in io.inputs + io.outputs)
    assert tokens.ranges == ((1, 2), (4, 7))


def test_an_output_with_the_batch_axis_off_dim_0_gives_max_batch_size_0_and_full_dims(graphs):
    io = _io(graphs, "transposed")

    assert io.max_batch_size == 0
    assert io.inputs[0].batch_axis == 0
    assert io.inputs[0].dims == (-1, 8)
    assert io.outputs[0].name == "output"
    assert io.outputs[0].batch_axis == 1
    assert io.outputs[0].dims == (8, -1)


def test_colliding_names_get_a_numbered_suffix_and_stay_valid_triton_names(graphs):
    io = _io(graphs, "colliding")

    assert [(t.path, t.name) for t in io.inputs] == [("output", "output"), ("d.a b", "d.a_b"), ("d.a_b", "d.a_b__2")]
    assert [(t.path, t.name) for t in io.outputs] == [("output", "output__2")]
    names = [t.name for t in io.inputs + io.outputs]
    assert len(set(names)) == len(names)
    assert all(_TRITON_NAME.match(name) for name in names)


def test_names_do_not_depend_on_the_model_name_or_the_call(graphs):
    first = _io(graphs, "colliding", model_name="a.graph_0")
    second = _io(graphs, "colliding", model_name="b.graph_0")

    assert [t.name for t in first.inputs + first.outputs] == [t.name for t in second.inputs + second.outputs]


def test_wire_shape_adds_a_trailing_1_only_to_tensors_without_dims_of_their_own(graphs):
    batching = _io(graphs, "two_input", 0)
    outputs = _by_name(batching.outputs)

    assert batching.wire_shape(outputs["hidden.1"], (4,)) == (4, 1)
    assert batching.wire_shape(outputs["hidden.0"], (4, 16)) == (4, 16)
    assert batching.wire_shape(_by_name(batching.inputs)["x"], (2, 8)) == (2, 8)

    not_batching = _io(graphs, "one_batch")
    total = _by_name(not_batching.outputs)["total"]
    assert total.dims == (2,)
    assert not_batching.wire_shape(total, (2,)) == (2,)


def test_a_dtype_without_a_triton_type_is_rejected_with_an_export_error_naming_the_tensor(graphs):
    # The real description is changed in this one field: no backend here builds a complex artifact.
    entry = copy.deepcopy(graphs["two_input"][0])
    entry["graph"]["outputs"][2]["dtype"] = "complex64"

    with pytest.raises(ExportError) as raised:
        ModelIO.from_graph("m.graph_0", entry["graph"], entry["backend"])

    message = str(raised.value)
    assert "'logits'" in message
    assert "complex64" in message
    assert "float32" in message and "bfloat16" in message  # the supported dtypes are listed


def test_bfloat16_and_bool_tensors_are_declared_with_their_own_triton_types(graphs):
    entry = copy.deepcopy(graphs["two_input"][0])
    entry["graph"]["inputs"][0]["dtype"] = "bfloat16"
    entry["graph"]["outputs"][2]["dtype"] = "bool"

    io = ModelIO.from_graph("m.graph_0", entry["graph"], entry["backend"])

    assert (io.inputs[0].data_type, io.inputs[0].client_datatype) == ("TYPE_BF16", "BF16")
    assert (io.outputs[2].data_type, io.outputs[2].client_datatype) == ("TYPE_BOOL", "BOOL")


def test_triton_dtype_rejects_complex_and_maps_every_supported_dtype_to_a_real_config_type():
    with pytest.raises(ExportError, match="complex64"):
        triton_dtype("complex64", "x")
    assert triton_dtype("bfloat16") == "TYPE_BF16"
    for torch_name, triton_name in TORCH_TO_TRITON_DTYPE.items():
        assert triton_dtype(torch_name) == triton_name
        assert isinstance(getattr(torch, torch_name), torch.dtype)
        mc.DataType.Value(triton_name)  # raises ValueError for a name outside the official schema


@pytest.mark.parametrize("key", ["two_input", "sequence", "one_batch", "transposed", "colliding"])
def test_to_dict_and_from_dict_round_trip_through_json(graphs, key):
    io = _io(graphs, key)

    again = ModelIO.from_dict(json.loads(io.to_json()))

    assert again == io
    assert all(isinstance(t, TensorIO) and isinstance(t.dims, tuple) for t in again.inputs + again.outputs)
    assert again.to_dict() == io.to_dict()


def test_the_mapping_of_a_typed_graph_entry_is_the_one_of_its_dicts(graphs):
    entry = graphs["two_input"][0]

    typed = ModelIO.from_graph("m.graph_0", TunedGraphDescription.from_dict(entry, "graphs[0]"), version=3)

    assert typed == ModelIO.from_graph("m.graph_0", entry["graph"], entry["backend"], 3)
    assert typed.version == 3 and typed.artifact == Path(entry["backend"]["artifacts"]["model"]).name


def test_a_graph_dict_with_a_malformed_backend_is_refused_naming_the_field(graphs):
    entry = graphs["two_input"][0]

    with pytest.raises(InvalidStateDictError, match=r"\(graph\.backend\.artifacts is not a dict\)"):
        ModelIO.from_graph("m.graph_0", entry["graph"], {**entry["backend"], "artifacts": "model.onnx"})
