"""Dimensions and errors as NVIDIA AITune writes them: name-first BatchDim/DynamicDim, full-rank
``dynamic_shapes`` tuples with tuple paths, and the error classes AITune code catches.

Each test records real calls of a tiny real module; one tunes with ONNX Runtime and compares
with eager PyTorch.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from aitune_triton import BatchDim, DimRange, DynamicDim, Module, ModuleState, OneBackendStrategy, OnnxRuntimeBackend
from aitune_triton.errors import (
    ArgumentTypeError,
    GraphSpecMismatchError,
    InvalidArgumentError,
    InvalidStateDictError,
    NoSamplesError,
    RecordingError,
)
from aitune_triton.module.dims import dim_from_dict, validate_dynamic_shapes
from aitune_triton.module.routing import live_wrapper_of
from aitune_triton.spec import GraphSpec

EAGER = OneBackendStrategy("eager")

_RUNS: list[tuple[int, ...]] = []  # shapes each run of Channels.forward saw (module level: tuning copies modules)


class Channels(torch.nn.Module):
    """(batch, 3, seq) -> (batch, 3, seq): mixes the 3 channels, adds each sample's own mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        _RUNS.append(tuple(x.shape))
        return torch.einsum("ij,bjs->bis", self.mix, x) + x.mean(dim=(1, 2), keepdim=True)


class Pixels(torch.nn.Module):
    """Takes a dict of inputs, as a processor's output is passed."""

    def forward(self, inputs):
        return inputs["pixels"] * 2.0 + inputs["scale"]


def _pixels_call(batch: int, side: int) -> dict[str, torch.Tensor]:
    return {"pixels": torch.randn(batch, side), "scale": torch.ones(batch, 1)}


# ================================================================================ the dim classes
def test_batch_dim_takes_the_name_first_as_aitune_writes_it_and_min_max_as_before():
    aitune = BatchDim("batch", min=1, opt=8, max=32)

    assert aitune == BatchDim(1, 32, 8) == BatchDim("batch", 1, 32, 8) == BatchDim(min=1, max=32, opt=8)
    assert (aitune.name, aitune.min, aitune.max, aitune.opt) == ("batch", 1, 32, 8)
    assert BatchDim(1, 32) == BatchDim("batch", min=1, max=32) and BatchDim(1, 32).opt is None


def test_dynamic_dim_takes_aitune_keywords_and_todays_positional_order():
    assert DynamicDim("sequence", min=1, max=512) == DynamicDim("sequence", 1, 512)
    assert DynamicDim("sequence", min=1, opt=128, max=512) == DynamicDim("sequence", 1, 512, 128)


def test_a_batch_dim_named_other_than_batch_is_refused_saying_what_to_write():
    with pytest.raises(InvalidArgumentError, match=r"BatchDim: expected the name 'batch' .* got 'bs'\. Pass 'batch' or leave"):
        BatchDim("bs", min=1, max=8)
    with pytest.raises(ValueError, match="got 'bs'"):
        BatchDim(name="bs", min=1, max=8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BatchDim(1), r"BatchDim: missing max"),
        (lambda: BatchDim("batch", max=4), r"BatchDim: missing min"),
        (lambda: BatchDim(1, 4, 2, 9), r"expected at most 3 positional arguments \(min, max, opt\), got 4"),
        (lambda: BatchDim(1, 4, min=2), r"\['min'\] given both positionally and by keyword"),
        (lambda: BatchDim(1, 4, size=2), r"unexpected keyword arguments \['size'\]"),
    ],
)
def test_batch_dim_refuses_missing_repeated_and_unknown_arguments_as_a_type_error(make, message):
    with pytest.raises(ArgumentTypeError, match=message) as info:
        make()

    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BatchDim("batch", min=4, max=2), r"BatchDim: expected min < max, got min=4, max=2"),
        (lambda: BatchDim(4, 4), r"BatchDim: expected min < max, got min=4, max=4\. A declared dim varies"),
        (lambda: BatchDim(0, 8), r"BatchDim: expected a positive integer min \(sizes start at 1\), got 0"),
        (lambda: BatchDim(1, 8, opt=9), r"BatchDim: expected min <= opt <= max, that is opt between min=1 and max=8, got 9"),
        (lambda: DynamicDim("seq", min=2, max=8, opt=1), r"DynamicDim\('seq'\): expected min <= opt <= max.* got 1"),
        (lambda: DynamicDim("seq", min=-1, max=8), r"DynamicDim\('seq'\): expected a positive integer min \(sizes start at 1\), got -1"),
        (lambda: DynamicDim("seq", min=0, max=8), r"DynamicDim\('seq'\): expected a positive integer min .*got 0"),
        (lambda: DynamicDim("seq", min=3, max=3), r"DynamicDim\('seq'\): expected min < max, got min=3, max=3"),
        (lambda: DynamicDim("batch", min=1, max=8), r"expected a non-empty name other than 'batch' \(use BatchDim"),
    ],
)
def test_dims_with_bad_values_are_refused_naming_the_value(make, message):
    with pytest.raises(InvalidArgumentError, match=message):
        make()


def test_dims_are_frozen_hashable_and_equal_by_value():
    dims = {BatchDim(1, 8), BatchDim("batch", min=1, max=8), DynamicDim("seq", 1, 4), DynamicDim("seq", min=1, max=4)}

    assert len(dims) == 2
    assert BatchDim(1, 8) != BatchDim(1, 9) and DynamicDim("seq", 1, 4) != DynamicDim("other", 1, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        BatchDim(1, 8).max = 16  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DynamicDim("seq", 1, 4).max = 16  # type: ignore[misc]


@pytest.mark.parametrize("dim", [BatchDim("batch", min=1, opt=8, max=32), BatchDim(2, 4), DynamicDim("seq", 1, 512, opt=64)])
def test_dims_round_trip_through_to_dict_and_json(dim):
    data = json.loads(json.dumps(dim.to_dict()))

    assert type(dim).from_dict(data) == dim
    assert dim_from_dict(data) == dim
    assert data["type"] == type(dim).__name__ and data["name"] == dim.name


@pytest.mark.parametrize(
    ("load", "data", "message"),
    [
        (BatchDim.from_dict, [1, 8], r"BatchDim.from_dict: expected a dict as BatchDim.to_dict\(\) writes it, got list"),
        (BatchDim.from_dict, {"min": 1}, r"BatchDim.from_dict: .*; missing \['max'\]"),
        (DynamicDim.from_dict, {"name": "seq", "min": 1, "max": 4, "step": 2}, r"DynamicDim.from_dict: .*; unknown \['step'\]"),
        (DynamicDim.from_dict, {"min": 1, "max": 4}, r"missing \['name'\]"),
        (DynamicDim.from_dict, BatchDim(1, 4).to_dict(), r"DynamicDim.from_dict: expected type 'DynamicDim', got 'BatchDim'"),
        (BatchDim.from_dict, {"min": 1, "max": "8"}, r"BatchDim: expected a positive integer max \(sizes start at 1\), got '8'"),
        (dim_from_dict, {"min": 1, "max": 8}, r"dim_from_dict: expected a dict with 'type' 'BatchDim' or 'DynamicDim'"),
    ],
)
def test_from_dict_of_a_malformed_dim_dict_is_a_value_error_naming_what_is_wrong(load, data, message):
    with pytest.raises(InvalidArgumentError, match=message) as info:
        load(data)

    assert isinstance(info.value, ValueError)


# ======================================================================= full-rank dynamic_shapes
def test_a_full_rank_declaration_gives_each_axis_its_dim_or_fixed_size(unique_name):
    module = Module(
        Channels().eval(),
        name=unique_name,
        dynamic_shapes={"x": (BatchDim("batch", min=1, opt=4, max=8), 3, DynamicDim("seq", min=2, max=16))},
    )
    with torch.no_grad():
        module(torch.randn(2, 3, 5))
        module(torch.randn(2, 3, 5))  # batch 2 and seq 5 only

    (graph,) = module.graph_specs
    # the declared opt is kept; seq declares none: the size recorded most often
    assert graph.dims == {"batch": DimRange(1, 4, 8), "seq": DimRange(2, 5, 16)}
    assert graph.inputs[0].dim_names == ("batch", None, "seq") and graph.inputs[0].batch_axis == 0
    # the output axis that had the declared seq's one size in every call follows it
    assert graph.outputs[0].dim_names == ("batch", None, "seq") and graph.outputs[0].batch_axis == 0


def test_none_in_a_full_rank_declaration_leaves_that_axis_to_inference(unique_name):
    module = Module(Channels().eval(), name=unique_name, dynamic_shapes={"x": (None, 3, DynamicDim("seq", 1, 16))})
    with torch.no_grad():
        module(torch.randn(2, 3, 4))
        module(torch.randn(5, 3, 4))

    (graph,) = module.graph_specs
    assert {name: dim.bounds for name, dim in graph.dims.items()} == {"seq": (1, 16), "batch": (1, 5)}  # the batch was found from the recorded sizes
    assert graph.inputs[0].dim_names == ("batch", None, "seq")


def test_a_fixed_size_declared_on_axis_0_is_never_a_batch_candidate(unique_name):
    declared = Module(Channels().eval(), name=unique_name, dynamic_shapes={"x": (4, 3, None)})
    inferred = Module(Channels().eval(), name=f"{unique_name}_inferred")
    with torch.no_grad():
        for module in (declared, inferred):
            module(torch.randn(4, 3, 6))
            module(torch.randn(4, 3, 6))

    assert inferred.graph_specs[0].inputs[0].batch_axis == 0  # one batch size seen: axis 0 is a candidate
    (graph,) = declared.graph_specs
    assert graph.inputs[0].batch_axis is None and graph.inputs[0].dim_names == (None, None, None)
    assert graph.dims == {}


def test_a_tuple_path_addresses_the_same_nested_leaf_as_the_dotted_path(unique_name):
    by_tuple = Module(
        Pixels().eval(),
        name=unique_name,
        dynamic_shapes={("inputs", "pixels"): (BatchDim(1, 4), DynamicDim("side", 2, 8))},
    )
    by_string = Module(
        Pixels().eval(),
        name=f"{unique_name}_dotted",
        dynamic_shapes={"inputs.pixels": {0: BatchDim(1, 4), 1: DynamicDim("side", 2, 8)}},
    )
    with torch.no_grad():
        for module in (by_tuple, by_string):
            module(_pixels_call(2, 3))

    tupled, dotted = by_tuple.graph_specs[0], by_string.graph_specs[0]
    assert [t.path for t in tupled.inputs] == ["inputs.pixels", "inputs.scale"]
    assert tupled.dims == dotted.dims
    assert {name: dim.bounds for name, dim in dotted.dims.items()} == {"batch": (1, 4), "side": (2, 8)}
    assert [t.dim_names for t in tupled.inputs] == [t.dim_names for t in dotted.inputs] == [("batch", "side"), ("batch", None)]


def test_the_same_input_declared_by_a_dotted_and_a_tuple_path_is_refused():
    with pytest.raises(InvalidArgumentError, match=r"the input 'inputs.pixels' is declared twice, as 'inputs.pixels' and as \('inputs', 'pixels'\)"):
        validate_dynamic_shapes({"inputs.pixels": {0: BatchDim(1, 4)}, ("inputs", "pixels"): (BatchDim(1, 4), None)})


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"x": (BatchDim(1, 4), 3.0, None)}, r"dynamic_shapes\['x'\]\[1\]: expected a DynamicDim or BatchDim .* got 3.0"),
        ({"x": (BatchDim(1, 4), -3)}, r"dynamic_shapes\['x'\]\[1\]: .* a non-negative int \(a fixed size\) .* got -3"),
        ({"x": (BatchDim(1, 4), BatchDim(1, 4))}, r"dynamic_shapes\['x'\]: expected at most one BatchDim axis, got axes \[0, 1\]"),
        ({(): (None,)}, r"expected each key to be an input leaf path"),
        ({"x": "batch"}, r"dynamic_shapes\['x'\]: expected \{axis: DynamicDim \| BatchDim\} or a tuple with one entry per axis"),
        ({"inputs": {"pixels": (BatchDim(1, 4),)}}, r"write \{\('inputs', 'pixels'\): \.\.\.\} or \{'inputs.pixels': \.\.\.\}"),
        (
            {"x": (DynamicDim("seq", 1, 4),), "y": {1: DynamicDim("seq", 1, 8)}},
            r"dimension 'seq' is declared with \(min, opt, max\) = \(1, None, 4\) and \(1, None, 8\); axes that share a name",
        ),
        (
            {"x": (DynamicDim("seq", 1, 8, opt=4),), "y": {1: DynamicDim("seq", 1, 8, opt=8)}},
            r"dimension 'seq' is declared with \(min, opt, max\) = \(1, 4, 8\) and \(1, 8, 8\)",
        ),
    ],
)
def test_a_malformed_dynamic_shapes_declaration_is_refused_at_construction_naming_the_entry(declared, message, unique_name):
    with pytest.raises(InvalidArgumentError, match=message):
        Module(Channels(), name=unique_name, dynamic_shapes=declared)


class Masked(torch.nn.Module):
    """Takes its mask through ``**kwargs``, as many Hugging Face forwards take extra inputs."""

    def forward(self, x, **kwargs):
        return x * kwargs["mask"]


@pytest.mark.parametrize(
    ("make", "declared", "message"),
    [
        (Channels, {"y": {0: BatchDim(1, 4)}}, r"dynamic_shapes: 'y' names no parameter of the forward, which takes \(x\); "
         r"expected a leaf path that starts with one of \['x'\]"),
        (Channels, {"y": (BatchDim(1, 4), 3, None)}, r"'y' names no parameter of the forward, which takes \(x\)"),
        (Pixels, {("pixels",): (BatchDim(1, 4), None)}, r"'pixels' names no parameter .* takes \(inputs\); .* \('inputs', or "
         r"'inputs.<key>' for an input nested in it\)"),
        (Pixels, {("input", "pixels"): (BatchDim(1, 4), None)}, r"'input.pixels' names no parameter of the forward"),
        (Masked, {"mask": {0: BatchDim(1, 4)}}, r"'mask' names no parameter .* takes \(x, \*\*kwargs\);.* A keyword "
         r"argument that \*\*kwargs gathers is named 'kwargs.<key>': write 'kwargs.mask'\."),
    ],
)
def test_a_declared_path_that_starts_with_no_forward_parameter_is_refused_at_construction_naming_it_and_the_parameters(
    make, declared, message, unique_name
):
    net = make().eval()

    with pytest.raises(InvalidArgumentError, match=message):
        Module(net, name=unique_name, dynamic_shapes=declared)

    assert type(net) is make and live_wrapper_of(net) is None  # nothing was wrapped


def test_a_keyword_argument_that_kwargs_gathers_is_declared_by_its_kwargs_path(unique_name):
    module = Module(Masked().eval(), name=unique_name, dynamic_shapes={("kwargs", "mask"): (BatchDim(1, 8), None)})
    with torch.no_grad():
        module(torch.randn(2, 3), mask=torch.ones(2, 3))

    (graph,) = module.graph_specs
    assert [(t.path, t.dim_names) for t in graph.inputs] == [("x", ("batch", None)), ("kwargs.mask", ("batch", None))]
    assert graph.dims["batch"].bounds == (1, 8)


@pytest.mark.parametrize(
    "declared", [{("inputs", "nope"): (BatchDim(1, 4), None)}, {("inputs", "nope"): {0: BatchDim(1, 4)}}], ids=["full rank", "per axis"]
)
def test_a_declared_path_under_a_parameter_that_no_call_passes_is_a_recording_error_at_tune(declared, unique_name):
    module = Module(Pixels().eval(), name=unique_name, strategy=EAGER, dynamic_shapes=declared)
    with torch.no_grad():
        module(_pixels_call(2, 3))

    with pytest.raises(
        RecordingError,
        match=r"dynamic_shapes: \['inputs.nope'\] match no tensor input of any graph spec; tensor inputs: \['inputs.pixels', 'inputs.scale'\]",
    ):
        module.tune()

    assert module.state is ModuleState.RECORDING


def test_a_recorded_call_of_another_rank_than_declared_is_a_recording_error_and_does_not_run(unique_name):
    module = Module(Channels().eval(), name=unique_name, dynamic_shapes={"x": (BatchDim(1, 8), 3, DynamicDim("seq", 1, 16))})
    _RUNS.clear()

    with pytest.raises(
        RecordingError,
        match=r"^dynamic_shapes\['x'\]: declared with rank 3 \(batch 1..8, 3, seq 1..16\), but this call passes a tensor "
        r"of rank 4 \(shape \[2, 3, 4, 1\]\)",
    ) as info:
        with torch.no_grad():
            module(torch.randn(2, 3, 4, 1))

    assert isinstance(info.value, ValueError)
    assert _RUNS == []  # as for a declared range: the call is refused before the module runs
    with pytest.raises(NoSamplesError):
        module.graph_specs


def test_a_recorded_call_whose_fixed_axis_has_another_size_is_a_recording_error_and_is_not_recorded(unique_name):
    module = Module(Channels().eval(), name=unique_name, dynamic_shapes={"x": (BatchDim(1, 8), 3, None)})
    _RUNS.clear()

    with pytest.raises(
        RecordingError,
        match=r"^dynamic_shapes\['x'\]: axis 1 is declared with the fixed size 3, but has size 4 in this call \(shape \[2, 4, 5\]\)",
    ):
        with torch.no_grad():
            module(torch.randn(2, 4, 5))
    with torch.no_grad():
        module(torch.randn(2, 3, 5))

    assert _RUNS == [(2, 3, 5)]
    assert module.graph_specs[0].num_calls == 1


def test_two_axes_of_one_input_sharing_a_name_must_have_equal_sizes(unique_name):
    # AITune's square-image example: height and width declared as separate objects with one name
    side = DynamicDim("spatial", min=2, max=8)
    module = Module(
        Channels().eval(),
        name=unique_name,
        dynamic_shapes={"x": (BatchDim(1, 4), DynamicDim("spatial", min=2, max=8), side)},
    )

    with pytest.raises(RecordingError, match=r"'x' axis 2 and 'x' axis 1 share the dimension 'spatial' but have sizes 5 and 3"):
        with torch.no_grad():
            module(torch.randn(1, 3, 5))


# ==================================================================================== tuning
def test_a_full_rank_declaration_tunes_with_onnx_runtime_and_an_unrecorded_size_in_range_runs_tuned(unique_name):
    net = Channels().eval()
    module = Module(
        net,
        name=unique_name,
        strategy=OneBackendStrategy(OnnxRuntimeBackend()),
        dynamic_shapes={"x": (BatchDim("batch", min=1, opt=4, max=8), 3, DynamicDim("seq", min=2, opt=8, max=16))},
    )
    with torch.no_grad():
        module(torch.randn(1, 3, 4))
        module(torch.randn(2, 3, 4))

    (graph,) = module.graph_specs
    assert graph.dims == {"batch": DimRange(1, 4, 8), "seq": DimRange(2, 8, 16)}  # the declared opts kept
    assert graph.axis_range(graph.inputs[0], 1) == DimRange(3, 3, 3)

    module.tune()
    assert module.state is ModuleState.TUNED and module.tuned_graphs[0].backend.name == "onnxruntime"
    _RUNS.clear()
    x = torch.randn(6, 3, 11)  # batch 6 and seq 11 were never recorded
    with torch.no_grad():
        tuned = module(x)
    assert _RUNS == []  # the backend answered; the module's own forward did not run
    with torch.no_grad():
        torch.testing.assert_close(tuned, copy.deepcopy(net)(x), atol=1e-5, rtol=1e-5)  # a copy is eager
    with pytest.raises(GraphSpecMismatchError, match="x axis 1: size 4") as info:
        module(torch.randn(2, 4, 8))  # the fixed axis
    assert isinstance(info.value, RuntimeError)


# ==================================================================================== errors
def test_a_tuned_call_matching_no_graph_spec_is_caught_as_a_runtime_error_and_as_a_value_error(unique_name):
    module = Module(Channels().eval(), name=unique_name, strategy=EAGER)
    with torch.no_grad():
        module(torch.randn(2, 3, 4))
        module(torch.randn(3, 3, 4))
    module.tune()

    with pytest.raises(RuntimeError, match="matches no tuned graph spec"):
        module(torch.randn(2, 3))
    with pytest.raises(ValueError, match="matches no tuned graph spec"):
        module(torch.randn(2, 3))
    assert issubclass(GraphSpecMismatchError, RuntimeError) and issubclass(GraphSpecMismatchError, ValueError)


@pytest.fixture
def graph_dict(unique_name) -> dict:
    module = Module(Channels().eval(), name=unique_name)
    with torch.no_grad():
        module(torch.randn(2, 3, 4))
    return json.loads(json.dumps(module.graph_specs[0].to_dict()))


def _without(data: dict, key: str) -> dict:
    return {k: v for k, v in data.items() if k != key}


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: [d], r"GraphSpec: expected a dict, got list"),
        (lambda d: _without(d, "inputs"), r"GraphSpec: missing key\(s\) \['inputs'\]"),
        (lambda d: {**d, "inputs": "x"}, r"GraphSpec 'graph_0': 'inputs' must be a list, got str 'x'"),
        (lambda d: {**d, "name": 0}, r"GraphSpec 0: 'name' must be a string, got int 0"),
        (lambda d: {**d, "num_calls": "2"}, r"GraphSpec 'graph_0': 'num_calls' must be an integer, got str '2'"),
        (
            lambda d: {**d, "dims": {"batch": [1]}},
            r"GraphSpec 'graph_0': 'dims'\['batch'\] must be \[min, opt, max\] \(or \[min, max\] as older descriptions store it\): "
            r"non-negative integers with min <= opt <= max, got \[1\]",
        ),
        (lambda d: {**d, "dims": {"batch": [1, 9, 8]}}, r"GraphSpec 'graph_0': 'dims'\['batch'\] must be .* min <= opt <= max, got \[1, 9, 8\]"),
        (lambda d: {**d, "dims": {"batch": [1, 2, 3, 4]}}, r"GraphSpec 'graph_0': 'dims'\['batch'\] must be .* got \[1, 2, 3, 4\]"),
        (lambda d: {**d, "dims": {"batch": ["1", 2]}}, r"GraphSpec 'graph_0': 'dims'\['batch'\] must be .* got \['1', 2\]"),
        (lambda d: {**d, "batch_independent": "yes"}, r"GraphSpec 'graph_0': 'batch_independent' must be true, false or null, got 'yes'"),
        (lambda d: {**d, "output_treespec": "{not json"}, r"GraphSpec 'graph_0': 'output_treespec' must be the JSON text treespec_to_json\(\) writes"),
        (lambda d: {**d, "inputs": [_without(d["inputs"][0], "dtype")]}, r"TensorSpec: missing key\(s\) \['dtype'\]"),
        (lambda d: {**d, "inputs": [{**d["inputs"][0], "min_shape": ["2", 3, 4]}]}, r"TensorSpec 'x': 'min_shape' must be"),
        (lambda d: {**d, "inputs": [{**d["inputs"][0], "rank": 3}]}, r"TensorSpec: unknown key\(s\) \['rank'\]"),
        (lambda d: {**d, "outputs": [7]}, r"TensorSpec: expected a dict, got int 7"),
    ],
)
def test_graph_spec_from_a_malformed_dict_is_an_invalid_dictionary_format_value_error(graph_dict, break_it, message):
    with pytest.raises(InvalidStateDictError, match=r"^Invalid dictionary format for " + message) as info:
        GraphSpec.from_dict(break_it(graph_dict))

    assert isinstance(info.value, ValueError)


def test_graph_spec_from_its_own_dict_still_round_trips(graph_dict):
    restored = GraphSpec.from_dict(graph_dict)

    assert restored.to_dict() == graph_dict
