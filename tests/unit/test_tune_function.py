"""aitune_triton.tune(func, dataset, ...): AITune's dataset semantics, batching, options and failures.

Calls are observed with a plain recording function where only the calling convention matters,
with ``module.graph_specs`` where recording matters, and with real ONNX Runtime tuning compared
against eager PyTorch where tuning matters.
"""

from __future__ import annotations

import gc
import itertools
import logging

import pytest
import torch
from nets import TwoInputNet, eager
from torch.utils.data import Dataset, IterableDataset

import aitune_triton
from aitune_triton import Module, ModuleState, OneBackendStrategy
from aitune_triton.backends import EagerBackend, OnnxRuntimeBackend, register_backend
from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError

EAGER = OneBackendStrategy("eager")
ORT = OneBackendStrategy(OnnxRuntimeBackend())


class FailingBackend(EagerBackend):
    """A real backend whose build raises, as a failing export would."""

    name = "test_tune_function_fails"

    def _build(self, context):
        raise RuntimeError("this backend never builds")


register_backend(FailingBackend)
FAILS = OneBackendStrategy("test_tune_function_fails")


@pytest.fixture(autouse=True)
def no_stray_modules():
    """tune() acts on every live Module: drop leftovers of earlier tests first."""
    gc.collect()
    yield
    gc.collect()


class Calls:
    """A pipeline that records how it was called: ``(args, kwargs)`` per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))


def _linear(seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3).eval()


# ------------------------------------------------------------------------------ what a dataset is
def test_a_tensor_dataset_is_one_sample_not_an_iterable(unique_name):
    module = Module(_linear(), name=unique_name, strategy=EAGER)

    aitune_triton.tune(module, torch.randn(5, 4), dry_run=True)

    (graph,) = module.graph_specs
    assert graph.num_calls == 1 and graph.inputs[0].max_shape == (5, 4)


def test_a_tuple_dataset_is_one_sample_passed_as_positional_arguments():
    func = Calls()
    x, y = torch.randn(2, 8), torch.randn(2, 4)

    aitune_triton.tune(func, (x, y))

    ((args, kwargs),) = func.calls
    assert len(args) == 2 and args[0] is x and args[1] is y and kwargs == {}


def test_a_dict_dataset_is_one_sample_passed_as_keyword_arguments(unique_name, two_input_net):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)

    aitune_triton.tune(module, {"x": torch.randn(2, 8), "y": torch.randn(2, 4)}, dry_run=True)

    (graph,) = module.graph_specs
    assert graph.num_calls == 1 and [t.path for t in graph.inputs] == ["x", "y"]


def test_a_list_dataset_is_a_list_of_samples_each_called_by_its_kind():
    func = Calls()
    a, b, c = torch.randn(3), torch.randn(3), torch.randn(3)

    aitune_triton.tune(func, [a, (a, b), {"x": c}, "a prompt"])

    assert [(len(args), sorted(kwargs)) for args, kwargs in func.calls] == [(1, []), (2, []), (0, ["x"]), (1, [])]
    assert func.calls[0][0][0] is a and func.calls[1][0][1] is b and func.calls[2][1]["x"] is c
    assert func.calls[3][0] == ("a prompt",)


class EndlessIndexDataset(Dataset):
    """A map-style dataset of 3 samples whose ``__getitem__`` never raises ``IndexError``.

    Iterating it with the sequence protocol (``list(dataset)``) never ends; the read counter
    raises after 10_000 reads so that a regression fails instead of hanging.
    """

    def __init__(self) -> None:
        self.reads: list[int] = []

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> torch.Tensor:
        self.reads.append(index)
        if len(self.reads) > 10_000:
            raise RuntimeError("read 10_000 samples of a 3-sample dataset: it was iterated, not read by len() and index")
        return torch.full((4,), float(index))


def test_a_map_style_dataset_is_read_by_len_and_index_even_when_getitem_never_raises():
    dataset = EndlessIndexDataset()
    func = Calls()

    aitune_triton.tune(func, dataset)

    assert dataset.reads == [0, 1, 2]
    assert [args[0][0].item() for args, _ in func.calls] == [0.0, 1.0, 2.0]


def test_a_tensor_dataset_of_pairs_calls_func_with_each_pair():
    func = Calls()
    xs, ys = torch.randn(3, 8), torch.randn(3, 4)

    aitune_triton.tune(func, torch.utils.data.TensorDataset(xs, ys))

    assert len(func.calls) == 3
    assert all(len(args) == 2 and torch.equal(args[1], ys[i]) for i, (args, _) in enumerate(func.calls))


class CountingIterable(IterableDataset):
    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self):
        return (torch.full((4,), float(i)) for i in range(self.count))


@pytest.mark.parametrize("make", [lambda: CountingIterable(3), lambda: (torch.full((4,), float(i)) for i in range(3))])
def test_an_iterable_dataset_or_a_generator_is_iterated(make):
    func = Calls()

    aitune_triton.tune(func, make(), batch_sizes=[1, 2])

    assert [args[0].shape[0] for args, _ in func.calls] == [1, 1, 1, 2]  # a generator is read once, used for both


# ------------------------------------------------------------------------------------ batching
def test_the_canonical_call_records_batches_of_one_and_eight_and_tunes_a_range_from_one_to_eight(unique_name):
    net = _linear()
    model = Module(net, name=unique_name, strategy=ORT)
    sample = torch.randn(4)

    results = aitune_triton.tune(model, sample, batch_sizes=[1, 8])

    assert results[unique_name] == "tuned" and model.state is ModuleState.TUNED
    (graph,) = model.graph_specs
    assert graph.num_calls == 2
    (x_spec,) = graph.inputs
    assert (x_spec.min_shape, x_spec.max_shape, x_spec.batch_axis) == ((1, 4), (8, 4), 0)
    x = torch.randn(5, 4)  # a batch size never recorded, inside 1..8
    with torch.no_grad():
        torch.testing.assert_close(model(x), eager(net)(x), atol=1e-5, rtol=1e-5)


def test_samples_are_stacked_along_a_new_axis_even_when_they_have_a_batch_axis_already():
    func = Calls()

    aitune_triton.tune(func, [torch.randn(1, 4) for _ in range(4)], batch_sizes=[2])

    assert [tuple(args[0].shape) for args, _ in func.calls] == [(2, 1, 4), (2, 1, 4)]


def test_a_dataset_smaller_than_a_batch_is_cycled_to_fill_it():
    func = Calls()

    aitune_triton.tune(func, [torch.tensor(float(i)) for i in range(3)], batch_sizes=[8])

    ((args, _),) = func.calls
    assert args[0].tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0]


def test_the_last_incomplete_batch_is_dropped():
    func = Calls()

    aitune_triton.tune(func, [torch.tensor(float(i)) for i in range(5)], batch_sizes=[2])

    assert [args[0].tolist() for args, _ in func.calls] == [[0.0, 1.0], [2.0, 3.0]]


def test_max_num_batches_per_batch_size_caps_the_calls_of_each_batch_size():
    func = Calls()

    aitune_triton.tune(func, [torch.randn(4) for _ in range(10)], batch_sizes=[1, 2], max_num_batches_per_batch_size=3)

    assert [args[0].shape[0] for args, _ in func.calls] == [1, 1, 1, 2, 2, 2]


def test_max_num_batches_per_batch_size_caps_the_samples_called_without_batch_sizes():
    func = Calls()

    aitune_triton.tune(func, [torch.randn(4) for _ in range(10)], max_num_batches_per_batch_size=2)

    assert len(func.calls) == 2


def test_max_num_batches_per_batch_size_reads_an_endless_iterable_only_as_far_as_the_batches_need():
    reads = itertools.count()

    def endless():
        for read in reads:
            if read > 10_000:  # a regression that reads to the end fails here instead of hanging
                raise RuntimeError("read 10_000 samples of an endless iterable: it was read to its end")
            yield torch.full((4,), float(read))

    func = Calls()

    aitune_triton.tune(func, endless(), batch_sizes=[2, 4], max_num_batches_per_batch_size=2)

    assert [args[0].shape[0] for args, _ in func.calls] == [2, 2, 4, 4]
    assert next(reads) == 8  # 2 batches of 4 need 8 samples; nothing more was read


def test_dict_samples_are_collated_per_key_and_passed_as_keyword_arguments(unique_name, two_input_net):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    dataset = [{"x": torch.randn(8), "y": torch.randn(4)} for _ in range(3)]

    aitune_triton.tune(module, dataset, batch_sizes=[1, 3], dry_run=True)

    (graph,) = module.graph_specs
    assert graph.num_calls == 3 + 1
    assert [(t.path, t.min_shape, t.max_shape) for t in graph.inputs] == [("x", (1, 8), (3, 8)), ("y", (1, 4), (3, 4))]


def test_tuple_samples_are_collated_per_position_and_passed_as_positional_arguments():
    func = Calls()

    aitune_triton.tune(func, [(torch.randn(8), torch.randn(4))] * 2, batch_sizes=[2])

    ((args, kwargs),) = func.calls
    assert [tuple(a.shape) for a in args] == [(2, 8), (2, 4)] and kwargs == {}


def test_samples_that_cannot_be_stacked_are_a_clear_error_and_modules_get_their_state_back(unique_name):
    module = Module(_linear(), name=unique_name, strategy=EAGER)

    expected = r"dataset: samples \[0, 1\] cannot be collated into a batch of 2"
    with pytest.raises(InvalidArgumentError, match=expected) as caught:
        aitune_triton.tune(module, [torch.randn(4), torch.randn(5)], batch_sizes=[2])

    assert "stack expects each tensor to be equal size" in str(caught.value) and "batch_sizes=None" in str(caught.value)
    assert module.state is ModuleState.INIT


def test_a_dict_sample_with_a_key_that_is_not_a_string_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match=r"sample 0 is a dict, passed as keyword arguments .* got key 0 \(int\)"):
        aitune_triton.tune(Calls(), [{0: torch.randn(4)}])


# ------------------------------------------------------------------------------------ func
def test_func_may_be_a_plain_module_holding_wrapped_submodules(unique_name):
    torch.manual_seed(3)
    encoder, head = torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)
    model = torch.nn.Sequential(encoder, torch.nn.ReLU(), head).eval()
    model[0] = Module(encoder, name=f"{unique_name}_encoder", strategy=ORT)
    model[2] = Module(head, name=f"{unique_name}_head", strategy=EAGER)

    results = aitune_triton.tune(model, [torch.randn(4) for _ in range(4)], batch_sizes=[1, 4])

    assert results == {f"{unique_name}_encoder": "tuned", f"{unique_name}_head": "tuned"}
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), eager(head)(torch.relu(eager(encoder)(x))), atol=1e-5, rtol=1e-5)


def test_a_func_that_is_not_callable_is_refused():
    with pytest.raises(ArgumentTypeError, match=r"func: expected a callable .* got list"):
        aitune_triton.tune([1, 2], [torch.randn(4)])


# --------------------------------------------------------------------------- failing modules
def test_with_ignore_failing_modules_false_the_first_failure_raises_and_untuned_modules_get_their_earlier_state_back(
    unique_name, caplog
):
    first = Module(_linear(1), name=f"{unique_name}_a", strategy=EAGER)
    failing = Module(_linear(2), name=f"{unique_name}_b", strategy=FAILS)
    after = Module(_linear(3), name=f"{unique_name}_c", strategy=EAGER)
    after.enable_passthrough()
    after.enable_recording()  # a Module already recording keeps recording

    def pipeline(x):
        return first(x) + failing(x) + after(x)

    with caplog.at_level(logging.ERROR, logger="aitune_triton"):
        with pytest.raises(RuntimeError, match="this backend never builds"):
            aitune_triton.tune(pipeline, [torch.randn(4)], batch_sizes=[1, 2], ignore_failing_modules=False)

    assert (first.state, failing.state, after.state) == (ModuleState.TUNED, ModuleState.INIT, ModuleState.RECORDING)
    assert failing.graph_specs[0].num_calls == 2  # its recorded calls are kept for a later failing.tune()
    assert any(failing.name in r.getMessage() and "ignore_failing_modules=False" in r.getMessage() for r in caplog.records)


def test_by_default_a_failing_module_is_left_in_passthrough_and_the_next_ones_are_still_tuned(unique_name):
    failing_net = _linear(2)
    failing = Module(failing_net, name=f"{unique_name}_a", strategy=FAILS)
    later = Module(_linear(3), name=f"{unique_name}_b", strategy=EAGER)

    results = aitune_triton.tune(lambda x: failing(x) + later(x), [torch.randn(4)], batch_sizes=[1, 2])

    assert results[failing.name].startswith("failed: ") and results[later.name] == "tuned"
    assert (failing.state, later.state) == (ModuleState.PASSTHROUGH, ModuleState.TUNED)


# ----------------------------------------------------------------------------- bad arguments
def test_an_unknown_keyword_argument_is_refused_naming_it_and_the_accepted_ones():
    func = Calls()

    with pytest.raises(InvalidArgumentError) as caught:
        aitune_triton.tune(func, [torch.randn(4)], batch_size=8)

    message = str(caught.value)
    assert message.startswith("batch_size: tune() got an unexpected keyword argument batch_size=8")
    assert "accepted arguments: func, dataset, batch_sizes, max_num_batches_per_batch_size" in message
    assert "Did you mean batch_sizes=...?" in message and func.calls == []


def test_an_aitune_option_without_a_counterpart_is_refused_saying_what_to_do_instead():
    with pytest.raises(InvalidArgumentError, match=r"clear_cache: AITune's tune\(\) option has no counterpart .* cache_dir"):
        aitune_triton.tune(Calls(), [torch.randn(4)], clear_cache=True)


def test_aitune_disable_external_logging_is_accepted_and_ignored_with_a_warning(unique_name):
    module = aitune_triton.Module(torch.nn.Linear(4, 2).eval(), name=unique_name, strategy=aitune_triton.OneBackendStrategy("eager"))
    with pytest.warns(UserWarning, match=r"disable_external_logging: AITune's tune\(\) option is accepted and ignored"):
        results = aitune_triton.tune(module, [torch.randn(4)], batch_sizes=[1, 2], disable_external_logging=True)
    assert results == {unique_name: "tuned"} and module.state is aitune_triton.ModuleState.TUNED


@pytest.mark.parametrize("batch_sizes", [[0], [1, -2], [True], [1.5], 8, "18", ()])
def test_batch_sizes_that_are_not_positive_integers_are_refused_before_anything_runs(batch_sizes, unique_name):
    module = Module(_linear(), name=unique_name, strategy=EAGER)

    expected = r"batch_sizes: expected .*positive integers.*Pass e\.g\. batch_sizes=\[1, 8\]"
    with pytest.raises(InvalidArgumentError, match=expected):
        aitune_triton.tune(module, [torch.randn(4)], batch_sizes=batch_sizes)

    assert module.state is ModuleState.INIT and module._recorded_calls() == 0


@pytest.mark.parametrize("cap", [0, -1, 2.0, True])
def test_max_num_batches_per_batch_size_that_is_not_a_positive_integer_is_refused(cap):
    func = Calls()

    expected = r"max_num_batches_per_batch_size: expected None \(every batch\) or a positive integer"
    with pytest.raises(InvalidArgumentError, match=expected):
        aitune_triton.tune(func, [torch.randn(4)], batch_sizes=[1], max_num_batches_per_batch_size=cap)

    assert func.calls == []


@pytest.mark.parametrize(
    "dataset, said",
    [
        ([], "the list is empty"),
        (iter([]), "yielded no sample"),
        (CountingIterable(0), "yielded no sample"),
        (torch.utils.data.TensorDataset(torch.empty(0, 4)), "the TensorDataset is empty"),
        (None, "got None"),
    ],
)
def test_an_empty_dataset_or_none_is_refused(dataset, said):
    with pytest.raises(InvalidArgumentError, match=f"dataset: .*{said}"):
        aitune_triton.tune(Calls(), dataset)


def test_a_dataset_with_neither_len_nor_iter_is_refused_instead_of_read_forever():
    class NoEnd(Dataset):
        reads = 0

        def __getitem__(self, index):
            type(self).reads += 1
            if self.reads > 10_000:  # a regression that iterates it fails here instead of hanging
                raise RuntimeError("read 10_000 samples of a dataset without an end")
            return torch.randn(4)

    with pytest.raises(InvalidArgumentError, match="has __getitem__ but neither __len__ nor __iter__"):
        aitune_triton.tune(Calls(), NoEnd())


@pytest.mark.parametrize("option", ["ignore_failing_modules", "dry_run"])
def test_flags_that_are_not_booleans_are_refused(option):
    with pytest.raises(ArgumentTypeError, match=f"{option}: expected True or False, got 'no'"):
        aitune_triton.tune(Calls(), [torch.randn(4)], **{option: "no"})


def test_an_unknown_device_is_refused_before_anything_runs():
    func = Calls()

    with pytest.raises(InvalidArgumentError, match="device: expected None .* got 'gpu0'"):
        aitune_triton.tune(func, [torch.randn(4)], device="gpu0")

    assert func.calls == []
