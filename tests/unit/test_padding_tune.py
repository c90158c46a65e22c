"""Padding invariance at tune time, its storage and export, and padded_calls() in process.

Two real nets tuned with ONNX Runtime: MaskedMeanNet (padding changes nothing: accepted) and
LeakyMeanNet (its mean counts pad positions: refused). Both take int64 ``input_ids`` and a 0/1
``attention_mask`` of lengths 3..12, batch declared 1..8.
"""

from __future__ import annotations

import copy

import pytest
import torch
from nets import LeakyMeanNet, MaskedMeanNet, record_token_calls

import aitune_triton
from aitune_triton import BatchDim, Module, OneBackendStrategy, padded_calls
from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError
from aitune_triton.module.description import TunedDescription
from aitune_triton.module.padding import PaddingCheck, check_padded_backend, check_padding_eager
from aitune_triton.spec import flatten_call, flatten_output
from aitune_triton.strategies.report import report_table
from aitune_triton.triton.config import TritonModelOptions, graph_model_config
from aitune_triton.triton.io import ModelIO


def _tuned(cls, name, cache_dir, pad_values=None):
    torch.manual_seed(0)
    module = Module(
        cls().eval(),
        name=name,
        strategy=OneBackendStrategy("onnxruntime"),
        cache_dir=cache_dir,
        dynamic_shapes={"input_ids": {0: BatchDim(1, 8)}},
        pad_values=pad_values,
    )
    record_token_calls(module)
    module.tune()
    return module


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return _tuned(MaskedMeanNet, "padding_masked", tmp_path_factory.mktemp("masked"), pad_values={"input_ids": 0})


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    return _tuned(LeakyMeanNet, "padding_leaky", tmp_path_factory.mktemp("leaky"))


def _calls(lengths, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(1, 32, (1, n), generator=generator), "attention_mask": torch.ones(1, n, dtype=torch.int64)}
        for n in lengths
    ]


def _eager(module):
    """The wrapped net as a plain eager module (a copy runs its own forward, not the tuned backend)."""
    return copy.deepcopy(module.module)


def _close(actual, expected):
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert (actual[key] - expected[key]).abs().max().item() <= 1e-4, key


def test_a_mask_respecting_net_is_accepted_with_its_pad_values_axes_and_cut_outputs(masked):
    check = PaddingCheck.from_dict(masked.tuned_graphs[0].spec.padding)
    assert check.held, check.reason
    layout = check.layout
    assert layout.input_names == ("input_ids", "attention_mask") and layout.input_axes == (1, 1)
    assert layout.pad_values == (0, 0) and layout.masks == (False, True)
    assert layout.output_names == ("states", "pooled") and layout.output_axes == (1, None)
    assert (layout.min_length, layout.max_length) == (3, 12)
    assert "tuned backend on a padded batch" in check.reason


def test_a_net_whose_output_changes_when_padding_leaks_is_refused_and_the_report_says_why(leaky):
    entry = leaky.tuned_graphs[0]
    check = PaddingCheck.from_dict(entry.spec.padding)
    assert not check.held
    assert "pooled: max abs diff" in check.reason and "padding would change results" in check.reason
    assert entry.report.padding.startswith("padding not used (axis ")
    assert "padding not used" in str(report_table(entry.report).caption)


def test_the_report_line_names_pad_values_and_the_outputs_cut_back(masked):
    line = masked.tuned_graphs[0].report.padding
    assert line.startswith("padding used (axis ") and "input_ids=0, attention_mask=0" in line and "cut back: states" in line
    assert "padding used" in str(report_table(masked.tuned_graphs[0].report).caption)


def test_padding_survives_the_description_and_a_checkpoint(masked, tmp_path):
    description = TunedDescription.from_dict(masked.to_dict())
    assert description.graphs[0].graph.padding == masked.tuned_graphs[0].spec.padding
    assert description.to_dict() == masked.to_dict()
    path = aitune_triton.save(masked, tmp_path / "checkpoint")
    loaded = aitune_triton.load(MaskedMeanNet().eval(), path, name="padding_masked_loaded")
    assert loaded.tuned_graphs[0].spec.padding == masked.tuned_graphs[0].spec.padding
    assert loaded.tuned_graphs[0].report.padding == masked.tuned_graphs[0].report.padding


def test_a_description_written_before_padding_was_checked_still_loads_and_exports_without_padding(masked):
    old = copy.deepcopy(masked.to_dict())
    for entry in old["graphs"]:
        del entry["graph"]["padding"]
        del entry["report"]["padding"]
    description = TunedDescription.from_dict(old)
    assert description.graphs[0].graph.padding is None
    assert description.graphs[0].tune_report().padding == ""
    io = ModelIO.from_graph("old.graph_0", description.graphs[0])
    assert io.padding is None and "padding" not in io.to_dict()
    assert not any(message.allow_ragged_batch for message in graph_model_config(io, TritonModelOptions()).input)


def test_export_sets_allow_ragged_batch_and_io_json_fields_only_where_padding_held(masked, leaky):
    held = ModelIO.from_graph("m.graph_0", TunedDescription.from_dict(masked.to_dict()).graphs[0])
    assert held.max_batch_size == 8
    assert held.padding["input_names"] == ["input_ids", "attention_mask"] and held.padding["output_axes"] == [1, None]
    assert ModelIO.from_dict(held.to_dict()).padding == held.padding
    config = graph_model_config(held, TritonModelOptions())
    assert [(m.name, m.allow_ragged_batch) for m in config.input] == [("input_ids", True), ("attention_mask", True)]
    assert config.HasField("dynamic_batching")
    refused = ModelIO.from_graph("l.graph_0", TunedDescription.from_dict(leaky.to_dict()).graphs[0])
    assert refused.padding is None and refused.max_batch_size == 8
    assert not any(m.allow_ragged_batch for m in graph_model_config(refused, TritonModelOptions()).input)


def test_padded_calls_give_each_call_its_eager_outputs_on_every_leaf(masked):
    calls = _calls((4, 12, 3, 7, 9, 5))
    outputs = padded_calls(masked, calls, max_batch_size=4)
    eager = _eager(masked)
    with torch.no_grad():
        for call, output in zip(calls, outputs):
            _close(output, eager(**call))
    assert padded_calls(masked, []) == []


def test_padded_calls_run_a_call_padding_cannot_take_alone_and_accept_positional_calls(masked):
    calls = _calls((4, 6))
    calls[1]["attention_mask"][0, 4:] = 0  # its pad positions hold data (ids != 0): it runs alone
    positional = [(c["input_ids"], c["attention_mask"]) for c in calls]
    eager = _eager(masked)
    outputs = padded_calls(masked, positional, max_tokens=8)
    assert len(outputs) == len(calls)
    with torch.no_grad():
        for call, output in zip(calls, outputs):
            want = eager(**call)
            assert all(output[key].shape == want[key].shape and torch.allclose(output[key], want[key], atol=1e-4) for key in want)


def test_padded_calls_of_a_refused_graph_spec_run_one_by_one_with_eager_results(leaky):
    calls = _calls((3, 11))
    eager = _eager(leaky)
    outputs = padded_calls(leaky, calls)
    assert len(outputs) == len(calls)
    with torch.no_grad():
        for call, output in zip(calls, outputs):
            want = eager(**call)
            assert all(output[key].shape == want[key].shape and torch.allclose(output[key], want[key], atol=1e-4) for key in want)


@pytest.mark.parametrize(
    "arguments, error, text",
    [
        ({"calls": {"input_ids": 1}}, ArgumentTypeError, "calls: expected a list of calls"),
        ({"calls": [], "max_batch_size": 0}, InvalidArgumentError, "max_batch_size: expected a positive integer"),
        ({"calls": [], "max_tokens": 2.5}, InvalidArgumentError, "max_tokens: expected a positive integer"),
    ],
)
def test_padded_calls_refuse_bad_arguments_naming_them(masked, arguments, error, text):
    with pytest.raises(error, match=text):
        padded_calls(masked, **arguments)


@pytest.mark.parametrize(
    "pad_values, text",
    [
        ([0], "pad_values: expected a mapping"),
        ({"ids": 0}, "pad_values: 'ids' names no parameter of the forward"),
        ({"input_ids": "pad"}, r"pad_values\['input_ids'\]: expected a number"),
        ({3: 0}, "pad_values: expected each key to be an input leaf path"),
    ],
)
def test_module_refuses_bad_pad_values_when_built(pad_values, text, tmp_path):
    with pytest.raises(InvalidArgumentError, match=text):
        Module(MaskedMeanNet(), name="padding_bad", cache_dir=tmp_path, pad_values=pad_values)


class _SumNet(torch.nn.Module):
    """A float sequence summed over its axis: padding with 0.0 changes nothing, with 1.0 it does."""

    def forward(self, x):
        return {"total": x.sum(1), "scaled": x * 2}


def _recorded(pad_values, tmp_path):
    module = Module(_SumNet(), name="padding_sum", cache_dir=tmp_path, pad_values=pad_values)
    module.enable_recording()
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, n, 3, generator=generator) for n in (2, 5, 4)]
    with torch.no_grad():
        for x in inputs:
            module(x)
    graph = module.graph_specs[0]
    calls = [flatten_call(module.signature, (x,), {}) for x in inputs]
    return module, graph, calls


@pytest.mark.parametrize(
    "pad_values, held, text",
    [
        (None, False, "no pad value for input 'x' (float32, not a 0/1 mask); declare it with Module(..., pad_values={'x': ...})"),
        ({"x": 0.0}, True, "3 recorded calls, padded by 1 and to 5"),
        ({"x": 1.0}, False, "total: max abs diff"),
    ],
)
def test_a_float_input_is_padded_only_with_a_declared_value_and_only_where_it_changes_nothing(pad_values, held, text, tmp_path):
    module, graph, calls = _recorded(pad_values, tmp_path)
    check = check_padding_eager(_eager(module).forward, module.signature, graph, calls, module._self_pad_values)
    assert check is not None and check.held is held and text in check.reason, check


def test_the_tuned_backend_is_checked_on_a_padded_batch_against_each_calls_eager_outputs(masked):
    """check_padded_backend() with a leaky net's forward standing for the tuned backend: refused."""
    eager = _eager(masked)
    leaky_net = LeakyMeanNet().eval()
    leaky_net.load_state_dict(eager.state_dict())
    graph = masked.tuned_graphs[0].spec
    layout = PaddingCheck.from_dict(graph.padding).layout
    calls = [flatten_call(masked.signature, (), call) for call in _calls((3, 6, 9))]

    def leaky_infer(call):
        return flatten_output(leaky_net(*call.args, **call.kwargs)).tensors

    def masked_infer(call):  # the tuned ONNX Runtime backend, through the tuned module
        return flatten_output(masked(*call.args, **call.kwargs)).tensors

    problem = check_padded_backend(leaky_infer, eager.forward, masked.signature, graph, calls, layout)
    assert problem is not None and "3 recorded calls of lengths [3, 6, 9] padded into one batch: pooled" in problem
    assert check_padded_backend(masked_infer, eager.forward, masked.signature, graph, calls, layout) is None


class _TypedNet(MaskedMeanNet):
    """MaskedMeanNet with BERT's third input, token type ids (all 0 for one segment)."""

    def __init__(self) -> None:
        super().__init__()
        self.types = torch.nn.Embedding(2, 8)

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        states = torch.tanh(self.proj(self.embed(input_ids) + self.types(token_type_ids))) * mask
        return {"states": states, "pooled": states.sum(1) / mask.sum(1).clamp(min=1.0)}


def test_token_type_ids_get_0_proposed_but_only_the_attention_mask_marks_pad_positions(tmp_path):
    from aitune_triton.module.padding import padding_layout
    from aitune_triton.served.padding import request_problem

    module = Module(_TypedNet().eval(), name="padding_typed", cache_dir=tmp_path)
    module.enable_recording()
    recorded = []
    with torch.no_grad():
        for length in (3, 6, 4):
            call = {
                "input_ids": torch.randint(1, 32, (1, length)),
                "attention_mask": torch.ones(1, length, dtype=torch.int64),
                "token_type_ids": torch.zeros(1, length, dtype=torch.int64),
            }
            module(**call)
            recorded.append(flatten_call(module.signature, (), call))
    layout, reason = padding_layout(module.graph_specs[0], recorded, {})
    assert reason == "" and layout.pad_values == (0, 0, 0) and layout.masks == (False, True, False)
    assert request_problem(layout, [t.numpy() for t in recorded[0].flat.tensors]) is None
    check = check_padding_eager(_eager(module).forward, module.signature, module.graph_specs[0], recorded, {})
    assert check.held, check.reason


def _graph_model(module, root):
    """The exported single-graph model of ``module``, run directly by the served GraphModel class
    against the pb_utils stand-in, with every artifact run recorded (the rows and length it got)."""
    import json

    import pb_utils_standin as pb_utils

    from aitune_triton.served.graph_model import GraphModel
    from aitune_triton.triton.exporter import export

    export(module, root, show_progress=False)
    args = {"model_repository": str(root / module.name), "model_version": "1", "model_name": module.name,
            "model_config": json.dumps({}), "model_instance_kind": "CPU", "model_instance_device_id": "0"}
    graph = GraphModel(pb_utils, args, "onnxruntime", "model.onnx", {})
    runs: list[tuple[int, ...]] = []
    run = graph.run

    def recorded(values):
        runs.append(tuple(values[0].shape))
        return run(values)

    graph.run = recorded
    return graph, runs


def _served_request(call):
    import pb_utils_standin as pb_utils

    tensors = [pb_utils.Tensor(name, value.numpy()) for name, value in call.items()]
    return pb_utils.InferenceRequest(model_name="", inputs=tensors, requested_output_names=[])


def test_the_served_graph_model_pads_requests_of_different_lengths_into_one_run_and_refuses_bad_ones_alone(masked, tmp_path):
    import pb_utils_standin as pb_utils

    import dataclasses

    graph, runs = _graph_model(masked, tmp_path / "repo")
    assert graph.padding is not None
    # The measured cost of a run decides splits (tested in test_padding_served); here one run is asked for.
    graph.padding = dataclasses.replace(graph.padding, run_overhead_tokens=None)
    calls = _calls((4, 12, 3, 7, 9, 5))
    not_a_mask = {"input_ids": calls[0]["input_ids"], "attention_mask": calls[0]["attention_mask"] * 2}
    data_in_pads = {"input_ids": calls[1]["input_ids"], "attention_mask": calls[1]["attention_mask"].clone()}
    data_in_pads["attention_mask"][0, -3:] = 0  # its last 3 positions are pads, yet their ids are not the pad id 0
    responses = graph.execute([_served_request(call) for call in [*calls[:3], not_a_mask, *calls[3:], data_in_pads]])

    assert runs == [(6, 12)]  # six lengths, one run padded to the longest
    refused = {3: "attention_mask", 7: "input_ids"}
    for index, name in refused.items():
        error = responses[index].error()
        assert error.code() == pb_utils.TritonError.INVALID_ARG and repr(name) in error.message(), error.message()
    answered = [response for index, response in enumerate(responses) if index not in refused]
    eager = _eager(masked)
    with torch.no_grad():
        for call, response in zip(calls, answered):
            assert response.error() is None
            got = {tensor.name(): torch.from_numpy(tensor.as_numpy()) for tensor in response.output_tensors()}
            _close(got, eager(**call))
    graph.finalize()


def test_the_served_graph_model_of_a_refused_graph_spec_runs_each_length_on_its_own(leaky, tmp_path):
    graph, runs = _graph_model(leaky, tmp_path / "repo")
    calls = _calls((4, 12, 4, 7))
    responses = graph.execute([_served_request(call) for call in calls])

    assert sorted(runs) == [(1, 7), (1, 12), (2, 4)]  # equal shapes still join; nothing is padded
    eager = _eager(leaky)
    with torch.no_grad():
        for call, response in zip(calls, responses):
            got = {tensor.name(): torch.from_numpy(tensor.as_numpy()) for tensor in response.output_tensors()}
            _close(got, eager(**call))
    graph.finalize()


def _recorded_with_pads(pad_fill, tmp_path):
    """MaskedMeanNet recorded at batch 2 with the second row's last 2 positions masked, holding ``pad_fill``
    there (a tokenizer's pad id), or random ids when ``pad_fill`` is None."""
    module = Module(MaskedMeanNet().eval(), name="padding_recorded_pads", cache_dir=tmp_path)
    module.enable_recording()
    generator = torch.Generator().manual_seed(3)
    calls = []
    for n in (4, 6, 9):
        ids = torch.randint(2, 32, (2, n), generator=generator)
        mask = torch.ones(2, n, dtype=torch.int64)
        mask[1, -2:] = 0
        ids[1, -2:] = pad_fill if pad_fill is not None else torch.randint(2, 32, (2,), generator=generator)
        with torch.no_grad():
            module(ids, mask)
        calls.append(flatten_call(module.signature, (ids, mask), {}))
    return module, module.graph_specs[0], calls


def test_the_pad_value_proposed_for_ids_beside_a_mask_is_the_one_the_recorded_calls_hold_at_pad_positions(tmp_path):
    module, graph, calls = _recorded_with_pads(1, tmp_path)  # a RoBERTa-style pad id 1
    check = check_padding_eager(_eager(module).forward, module.signature, graph, calls, {})
    assert check is not None and check.held, check
    assert check.layout.pad_values == (1, 0)


def test_recorded_calls_holding_data_at_pad_positions_leave_padding_unused_and_say_what_to_declare(tmp_path):
    module, graph, calls = _recorded_with_pads(None, tmp_path)
    check = check_padding_eager(_eager(module).forward, module.signature, graph, calls, {})
    assert check is not None and not check.held
    assert "would be refused by the served padding checks" in check.reason and "pad_values" in check.reason


def test_the_served_graph_model_splits_requests_into_runs_by_the_measured_cost_of_a_run(masked, tmp_path):
    import dataclasses

    graph, runs = _graph_model(masked, tmp_path / "repo")
    assert graph.padding is not None
    graph.padding = dataclasses.replace(graph.padding, run_overhead_tokens=4.0)
    calls = _calls((3, 12, 4, 11))
    responses = graph.execute([_served_request(call) for call in calls])

    assert runs == [(2, 4), (2, 12)]  # 2 x 4 + 2 x 12 + 2 runs x 4 = 40 positions, against 4 x 12 + 4 = 52
    eager = _eager(masked)
    with torch.no_grad():
        for call, response in zip(calls, responses):
            got = {tensor.name(): torch.from_numpy(tensor.as_numpy()) for tensor in response.output_tensors()}
            _close(got, eager(**call))
    graph.finalize()
