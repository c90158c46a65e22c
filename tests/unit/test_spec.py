"""Graph spec vocabulary: signatures, call keys, leaf paths, (de)serialization."""

from __future__ import annotations

import json

import pytest
import torch
import torch.utils._pytree as pytree

from aitune_triton.errors import InvalidArgumentError, OutputStructureError, RecordingError
from aitune_triton.spec import (
    DimRange,
    ForwardSignature,
    GraphSpec,
    OutputStructure,
    ParameterSpec,
    StoredCall,
    TensorSpec,
    dtype_from_name,
    dtype_name,
    flatten_call,
    flatten_output,
    rebuild_output,
    treespec_from_json,
    treespec_to_json,
)


def _forward(x, y=None, *extra, scale=1.0, **options):
    return x


def _past_forward(input_ids, past=None, use_cache=True):
    return input_ids


# ------------------------------------------------------------------------- ForwardSignature
def test_signature_reads_parameter_kinds_and_defaults_from_the_callable():
    signature = ForwardSignature.from_callable(_forward)

    assert signature.parameters == (
        ParameterSpec("x", "POSITIONAL_OR_KEYWORD", False),
        ParameterSpec("y", "POSITIONAL_OR_KEYWORD", True, "null"),
        ParameterSpec("extra", "VAR_POSITIONAL", False),
        ParameterSpec("scale", "KEYWORD_ONLY", True, "1.0"),
        ParameterSpec("options", "VAR_KEYWORD", False),
    )


def test_an_argument_passed_with_its_scalar_default_binds_as_if_omitted():
    signature = ForwardSignature.from_callable(_forward)
    x = torch.ones(2)

    assert signature.bind((x, None), {"scale": 1.0}) == signature.bind((x,), {}) == {"x": x}
    assert signature.bind((x,), {"scale": 1}) == {"x": x, "scale": 1}  # 1 is not the default 1.0
    assert signature.bind((x,), {"scale": 2.0}) == {"x": x, "scale": 2.0}


def test_signature_bind_omits_defaults_that_were_not_passed():
    signature = ForwardSignature.from_callable(_forward)
    x = torch.ones(2)

    assert list(signature.bind((x,), {})) == ["x"]
    bound = signature.bind((x,), {"scale": 2.0})
    assert list(bound) == ["x", "scale"]
    assert bound["scale"] == 2.0


def test_signature_bind_collects_star_args_into_a_tuple_and_star_kwargs_into_a_dict():
    signature = ForwardSignature.from_callable(_forward)

    bound = signature.bind((1, 2, 3, 4), {"flag": True, "other": "a"})

    assert bound == {"x": 1, "y": 2, "extra": (3, 4), "options": {"flag": True, "other": "a"}}


def test_signature_bind_rejects_arguments_that_do_not_fit_like_a_call_would():
    signature = ForwardSignature.from_callable(_past_forward)

    with pytest.raises(TypeError):
        signature.bind((), {})
    with pytest.raises(TypeError):
        signature.bind((1, 2, 3, 4), {})
    with pytest.raises(TypeError):
        signature.bind((1,), {"unknown": 2})


def test_signature_unbind_gives_back_the_original_call():
    signature = ForwardSignature.from_callable(_forward)
    args, kwargs = (1, 2, 3, 4), {"scale": 0.5, "flag": True}

    assert signature.unbind(signature.bind(args, kwargs)) == (args, kwargs)
    assert signature.unbind(signature.bind((1,), {"y": 2})) == ((1, 2), {})


def test_signature_to_dict_from_dict_round_trip_keeps_binding_behaviour():
    signature = ForwardSignature.from_callable(_forward)

    data = signature.to_dict()
    restored = ForwardSignature.from_dict(json.loads(json.dumps(data)))

    assert data[0] == {"name": "x", "kind": "POSITIONAL_OR_KEYWORD", "has_default": False, "default_json": None}
    assert restored == signature
    assert restored.bind((1,), {"scale": 3.0, "k": 1}) == {"x": 1, "scale": 3.0, "options": {"k": 1}}
    with pytest.raises(TypeError):
        restored.bind((), {})  # x has no default in the restored signature either


def test_signatures_with_different_parameters_are_not_equal():
    assert ForwardSignature.from_callable(_forward) != ForwardSignature.from_callable(_past_forward)
    assert ForwardSignature.from_callable(_forward) != "not a signature"


def test_signature_of_a_callable_without_a_readable_signature_falls_back_to_star_args_and_kwargs():
    signature = ForwardSignature.from_callable(object())  # inspect.signature raises TypeError

    assert [p.kind for p in signature.parameters] == ["VAR_POSITIONAL", "VAR_KEYWORD"]
    assert signature.bind((1, 2), {"a": 3}) == {"args": (1, 2), "kwargs": {"a": 3}}


# --------------------------------------------------------------------------- flatten_call keys
@pytest.fixture
def signature() -> ForwardSignature:
    return ForwardSignature.from_callable(_forward)


def _key(signature, *args, strict=True, **kwargs):
    return flatten_call(signature, args, kwargs, strict).key


def test_calls_that_differ_only_in_tensor_sizes_share_a_key(signature):
    small = _key(signature, torch.ones(1, 8), torch.ones(1, 4))
    large = _key(signature, torch.ones(7, 8), torch.ones(7, 5))

    assert small == large


def test_positional_and_keyword_spelling_of_the_same_call_share_a_key(signature):
    assert _key(signature, torch.ones(2, 8), torch.ones(2, 4)) == _key(signature, torch.ones(3, 8), y=torch.ones(3, 4))


def test_a_missing_argument_gives_another_key(signature):
    assert _key(signature, torch.ones(2, 8)) != _key(signature, torch.ones(2, 8), torch.ones(2, 4))


def test_a_different_dtype_gives_another_key(signature):
    assert _key(signature, torch.ones(2, 8)) != _key(signature, torch.ones(2, 8, dtype=torch.float64))
    assert _key(signature, torch.ones(2, 8)) != _key(signature, torch.ones(2, 8, dtype=torch.int64))


def test_a_different_rank_gives_another_key(signature):
    assert _key(signature, torch.ones(2, 8)) != _key(signature, torch.ones(2, 8, 1))


def test_a_different_nesting_gives_another_key():
    signature = ForwardSignature.from_callable(_past_forward)
    ids = torch.ones(2, 3, dtype=torch.int64)
    t = torch.ones(2, 4)

    as_list = _key(signature, ids, past={"key": [t, t]})
    assert as_list == _key(signature, ids, past={"key": [t * 2, t * 3]})
    assert as_list != _key(signature, ids, past={"key": (t, t)})
    assert as_list != _key(signature, ids, past={"key": [t, t, t]})
    assert as_list != _key(signature, ids, past={"value": [t, t]})
    assert as_list != _key(signature, ids, past=[t, t])


def test_a_different_constant_gives_another_key_only_in_strict_mode(signature):
    x = torch.ones(2, 8)

    assert _key(signature, x, scale=3.0) != _key(signature, x, scale=2.0)
    assert _key(signature, x, scale=3.0, strict=False) == _key(signature, x, scale=2.0, strict=False)
    # a constant that is passed still differs from one that is not, strict or not
    assert _key(signature, x, scale=3.0, strict=False) != _key(signature, x, strict=False)
    # ...unless it is passed with its default value
    assert _key(signature, x, scale=1.0) == _key(signature, x)


def test_the_order_of_keyword_arguments_does_not_change_the_key(signature):
    x, t = torch.ones(2, 8), torch.ones(2, 4)

    assert _key(signature, x, first=t, second=t) == _key(signature, x, second=t, first=t)


def test_describe_lists_leaf_paths_with_dtype_rank_and_constants(signature):
    call = flatten_call(signature, (torch.ones(2, 8),), {"scale": 0.5, "flag": True})

    assert call.describe() == "x: tensor(float32, rank=2), scale: const(0.5), options.flag: const(true)"


# ------------------------------------------------------------------------------- leaf paths
def test_input_leaf_paths_join_parameter_names_dict_keys_and_indices():
    signature = ForwardSignature.from_callable(_past_forward)
    t = torch.ones(1, 2)

    call = flatten_call(signature, (t,), {"past": {"key": [t, t, t, t], "value": (t,)}, "use_cache": False}, True)

    assert call.flat.paths == [
        "input_ids",
        "past.key.0",
        "past.key.1",
        "past.key.2",
        "past.key.3",
        "past.value.0",
        "use_cache",
    ]
    assert call.flat.tensor_paths == call.flat.paths[:-1]
    assert call.flat.template == [None] * 6 + [False]


def test_a_lone_output_tensor_is_named_output():
    assert flatten_output(torch.ones(2)).paths == ["output"]


def test_top_level_sequence_outputs_get_an_output_prefix():
    t = torch.ones(1)

    assert flatten_output((t, t)).paths == ["output.0", "output.1"]
    assert flatten_output([t, {"a": t, "b": [t]}]).paths == ["output.0", "output.1.a", "output.1.b.0"]


def test_top_level_dict_outputs_are_named_by_their_keys():
    t = torch.ones(1)

    flat = flatten_output({"hidden": [t, t], "logits": t, "note": "text"})

    assert flat.paths == ["hidden.0", "hidden.1", "logits", "note"]
    assert flat.tensor_paths == ["hidden.0", "hidden.1", "logits"]
    assert flat.template == [None, None, None, "text"]


# ---------------------------------------------------------------------------- rebuild_output
def test_rebuild_output_puts_tensors_and_constants_back_into_the_structure():
    original = {"hidden": [torch.ones(2), torch.zeros(3)], "count": 3, "logits": torch.full((1,), 7.0)}
    flat = flatten_output(original)
    new = [torch.full((2,), 1.5), torch.full((3,), 2.5), torch.full((1,), 3.5)]

    rebuilt = rebuild_output(flat.treespec, flat.template, new)

    assert list(rebuilt) == ["hidden", "count", "logits"]
    assert isinstance(rebuilt["hidden"], list)
    assert rebuilt["count"] == 3
    assert rebuilt["hidden"][0] is new[0] and rebuilt["hidden"][1] is new[1] and rebuilt["logits"] is new[2]


def test_rebuild_output_rejects_a_wrong_number_of_tensors():
    flat = flatten_output((torch.ones(1), torch.ones(1)))

    with pytest.raises(OutputStructureError, match="Expected 2 output tensors for the recorded structure, got 1"):
        rebuild_output(flat.treespec, flat.template, [torch.ones(1)])


# --------------------------------------------------------------------- TensorSpec / GraphSpec
def test_dtype_names_round_trip_and_unknown_names_are_rejected():
    assert dtype_name(torch.float16) == "float16"
    assert dtype_from_name("int64") is torch.int64
    with pytest.raises(ValueError, match="'Linear'"):
        dtype_from_name("Linear")
    with pytest.raises(ValueError, match="'no_such_dtype'"):
        dtype_from_name("no_such_dtype")


def test_tensor_spec_to_dict_from_dict_round_trip():
    spec = TensorSpec("input_ids", "int64", (1, 3), (8, 12), batch_axis=0, dim_names=("batch", "dim0"))

    data = json.loads(json.dumps(spec.to_dict()))
    restored = TensorSpec.from_dict(data)

    assert data["min_shape"] == [1, 3] and data["dim_names"] == ["batch", "dim0"]
    assert restored == spec
    assert restored.min_shape == (1, 3) and restored.dynamic_axes == [0, 1] and restored.rank == 2


def test_tensor_spec_without_dim_names_is_static_on_every_axis():
    spec = TensorSpec("x", "float32", [2, 3, 4], [2, 3, 4])

    assert spec.dim_names == (None, None, None)
    assert spec.dynamic_axes == []
    assert TensorSpec.from_dict(spec.to_dict()) == spec


def _graph_spec() -> GraphSpec:
    t = torch.ones(1)
    output = flatten_output({"hidden": [t, t], "logits": t, "tag": "x"})
    return GraphSpec(
        name="graph_3",
        key='{"k":1}',
        description="x: tensor(float32, rank=2)",
        inputs=[TensorSpec("x", "float32", (1, 8), (4, 8), 0, ("batch", None))],
        outputs=[
            TensorSpec("hidden.0", "float32", (1, 16), (4, 16), 0, ("batch", None)),
            TensorSpec("hidden.1", "float32", (1,), (4,), 0, ("batch",)),
            TensorSpec("logits", "float32", (1, 3), (4, 3), 0, ("batch", None)),
        ],
        output_structure=OutputStructure(output.treespec),
        output_template=output.template,
        num_calls=5,
        dims={"batch": DimRange(1, 2, 4)},
    )


def test_graph_spec_to_dict_from_dict_round_trip():
    spec = _graph_spec()

    data = json.loads(json.dumps(spec.to_dict()))
    restored = GraphSpec.from_dict(data)

    assert restored == spec
    assert restored.batch_size_range == DimRange(1, 2, 4)
    assert data["dims"] == {"batch": [1, 2, 4]}
    assert restored.output_template == [None, None, None, "x"]
    rebuilt = rebuild_output(restored.output_treespec, restored.output_template, [torch.ones(1)] * 3)
    assert list(rebuilt) == ["hidden", "logits", "tag"] and rebuilt["tag"] == "x"


def test_graph_spec_to_dict_rejects_a_constant_output_leaf_that_is_not_json():
    spec = _graph_spec()
    spec.output_template = [None, None, None, object()]

    with pytest.raises(RecordingError, match="graph_3: a non-tensor output leaf is not JSON-serializable"):
        spec.to_dict()


def test_graph_spec_without_batch_dim_has_no_batch_size_range():
    spec = _graph_spec()
    spec.dims = {"dim0": DimRange(3, 9, 9)}

    assert spec.batch_size_range is None


class _Unregistered:
    def __init__(self, value):
        self.value = value


pytree.register_pytree_node(
    _Unregistered,
    lambda box: ([box.value], None),
    lambda children, context: _Unregistered(children[0]),
)


def test_treespec_to_json_names_the_fix_for_a_container_registered_without_a_serialized_name():
    _, treespec = pytree.tree_flatten(_Unregistered(torch.ones(1)))

    with pytest.raises(RecordingError, match="serialized_type_name") as info:
        treespec_to_json(treespec)

    assert "Cannot serialize the structure" in str(info.value)
    assert "_Unregistered" in str(info.value)


def test_treespec_json_round_trip_for_builtin_containers():
    _, treespec = pytree.tree_flatten({"a": [torch.ones(1), (torch.ones(1), 3)]})

    assert treespec_from_json(treespec_to_json(treespec)) == treespec


def test_treespec_from_json_rejects_garbage_with_recording_error():
    with pytest.raises(RecordingError, match="Cannot rebuild the stored output structure"):
        treespec_from_json('[1, {"type": "no.such.Type", "context": "null", "children_spec": []}]')


# ------------------------------------------------------------------------------- StoredCall
def test_a_stored_call_rebuilds_its_containers_on_every_read_so_a_forward_filling_one_runs_as_recorded():
    def forward(x, seen):
        seen.append(x)
        return x * len(seen)

    signature = ForwardSignature.from_callable(forward)
    x = torch.ones(2)
    stored = StoredCall(signature, flatten_call(signature, (x,), {"seen": []}))

    results = [forward(*stored.args, **stored.kwargs) for _ in range(3)]

    assert all(torch.equal(result, x) for result in results)  # each run got a new, empty list
    assert stored.args[0] is x  # tensors are shared, not copied


def test_an_empty_transformers_cache_argument_flattens_to_no_leaves_and_rebuilds_as_a_new_usable_cache():
    from transformers.cache_utils import DynamicCache

    signature = ForwardSignature.from_callable(_past_forward)
    cache = DynamicCache()
    call = flatten_call(signature, (torch.ones(1, 3, dtype=torch.long),), {"past": cache}, True)

    assert call.flat.tensor_paths == ["input_ids"]
    assert "DynamicCache" not in call.describe()  # a pytree node with no leaves, not a constant object
    stored = StoredCall(signature, call)
    first, second = stored.args[1], stored.args[1]  # bound back as (input_ids, past)
    assert isinstance(first, DynamicCache) and first is not cache and first is not second
    first.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), 0)
    assert first.get_seq_length() == 3
    assert second.get_seq_length() == 0 and stored.args[1].get_seq_length() == 0


# ------------------------------------------------------------------------------- DimRange
def test_dim_range_takes_the_size_recorded_most_often_as_opt_ties_to_the_larger():
    assert DimRange.of_sizes([4, 2, 4, 8]) == DimRange(2, 4, 8)
    assert DimRange.of_sizes([2, 8, 8, 2]) == DimRange(2, 8, 8)
    assert DimRange.of_sizes([3, 5], low=1) == DimRange(1, 5, 5)  # the batch: from 1
    assert DimRange.of_sizes([6]) == DimRange(6, 6, 6)  # one size recorded: min == max is a valid recorded range


def test_dim_range_reads_min_opt_max_and_the_older_min_max_form():
    assert DimRange.from_json([1, 4, 8]) == DimRange(1, 4, 8) and DimRange(1, 4, 8).to_json() == [1, 4, 8]
    assert DimRange.from_json([1, 8]) == DimRange(1, 8, 8)  # opt derived: max
    assert DimRange.from_json([1, 8], opt=4) == DimRange(1, 4, 8)  # or the stored preferred size when in range
    assert DimRange.from_json([1, 8], opt=9) == DimRange(1, 8, 8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DimRange(4, 2, 8), r"DimRange: expected non-negative integer sizes with min <= opt <= max, got min=4, opt=2, max=8"),
        (lambda: DimRange(1, 9, 8), r"got min=1, opt=9, max=8"),
        (lambda: DimRange(-1, 1, 2), r"got min=-1, opt=1, max=2"),
        (lambda: DimRange.from_json([1, 2, 3, 4]), r"expected \[min, opt, max\] \(or \[min, max\]\) of non-negative integers, got \[1, 2, 3, 4\]"),
        (lambda: DimRange.of_sizes([]), r"expected at least one recorded size"),
    ],
)
def test_dim_range_refuses_sizes_out_of_order_naming_them(make, message):
    with pytest.raises(InvalidArgumentError, match=message):
        make()
