"""Recording: dimension inference, grouping calls into graph specs, bounded sample copies."""

from __future__ import annotations

import pytest
import torch

from aitune_triton.errors import RecordingError
from aitune_triton.module.recording import Recorder, infer_dims
from aitune_triton.module.samples import Sample, SampleStore, copy_call
from aitune_triton.spec import DimRange, ForwardSignature


# -------------------------------------------------------------------------------- infer_dims
def test_infer_dims_finds_the_batch_axis_when_dim_0_varies():
    dims = infer_dims(
        input_shapes=[[(2, 8)], [(5, 8)], [(3, 8)]],
        output_shapes=[[(2, 16), (2,)], [(5, 16), (5,)], [(3, 16), (3,)]],
    )

    assert dims.input_batch_axes == [0]
    assert dims.output_batch_axes == [0, 0]
    assert dims.input_dim_names == [("batch", None)]
    assert dims.output_dim_names == [("batch", None), ("batch",)]
    assert dims.ranges == {"batch": DimRange(1, 5, 5)}  # any batch from 1 up to the largest seen; opt: ties go to the larger


def test_infer_dims_makes_axis_0_a_candidate_batch_axis_when_one_batch_size_was_recorded():
    # tuning keeps it (range 1..4) or fixes it at 4 again, by measuring whether samples mix
    dims = infer_dims(
        input_shapes=[[(4, 5)], [(4, 9)], [(4, 7)]],
        output_shapes=[[(4, 5)], [(4, 9)], [(4, 7)]],
    )

    assert dims.input_batch_axes == [0]
    assert dims.output_batch_axes == [0]
    assert dims.input_dim_names == [("batch", "dim0")]
    assert dims.output_dim_names == [("batch", "dim0")]
    assert dims.ranges == {"dim0": DimRange(5, 9, 9), "batch": DimRange(1, 4, 4)}


def test_infer_dims_of_a_single_call_has_only_the_candidate_batch_axis_dynamic():
    dims = infer_dims(input_shapes=[[(3, 5)]], output_shapes=[[(3, 2), (2,)]])

    assert dims.input_batch_axes == [0]
    assert dims.output_batch_axes == [0, None]  # the second output's axis 0 does not follow the batch
    assert dims.input_dim_names == [("batch", None)]
    assert dims.output_dim_names == [("batch", None), (None,)]
    assert dims.ranges == {"batch": DimRange(1, 3, 3)}


def test_infer_dims_makes_no_candidate_batch_of_an_axis_0_declared_as_another_dimension():
    from aitune_triton.module.dims import DynamicDim

    dims = infer_dims(
        input_shapes=[[(4, 5)], [(4, 5)]], output_shapes=[[(4, 5)], [(4, 5)]], declared={(0, 0): DynamicDim("seq", 1, 8)}
    )

    assert dims.input_batch_axes == [None]
    assert dims.input_dim_names == [("seq", None)]
    assert "batch" not in dims.ranges


def test_infer_dims_keeps_a_declared_opt_and_otherwise_takes_the_size_recorded_most_often():
    from aitune_triton.module.dims import BatchDim, DynamicDim

    calls = [[(2, 5)], [(2, 7)], [(4, 7)], [(4, 5)], [(4, 9)]]
    declared = {(0, 0): BatchDim(1, 8, opt=2), (0, 1): DynamicDim("seq", 1, 16)}
    dims = infer_dims(calls, [[shape[0]] for shape in calls], declared=declared)

    # batch: declared opt 2 kept, though 4 was recorded more often; seq: 5 and 7 twice each, the larger wins
    assert dims.ranges == {"batch": DimRange(1, 2, 8), "seq": DimRange(1, 7, 16)}


def test_infer_dims_gives_axes_with_equal_size_series_one_shared_name():
    # input_ids and attention_mask: (batch, seq); token_type_ids has its own sequence length series
    calls = [
        [(2, 5), (2, 5), (2, 3)],
        [(4, 7), (4, 7), (4, 6)],
        [(1, 9), (1, 9), (1, 3)],
    ]
    outputs = [[(2, 5, 32)], [(4, 7, 32)], [(1, 9, 32)]]

    dims = infer_dims(calls, outputs)

    assert dims.input_dim_names == [("batch", "dim0"), ("batch", "dim0"), ("batch", "dim1")]
    assert dims.output_dim_names == [("batch", "dim0", None)]
    # opt: the size recorded most often (dim1: 3 twice), ties to the larger (batch, dim0)
    assert dims.ranges == {"batch": DimRange(1, 4, 4), "dim0": DimRange(5, 9, 9), "dim1": DimRange(3, 3, 6)}


def test_infer_dims_finds_an_output_batch_axis_on_a_non_zero_axis():
    # e.g. a module returning (seq, batch, hidden)
    dims = infer_dims(
        input_shapes=[[(2, 5)], [(4, 7)]],
        output_shapes=[[(5, 2, 3)], [(7, 4, 3)]],
    )

    assert dims.output_batch_axes == [1]
    assert dims.output_dim_names == [("dim0", "batch", None)]


def test_infer_dims_uses_the_first_input_with_rank_at_least_one_for_the_batch_size():
    # a scalar tensor input comes first; the batch series is read from the second leaf
    dims = infer_dims(
        input_shapes=[[(), (2, 3)], [(), (6, 3)]],
        output_shapes=[[(2,)], [(6,)]],
    )

    assert dims.input_batch_axes == [None, 0]
    assert dims.input_dim_names == [(), ("batch", None)]
    assert dims.output_batch_axes == [0]
    assert dims.ranges == {"batch": DimRange(1, 6, 6)}


def test_infer_dims_leaves_a_leaf_without_a_batch_following_axis_without_batch_axis():
    dims = infer_dims(
        input_shapes=[[(2, 8), (10, 8)], [(3, 8), (10, 8)]],
        output_shapes=[[(2, 8)], [(3, 8)]],
    )

    assert dims.input_batch_axes == [0, None]
    assert dims.input_dim_names == [("batch", None), (None, None)]


# ---------------------------------------------------------------------------------- Recorder
class _AddMul(torch.nn.Module):
    def forward(self, x, y=None):
        return (x * 2,) if y is None else (x + y, x * y)


def _recorder(module: torch.nn.Module, max_samples: int = 32, strict: bool = True) -> Recorder:
    return Recorder(ForwardSignature.from_callable(module.forward), max_samples=max_samples, strict=strict)


def test_recorder_returns_the_forward_output_unchanged():
    net = _AddMul()
    recorder = _recorder(net)
    x = torch.arange(6.0).reshape(2, 3)

    output = recorder.record(net, (x,), {})

    assert isinstance(output, tuple) and len(output) == 1
    assert torch.equal(output[0], x * 2)


def test_recorder_groups_calls_into_graph_specs_in_first_seen_order_with_min_max_shapes(two_input_net):
    recorder = _recorder(two_input_net)
    with torch.no_grad():
        recorder.record(two_input_net, (torch.randn(3, 8), torch.randn(3, 4)), {})
        recorder.record(two_input_net, (torch.randn(5, 8),), {})
        recorder.record(two_input_net, (torch.randn(1, 8), torch.randn(1, 4)), {})
        recorder.record(two_input_net, (torch.randn(6, 8),), {})
        recorder.record(two_input_net, (torch.randn(2, 8),), {})

    graphs = recorder.graph_specs()

    assert len(recorder) == 2
    assert [g.name for g in graphs] == ["graph_0", "graph_1"]
    with_y, x_only = graphs
    assert with_y.description == "x: tensor(float32, rank=2), y: tensor(float32, rank=2)"
    assert x_only.description == "x: tensor(float32, rank=2)"
    assert (with_y.num_calls, x_only.num_calls) == (2, 3)

    assert [(t.path, t.min_shape, t.max_shape) for t in with_y.inputs] == [("x", (1, 8), (3, 8)), ("y", (1, 4), (3, 4))]
    assert [(t.path, t.min_shape, t.max_shape) for t in x_only.inputs] == [("x", (2, 8), (6, 8))]
    assert [(t.path, t.min_shape, t.max_shape) for t in x_only.outputs] == [
        ("hidden.0", (2, 16), (6, 16)),
        ("hidden.1", (2,), (6,)),
        ("logits", (2, 3), (6, 3)),
    ]
    assert {name: dim.bounds for name, dim in x_only.dims.items()} == {"batch": (1, 6)}
    assert [t.batch_axis for t in x_only.outputs] == [0, 0, 0]
    assert [t.dtype for t in x_only.inputs + x_only.outputs] == ["float32"] * 4


def test_recorder_splits_graph_specs_by_constant_only_in_strict_mode(two_input_net):
    strict = _recorder(two_input_net, strict=True)
    loose = _recorder(two_input_net, strict=False)
    with torch.no_grad():
        for recorder in (strict, loose):
            recorder.record(two_input_net, (torch.randn(2, 8),), {"scale": 2.0})
            recorder.record(two_input_net, (torch.randn(2, 8),), {"scale": 3.0})

    assert len(strict) == 2
    assert len(loose) == 1
    assert loose.graph_specs()[0].num_calls == 2


def test_recorder_rejects_a_call_that_does_not_fit_the_signature_without_running_forward():
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            calls.append(x)
            return x

    spy = Spy()
    recorder = _recorder(spy)

    with pytest.raises(TypeError):
        recorder.record(spy, (torch.ones(1), torch.ones(1)), {})

    assert calls == []
    assert len(recorder) == 0


def test_recorder_keeps_a_copy_that_a_forward_mutating_its_input_in_place_cannot_change():
    class InPlace(torch.nn.Module):
        def forward(self, x, state):
            x.add_(100.0)
            state["steps"].append(1)
            return x * 1

    net = InPlace()
    recorder = _recorder(net)
    x = torch.zeros(2, 3)
    state = {"steps": []}

    recorder.record(net, (x,), {"state": state})

    assert float(x.sum()) == 600.0  # the caller's tensor was changed by forward
    (sample,) = recorder.samples(recorder.graph_specs()[0])
    assert torch.equal(sample.args[0], torch.zeros(2, 3))
    assert sample.args[0] is not x
    assert sample.kwargs["state"] == {"steps": []}


def test_recorder_sample_is_unaffected_by_later_changes_of_the_caller():
    net = _AddMul()
    recorder = _recorder(net)
    x = torch.ones(2, 3, requires_grad=True)

    recorder.record(net, (x,), {})
    with torch.no_grad():
        x.mul_(5)

    (sample,) = recorder.samples(recorder.graph_specs()[0])
    assert torch.equal(sample.args[0], torch.ones(2, 3))
    assert sample.args[0].requires_grad is False  # detached


def test_recorder_largest_sample_is_the_call_with_most_elements():
    net = _AddMul()
    recorder = _recorder(net)
    for batch in (3, 9, 1, 4):
        recorder.record(net, (torch.full((batch, 2), float(batch)),), {})

    largest = recorder.largest_sample(recorder.graph_specs()[0])

    assert largest.args[0].shape == (9, 2)
    assert largest.numel == 18


def test_recorder_bounded_store_keeps_range_extending_samples():
    net = _AddMul()
    recorder = _recorder(net, max_samples=3)
    for batch in (4, 1, 8, 4, 5, 6, 3, 2):
        recorder.record(net, (torch.full((batch, 2), float(batch)),), {})

    graph = recorder.graph_specs()[0]
    batches = sorted(s.args[0].shape[0] for s in recorder.samples(graph))

    assert graph.num_calls == 8  # every call counts for the spec...
    assert graph.inputs[0].min_shape == (1, 2) and graph.inputs[0].max_shape == (8, 2)
    assert len(batches) == 3  # ...but at most max_samples are kept
    assert 1 in batches and 8 in batches  # the smallest and largest calls survive eviction


def test_recorder_bounded_store_keeps_the_smallest_call_when_shapes_only_grow():
    net = _AddMul()
    recorder = _recorder(net, max_samples=2)
    for batch in (1, 2, 3, 4):
        recorder.record(net, (torch.full((batch, 2), float(batch)),), {})

    batches = sorted(s.args[0].shape[0] for s in recorder.samples(recorder.graph_specs()[0]))

    assert batches == [1, 4]


def test_recorder_inconsistent_output_structure_raises_recording_error_at_samples():
    returns_list = iter([False, True, False])

    class Flaky(torch.nn.Module):
        def forward(self, x):
            pair = (x + 1, x * 2)
            return list(pair) if next(returns_list) else pair

    net = Flaky()
    recorder = _recorder(net)
    for batch in (1, 2, 3):
        recorder.record(net, (torch.ones(batch, 2),), {})

    (graph,) = recorder.graph_specs()  # the structure of the first call is kept

    with pytest.raises(RecordingError, match="graph_0: calls with the same input structure") as info:
        recorder.samples(graph)
    assert "returned differently structured outputs" in str(info.value)


def test_recorder_output_with_a_different_number_of_tensors_raises_recording_error_at_samples():
    two_outputs = iter([True, False])

    class Flaky(torch.nn.Module):
        def forward(self, x):
            return (x + 1, x * 2) if next(two_outputs) else (x + 1,)

    net = Flaky()
    recorder = _recorder(net)
    recorder.record(net, (torch.ones(1, 2),), {})
    recorder.record(net, (torch.ones(2, 2),), {})

    (graph,) = recorder.graph_specs()
    with pytest.raises(RecordingError, match="differently structured outputs"):
        recorder.samples(graph)


# -------------------------------------------------------------------------------- SampleStore
def _sample(batch: int) -> Sample:
    return Sample((torch.full((batch, 2), float(batch)),), {}, [(batch, 2)])


def test_sample_store_evicts_the_oldest_sample_that_holds_no_end_of_the_shape_range():
    store = SampleStore(max_samples=3)
    for batch in (4, 2, 8, 3):
        store.add(_sample(batch))

    assert [s.shapes[0][0] for s in store] == [2, 8, 3]  # 4 was neither the smallest nor the largest
    store.add(_sample(1))
    assert [s.shapes[0][0] for s in store] == [8, 3, 1]  # 2 stopped being the smallest when 1 came


def test_sample_store_rejects_a_bound_below_one_and_an_empty_store_has_no_largest():
    with pytest.raises(ValueError, match="max_samples: expected an integer >= 1, got 0"):
        SampleStore(0)
    with pytest.raises(IndexError):
        SampleStore(1).largest()


def test_copy_call_clones_tensors_and_deep_copies_constants():
    tensor = torch.ones(2, requires_grad=True)
    nested = {"items": [1, 2]}

    (args, kwargs) = copy_call((tensor,), {"nested": nested})

    assert args[0] is not tensor and torch.equal(args[0], tensor.detach())
    assert not args[0].requires_grad
    nested["items"].append(3)
    assert kwargs["nested"] == {"items": [1, 2]}


# ------------------------------------------------------- arguments that the forward fills in place
class _Box:
    """An object pytree does not know: empty when given, filled with a tensor by the forward."""

    def __init__(self) -> None:
        self.items: list[torch.Tensor] = []


def test_an_argument_object_that_the_forward_fills_with_tensors_is_judged_as_it_was_given():
    class Filler(torch.nn.Module):
        def forward(self, x, box):
            box.items.append(x * 2)
            return x + 1

    net = Filler()
    recorder = _recorder(net)
    box = _Box()

    recorder.record(net, (torch.ones(2, 3), box), {})

    assert len(box.items) == 1  # the caller's object holds a tensor now; when given it held none
    (graph,) = recorder.graph_specs()
    assert [t.path for t in graph.inputs] == ["x"]
    (sample,) = recorder.samples(graph)  # not refused as an object holding tensors
    assert sample.args[1].items == []


def test_a_call_given_an_empty_transformers_cache_is_recorded_with_the_empty_cache_not_the_filled_one():
    from transformers.cache_utils import DynamicCache

    from output_nets import tiny_gpt2

    model = tiny_gpt2()
    recorder = _recorder(model)
    cache = DynamicCache(config=model.config)

    with torch.no_grad():
        recorder.record(model, (torch.tensor([[1, 2, 3]]),), {"past_key_values": cache, "use_cache": True})

    assert cache.get_seq_length() == 3  # the forward filled the caller's cache in place
    (graph,) = recorder.graph_specs()
    assert [t.path for t in graph.inputs] == ["input_ids"]  # an empty cache has no tensors to pass
    assert "DynamicCache" not in graph.description
    assert not any("DynamicCache" in value for value in graph.constants.values())  # not baked in as an object
    (sample,) = recorder.samples(graph)
    stored = sample.kwargs["past_key_values"]
    assert isinstance(stored, DynamicCache) and stored is not cache and stored.get_seq_length() == 0


class _Appender(torch.nn.Module):
    """Appends its input to the list it is given and scales by the list's length: a call run twice on
    one list object answers differently the second time."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, seen: list) -> torch.Tensor:
        seen.append(x)
        return self.linear(x) * len(seen)


def test_tuning_runs_every_recorded_call_as_it_was_given_although_the_forward_fills_an_argument(unique_name):
    import copy

    from aitune_triton import Module, OneBackendStrategy

    net = _Appender().eval()
    twin = copy.deepcopy(net)
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with torch.no_grad():
        for batch in (1, 2, 4):
            module(torch.randn(batch, 3), seen=[])

    module.tune()  # the batch check, eager references and the backend check each run every call again
    x = torch.randn(3, 3)
    with torch.no_grad():
        torch.testing.assert_close(module(x, seen=[]), twin(x, seen=[]), atol=1e-5, rtol=1e-5)
