"""The Module API, complete: one test (or more) per behaviour of ``aitune_triton.Module``, named as a sentence.

Behaviours already covered exactly by tests/unit/test_wrapper.py, test_checkpoint.py or
test_recording.py are not repeated here.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import shutil
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

import aitune_triton
from aitune_triton import BatchDim, DynamicDim, Module, ModuleState, OneBackendStrategy, TuneStrategy
from aitune_triton.backends import EagerBackend, register_backend
from aitune_triton.checkpoint import MANIFEST_NAME
from aitune_triton.errors import (
    ArgumentTypeError,
    CheckpointError,
    GraphSpecMismatchError,
    InvalidNameError,
    ModuleStateError,
    NoSamplesError,
    RecordingError,
    TuningError,
)
from aitune_triton.module.wrapper import STATE_DICT_KEY
from aitune_triton.strategies import default_strategy
from nets import eager

EAGER = OneBackendStrategy("eager")
ORT = OneBackendStrategy("onnxruntime")


# ---------------------------------------------------------------------------- test backends
class ExplodingBackend(EagerBackend):
    """A real backend whose build raises a plain (non-aitune) RuntimeError."""

    name = "test_module_api_explodes"

    def _build(self, context):
        raise RuntimeError("boom: this backend never builds")


class MarkerBackend(EagerBackend):
    """Runs eagerly under its own name, so a test can see which strategy picked it."""

    name = "test_module_api_marker"


class CallsWrapperBackend(EagerBackend):
    """While building, calls the wrapper being tuned (as a tuner running the model through it would)."""

    name = "test_module_api_calls_wrapper"
    target = None
    outputs: list = []

    def _build(self, context):
        type(self).outputs.append(type(self).target(*context.example.args, **context.example.kwargs))
        super()._build(context)


for _backend in (ExplodingBackend, MarkerBackend, CallsWrapperBackend):
    register_backend(_backend)

MARKER = OneBackendStrategy("test_module_api_marker")
EXPLODES = OneBackendStrategy("test_module_api_explodes")


class RaisingStrategy(TuneStrategy):
    """A strategy whose tune() raises a non-aitune exception straight through Module.tune()."""

    def candidates(self):
        return [EagerBackend()]

    def tune(self, context):
        raise KeyError("strategy exploded")


# ------------------------------------------------------------------------------------ nets
class Lin(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x)

    def describe(self) -> str:
        return f"Lin({self.lin.in_features}->{self.lin.out_features})"


# Kept outside the module: exporting (torch.export, non-strict) replaces list attributes of the
# module with copies, so a list held as an attribute would stop receiving the runs.
_RUNS: dict[str, list] = {}


class CountingLin(Lin):
    """Lin that appends the input shape of every run of its own forward to ``calls``."""

    def __init__(self, calls: list) -> None:
        super().__init__()
        self.runs_key = f"runs-{id(calls)}"
        _RUNS[self.runs_key] = calls

    def forward(self, x):
        _RUNS[self.runs_key].append(tuple(x.shape))
        return self.lin(x)


class Parent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.enc = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.enc(x)) * 2.0


class AnyInputNet(torch.nn.Module):
    """Takes any nesting of tensors; only the recording is exercised."""

    def forward(self, inputs, extra=None, scale=1.0):
        leaves = [t for t in pytree.tree_leaves((inputs, extra)) if isinstance(t, torch.Tensor)]
        return sum(t.double().sum() for t in leaves) * scale


class SeqNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x * self.scale + x.sum(-1, keepdim=True)


class InPlaceNet(torch.nn.Module):
    def forward(self, x, extra):
        x.mul_(0.0)
        extra["a"].add_(100.0)
        return x + extra["a"]


class DefaultNamedNet(torch.nn.Module):
    """A class name no other test uses, for default-name tests."""

    def forward(self, x):
        return x + 1


def _record(module, batches=(1, 4), features=4):
    with torch.no_grad():
        for batch in batches:
            module(torch.randn(batch, features))


def _chosen(module) -> list[str]:
    return [g.backend.name for g in module.tuned_graphs]


def _reference(net: Lin, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, net.lin.weight, net.lin.bias)


# ======================================================================== construction: names
def test_name_characters_outside_the_allowed_set_become_underscores(unique_name):
    module = Module(torch.nn.Linear(2, 2), name=f"{unique_name}/a b:c*d?\u00e9.v-1")

    assert module.name == f"{unique_name}_a_b_c_d__.v-1"


@pytest.mark.parametrize("bad", ["", ".", "..", "...."])
def test_empty_or_all_dot_names_are_rejected_with_invalid_name_error(bad):
    with pytest.raises(InvalidNameError, match="name: expected a non-empty name that is not only dots") as info:
        Module(torch.nn.Linear(2, 2), name=bad)

    assert isinstance(info.value, ValueError)


def test_two_names_that_sanitize_to_the_same_name_collide(unique_name):
    first = Module(torch.nn.Linear(2, 2), name=f"{unique_name}/x")

    with pytest.raises(InvalidNameError, match=f"a live Module is already named '{unique_name}_x'"):
        Module(torch.nn.Linear(2, 2), name=f"{unique_name} x")
    assert first.name == f"{unique_name}_x"


def test_default_name_is_the_class_name_and_a_second_live_module_gets_a_2_suffix(isolated_cache):
    gc.collect()
    first = Module(DefaultNamedNet())
    second = Module(DefaultNamedNet())
    third = Module(DefaultNamedNet())
    names = (first.name, second.name, third.name)
    with torch.no_grad():
        first(torch.ones(1, 2))
        second(torch.ones(1, 2))
    with pytest.raises(InvalidNameError, match="a live Module is already named 'DefaultNamedNet_2'"):
        Module(DefaultNamedNet(), name="DefaultNamedNet_2")  # an explicit duplicate is an error, not a suffix
    samples_dirs = sorted(p.name.split("-samples-")[0] for p in isolated_cache.iterdir())
    del first, second, third
    gc.collect()
    again = Module(DefaultNamedNet())  # the name is free again once its holder is gone
    again_name = again.name
    del again
    gc.collect()

    assert names == ("DefaultNamedNet", "DefaultNamedNet_2", "DefaultNamedNet_3")
    assert samples_dirs == ["DefaultNamedNet", "DefaultNamedNet_2"]  # never one shared cache
    assert again_name == "DefaultNamedNet"


@pytest.mark.parametrize(
    "bad, given",
    [("a string", "str"), (42, "int"), (torch.ones(1), "Tensor"), (None, "NoneType"), (torch.nn.Linear, "type")],
)
def test_a_non_module_argument_raises_type_error_naming_what_was_given(bad, given):
    with pytest.raises(TypeError, match=f"module: expected a torch.nn.Module that is not already wrapped, got {given}$") as info:
        Module(bad)

    assert isinstance(info.value, ArgumentTypeError)


def test_wrapping_an_already_wrapped_torch_module_again_never_silently_disables_the_first_wrapper(unique_name):
    net = Lin().eval()
    first = Module(net, name=f"{unique_name}_first")
    _record(first, batches=(2,))
    try:
        second = Module(net, name=f"{unique_name}_second")
    except (TypeError, ValueError):
        return  # refusing the second wrapper would be fine
    _record(first, batches=(3,))
    del second
    gc.collect()
    _record(first, batches=(5,))

    assert first.state is ModuleState.RECORDING
    assert first.graph_specs[0].num_calls == 3


# ====================================================================== construction: proxying
def test_attribute_access_and_methods_go_to_the_wrapped_module(unique_name):
    net = Lin()
    module = Module(net, name=unique_name)

    assert module.lin is net.lin
    assert module.lin.weight is net.lin.weight
    assert module.describe() == "Lin(4->3)"
    assert isinstance(module, Lin) and isinstance(module, torch.nn.Module)
    module.lin = torch.nn.Linear(4, 5)
    assert net.lin.out_features == 5
    assert module.state is ModuleState.INIT


def test_wrapping_a_torch_module_again_under_the_same_name_retires_the_older_wrapper_loudly(unique_name):
    net = Lin().eval()
    first = Module(net, name=unique_name)
    _record(first, batches=(2,))

    with pytest.warns(UserWarning, match="the older one is retired"):
        second = Module(net, name=unique_name)  # a notebook cell run twice
    _record(second, batches=(3,))

    assert second.graph_specs[0].num_calls == 1
    with pytest.raises(RuntimeError, match="was replaced by a newer Module wrapping the same torch module"):
        first(torch.randn(2, 4))
    with pytest.warns(UserWarning, match="the older one is retired"):
        third = Module(net)  # no name: takes the name of the live wrapper
    assert third.name == unique_name


def test_named_modules_and_parameters_are_those_of_the_wrapped_module(unique_name):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    module = Module(net, name=unique_name)

    assert [(n, m) for n, m in module.named_modules()] == [(n, m) for n, m in net.named_modules()]
    assert [n for n, _ in module.named_modules()] == ["", "0", "1", "2"]
    assert [n for n, _ in module.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(a is b for a, b in zip(module.parameters(), net.parameters()))
    assert len(list(module.parameters())) == 4


def test_to_eval_and_train_return_the_wrapper_and_act_on_the_module(unique_name):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
    module = Module(net, name=unique_name)

    assert module.eval() is module and net.training is False
    assert module.train() is module and net.training is True
    assert module.train(False) is module and net.training is False
    assert module.to("cpu") is module
    assert module.to(torch.float64) is module and net[0].weight.dtype == torch.float64
    assert module.float() is module and net[0].weight.dtype == torch.float32
    assert module.requires_grad_(False) is module and not net[0].weight.requires_grad


def test_getitem_len_and_iteration_work_on_wrapped_module_list_and_module_dict(unique_name):
    layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1)])
    wrapped_list = Module(layers, name=f"{unique_name}_list")
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.ReLU()})
    wrapped_dict = Module(heads, name=f"{unique_name}_dict")

    assert isinstance(wrapped_list, torch.nn.ModuleList)
    assert len(wrapped_list) == 3
    assert wrapped_list[0] is layers[0] and wrapped_list[-1] is layers[2]
    assert list(wrapped_list) == list(layers)
    assert list(wrapped_list[1:]) == [layers[1], layers[2]]

    assert isinstance(wrapped_dict, torch.nn.ModuleDict)
    assert wrapped_dict["a"] is heads["a"]
    assert len(wrapped_dict) == 2 and list(wrapped_dict) == ["a", "b"]
    assert "b" in wrapped_dict and "c" not in wrapped_dict
    wrapped_dict["c"] = torch.nn.Tanh()
    assert isinstance(heads["c"], torch.nn.Tanh)

    sequential = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    wrapped_sequential = Module(sequential, name=f"{unique_name}_seq")
    assert wrapped_sequential[1] is sequential[1] and len(wrapped_sequential) == 2
    assert [type(m) for m in wrapped_sequential] == [torch.nn.Linear, torch.nn.ReLU]


# ============================================================================ hooks in every state
@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_hooks_registered_before_and_after_wrapping_fire_exactly_once_per_call_in_every_state(unique_name, backend):
    net = Lin().eval()
    fired: list[str] = []
    net.register_forward_pre_hook(lambda m, args: fired.append("pre-before"))
    net.register_forward_hook(lambda m, args, out: fired.append("post-before"))
    module = Module(net, name=unique_name, strategy=OneBackendStrategy(backend))
    module.register_forward_pre_hook(lambda m, args: fired.append("pre-after"))
    module.register_forward_hook(lambda m, args, out: fired.append("post-after"))
    once = ["pre-before", "pre-after", "post-before", "post-after"]
    seen: dict[str, list[str]] = {}

    def call(label: str, batch: int) -> None:
        fired.clear()
        with torch.no_grad():
            module(torch.randn(batch, 4))
        seen[label] = list(fired)

    assert module.state is ModuleState.INIT
    call("INIT (first call)", 1)
    assert module.state is ModuleState.RECORDING
    call("RECORDING", 5)
    module.enable_passthrough()
    call("PASSTHROUGH", 3)
    module.enable_recording()
    module.tune()
    assert module.state is ModuleState.TUNED and _chosen(module) == [backend]
    call("TUNED", 4)

    assert seen == {label: once for label in ("INIT (first call)", "RECORDING", "PASSTHROUGH", "TUNED")}


def test_a_pre_hook_that_changes_the_input_is_honoured_by_the_tuned_backend(unique_name):
    net = Lin().eval()
    net.register_forward_pre_hook(lambda m, args: (args[0] * 10.0,))
    module = Module(net, name=unique_name, strategy=ORT)
    _record(module, batches=(1, 5))
    module.tune()
    x = torch.randn(3, 4)

    with torch.no_grad():
        got = module(x)
        want = _reference(net, x * 10.0)

    assert _chosen(module) == ["onnxruntime"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert float((got - _reference(net, x).detach()).abs().max()) > 1e-2  # the hook made a difference


def test_a_forward_hook_that_changes_the_output_is_applied_once_in_every_state(unique_name):
    net = Lin().eval()
    net.register_forward_hook(lambda m, args, out: out + 1000.0)
    module = Module(net, name=unique_name, strategy=ORT)
    results = {}

    def check(label: str, batch: int) -> None:
        x = torch.randn(batch, 4)
        with torch.no_grad():
            results[label] = float((module(x) - (_reference(net, x) + 1000.0)).abs().max())

    check("INIT", 2)
    check("RECORDING", 5)
    module.enable_passthrough()
    check("PASSTHROUGH", 3)
    module.enable_recording()
    module.tune()
    check("TUNED", 4)

    assert _chosen(module) == ["onnxruntime"]
    assert all(diff < 1e-3 for diff in results.values()), results


def test_calling_the_bare_module_goes_through_the_state_as_aitunes_patched_forward_does(unique_name):
    calls: list = []
    net = CountingLin(calls).eval()
    module = Module(net, name=unique_name, strategy=ORT)
    with torch.no_grad():
        module(torch.randn(2, 4))
        module(torch.randn(6, 4))
        net(torch.randn(9, 4))  # the bare module: recorded too

    (graph,) = module.graph_specs
    assert graph.num_calls == 3
    assert (graph.inputs[0].min_shape, graph.inputs[0].max_shape) == ((2, 4), (9, 4))

    module.tune()
    x = torch.randn(3, 4)
    calls.clear()
    with torch.no_grad():
        tuned = module(x)
        bare = net(x)
        assert calls == []  # both ran on ONNX Runtime, not on the Python forward
        module.enable_passthrough(force=True)
        eager = net(x)
        assert calls == [(3, 4)]  # passthrough: the module's own forward
    torch.testing.assert_close(tuned, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bare, eager, atol=1e-5, rtol=1e-5)


# ================================================================== a wrapped submodule in its parent
def test_a_wrapped_submodule_assigned_into_its_parent_runs_the_parent_unchanged(unique_name):
    parent = Parent().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        before = parent(x)
    original = parent.enc

    parent.enc = Module(parent.enc, name=unique_name, strategy=ORT)

    assert isinstance(parent.enc, Module) and parent.enc.module is original
    assert parent.get_submodule("enc") is parent.enc and list(parent.children())[0] is parent.enc
    assert dict(parent.named_modules())["enc.0"] is original[0]
    assert [n for n, _ in parent.named_parameters()] == ["enc.0.weight", "enc.0.bias", "head.weight", "head.bias"]
    with torch.no_grad():
        assert torch.equal(parent(x), before)  # INIT -> RECORDING: eager, same result
        parent(torch.randn(1, 4))
        parent(torch.randn(6, 4))
    assert parent.enc.state is ModuleState.RECORDING
    assert parent.enc.graph_specs[0].num_calls == 3
    parent.enc.tune()
    with torch.no_grad():
        after = parent(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_parent_state_dict_holds_the_weights_and_the_tuned_description_and_loads_into_a_fresh_parent(unique_name):
    parent = Parent().eval()
    parent.enc = Module(parent.enc, name=f"{unique_name}_a", strategy=ORT)
    with torch.no_grad():
        parent(torch.randn(1, 4))
        parent(torch.randn(6, 4))
    parent.enc.tune()

    state = parent.state_dict()

    assert set(state) == {"enc.0.weight", "enc.0.bias", "head.weight", "head.bias", f"enc.{STATE_DICT_KEY}"}
    assert STATE_DICT_KEY == "_aitune_triton"
    assert torch.equal(state["enc.0.weight"], parent.enc[0].weight)
    description = state["enc._aitune_triton"]
    assert description["type"] == "aitune_triton.Module" and description["name"] == f"{unique_name}_a"
    assert [g["backend"]["name"] for g in description["graphs"]] == ["onnxruntime"]

    buffer = io.BytesIO()
    torch.save(state, buffer)  # the description is plain data: it survives a weights-only save/load
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = Parent().eval()
    with torch.no_grad():
        for p in fresh.parameters():
            p.fill_(0.5)  # other weights, so loading them shows
    fresh.enc = Module(fresh.enc, name=f"{unique_name}_b")
    assert fresh.enc.state is ModuleState.INIT

    result = fresh.load_state_dict(state)

    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    assert fresh.enc.state is ModuleState.TUNED
    assert _chosen(fresh.enc) == ["onnxruntime"]
    assert fresh.enc.tuned_graphs[0].backend.artifacts["model"] == parent.enc.tuned_graphs[0].backend.artifacts["model"]
    assert torch.equal(fresh.head.weight, parent.head.weight)
    x = torch.randn(4, 4)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), parent(x), atol=1e-6, rtol=1e-6)
    assert f"enc.{STATE_DICT_KEY}" in state  # the caller's dict is left as it was


def test_to_dict_follows_the_state_dict_destination_prefix_keep_vars_convention(unique_name):
    net = Lin().eval()
    module = Module(net, name=unique_name, strategy=EAGER)
    untuned = Module(Lin(), name=f"{unique_name}_untuned")
    assert list(untuned.state_dict(prefix="inner.")) == ["inner.lin.weight", "inner.lin.bias"]  # no description yet
    _record(module)
    module.tune()

    destination = OrderedDict()
    returned = module.state_dict(destination=destination, prefix="outer.", keep_vars=True)
    positional = module.state_dict(OrderedDict(), "p.", False)

    assert returned is destination
    assert list(destination) == ["outer.lin.weight", "outer.lin.bias", "outer._aitune_triton"]
    assert destination["outer.lin.weight"] is net.lin.weight  # keep_vars=True keeps the Parameter
    assert isinstance(destination["outer.lin.weight"], torch.nn.Parameter)
    assert list(positional) == ["p.lin.weight", "p.lin.bias", "p._aitune_triton"]
    assert not isinstance(positional["p.lin.weight"], torch.nn.Parameter)
    assert positional["p._aitune_triton"] == module.to_dict()


# ======================================================================== states and transitions
def test_init_first_call_starts_recording_so_calling_then_tune_works(unique_name):
    module = Module(Lin().eval(), name=unique_name)
    assert module.state is ModuleState.INIT

    with torch.no_grad():
        module(torch.randn(2, 4))
    assert module.state is ModuleState.RECORDING
    module.tune(strategy=EAGER)

    assert module.state is ModuleState.TUNED and _chosen(module) == ["eager"]


def test_enable_recording_after_passthrough_keeps_every_graph_spec_and_its_samples(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    with torch.no_grad():
        module(torch.randn(2, 8))
        module(torch.randn(3, 8), torch.randn(3, 4))
        module.enable_passthrough()
        module(torch.randn(9, 8))
        module.enable_recording()
        module(torch.randn(4, 8), torch.randn(4, 4))

    graphs = module.graph_specs
    assert [g.num_calls for g in graphs] == [1, 2]
    assert graphs[1].inputs[0].max_shape == (4, 8) and graphs[0].inputs[0].max_shape == (2, 8)
    assert [len(module._self_recorder.samples(g)) for g in graphs] == [1, 2]


def test_tune_from_passthrough_uses_the_earlier_recording(unique_name):
    module = Module(Lin().eval(), name=unique_name, strategy=EAGER)
    _record(module, batches=(2, 3))
    module.enable_passthrough()
    _record(module, batches=(8,))

    module.tune()

    assert module.state is ModuleState.TUNED
    assert module.graph_specs[0].num_calls == 2 and module.graph_specs[0].inputs[0].max_shape == (3, 4)


def test_enable_passthrough_with_force_releases_the_onnxruntime_session_and_recording_restarts_from_scratch(unique_name):
    calls: list = []
    net = CountingLin(calls).eval()
    module = Module(net, name=unique_name, strategy=ORT)
    _record(module, batches=(1, 4))
    module.tune()
    backend = module.tuned_graphs[0].backend

    module.enable_passthrough(force=True)

    assert module.state is ModuleState.PASSTHROUGH
    assert not backend.active and backend._session is None
    with pytest.raises(NoSamplesError):
        module.graph_specs
    calls.clear()
    with torch.no_grad():
        module(torch.randn(7, 4))  # eager, not recorded, no range check
    assert calls == [(7, 4)]
    module.enable_recording()
    _record(module, batches=(2,))
    (graph,) = module.graph_specs
    assert graph.num_calls == 1 and graph.inputs[0].max_shape == (2, 4)


# ============================================================================ strategy precedence
def _record_two_specs(module):
    with torch.no_grad():
        for batch in (1, 3):
            module(torch.randn(batch, 8))
        for batch in (2, 5):
            module(torch.randn(batch, 8), torch.randn(batch, 4))


def test_without_any_strategy_the_documented_default_strategy_is_used(two_input_net, unique_name, capsys):
    module = Module(two_input_net, name=unique_name)
    _record_two_specs(module)

    module.tune(dry_run=True)

    printed = capsys.readouterr().err
    assert default_strategy().describe().startswith("MinLatencyStrategy([")
    assert f"graph_0: {default_strategy().describe()}" in printed
    assert f"graph_1: {default_strategy().describe()}" in printed


def test_constructor_strategies_list_beats_the_strategy_passed_to_tune(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies=[MARKER, EAGER])
    _record_two_specs(module)

    module.tune(strategy=EXPLODES)

    assert _chosen(module) == ["test_module_api_marker", "eager"]


def test_strategies_dict_is_applied_by_graph_name_not_by_dict_order(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies={"graph_1": MARKER, "graph_0": EAGER})
    _record_two_specs(module)

    module.tune()

    assert _chosen(module) == ["eager", "test_module_api_marker"]


def _scout_specs(unique_name):
    """Graph specs of TwoInputNet's two call structures, recorded on another instance."""
    scout = Module(_fresh_two_input_net(), name=f"{unique_name}_scout")
    _record_two_specs(scout)
    specs = scout.graph_specs
    del scout
    gc.collect()
    return specs


def _fresh_two_input_net():
    from nets import TwoInputNet

    torch.manual_seed(0)
    return TwoInputNet().eval()


def test_strategies_dict_keyed_by_input_structure_key_string(two_input_net, unique_name):
    specs = _scout_specs(unique_name)
    module = Module(two_input_net, name=unique_name, strategy=EAGER, strategies={specs[1].key: MARKER})
    _record_two_specs(module)

    module.tune()

    assert _chosen(module) == ["eager", "test_module_api_marker"]


def test_strategies_dict_keyed_by_graph_spec_object(two_input_net, unique_name):
    specs = _scout_specs(unique_name)
    strategies = {specs[1]: MARKER, specs[0]: EAGER}
    module = Module(two_input_net, name=unique_name, strategies=strategies)
    _record_two_specs(module)

    module.tune()

    assert _chosen(module) == ["eager", "test_module_api_marker"]


def test_graphs_missing_from_the_strategies_dict_use_the_tune_strategy(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies={"graph_1": MARKER})
    _record_two_specs(module)

    module.tune(strategy=EAGER)

    assert _chosen(module) == ["eager", "test_module_api_marker"]


def test_graphs_missing_from_the_strategies_dict_use_the_default_strategy_without_any_other(two_input_net, unique_name, capsys):
    module = Module(two_input_net, name=unique_name, strategies={"graph_1": MARKER})
    _record_two_specs(module)

    module.tune(dry_run=True)

    printed = capsys.readouterr().err
    assert f"graph_0: {default_strategy().describe()}" in printed
    assert "graph_1: OneBackendStrategy([test_module_api_marker])" in printed


def test_strategies_dict_with_an_unknown_input_structure_key_raises_value_error(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies={'{"tree": "nothing"}': MARKER})
    _record_two_specs(module)

    with pytest.raises(ValueError, match=r"strategies: 1 key\(s\) name no recorded graph spec") as info:
        module.tune()

    assert "graph_0: x: tensor(float32, rank=2)" in str(info.value)
    assert module.state is ModuleState.RECORDING


# ================================================================================ during tuning
def test_during_tuning_the_original_forward_runs_and_nothing_is_recorded(unique_name):
    calls: list = []
    module = Module(CountingLin(calls).eval(), name=unique_name, strategy=OneBackendStrategy("test_module_api_calls_wrapper"))
    _record(module, batches=(2, 6))
    recorded_before = module.graph_specs[0].num_calls
    runs_before = len(calls)
    CallsWrapperBackend.target, CallsWrapperBackend.outputs = module, []
    try:
        module.tune()
    finally:
        CallsWrapperBackend.target = None

    assert module.state is ModuleState.TUNED
    assert recorded_before == 2
    assert module.graph_specs[0].num_calls == 2  # the tuner's calls (through the wrapper too) were not recorded
    assert module.graph_specs[0].inputs[0].max_shape == (6, 4)
    assert len(calls) > runs_before  # the module's own forward ran for the eager references
    assert [tuple(o.shape) for o in CallsWrapperBackend.outputs] == [(6, 3)]


def test_a_backend_raising_during_tuning_leaves_the_module_recording_and_still_recording(unique_name, isolated_cache):
    module = Module(Lin().eval(), name=unique_name, strategy=EXPLODES)
    _record(module, batches=(1, 4))

    with pytest.raises(TuningError, match="RuntimeError: boom: this backend never builds"):
        module.tune()

    assert module.state is ModuleState.RECORDING
    _record(module, batches=(3,))
    assert module.graph_specs[0].num_calls == 3  # the proxy records again
    assert [p.name for p in isolated_cache.iterdir() if "-samples-" not in p.name] == []  # no tuning leftovers
    with pytest.raises(ModuleStateError):
        module.tuned_graphs


def test_a_strategy_raising_a_plain_exception_propagates_and_the_module_still_records(unique_name, isolated_cache):
    module = Module(Lin().eval(), name=unique_name, strategy=RaisingStrategy())
    _record(module, batches=(1, 4))

    with pytest.raises(KeyError, match="strategy exploded"):
        module.tune()

    assert module.state is ModuleState.RECORDING
    _record(module, batches=(2,))
    assert module.graph_specs[0].num_calls == 3
    assert [p.name for p in isolated_cache.iterdir() if "-samples-" not in p.name] == []


# ===================================================================================== offload
def test_offload_meta_moves_weights_to_meta_after_tuning_with_an_ahead_of_time_backend(unique_name):
    net = Lin().eval()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    module = Module(net, name=unique_name, strategy=ORT, offload="meta")
    _record(module, batches=(1, 5))
    x = torch.randn(3, 4)
    want = _reference(net, x).detach()

    module.tune()

    assert module.tuned_graphs[0].backend.ahead_of_time
    assert all(p.is_meta for p in net.parameters())
    assert module.device == torch.device("meta")
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModuleStateError, match="its weights were offloaded to 'meta' after tuning"):
        module.enable_passthrough(force=True)
    with pytest.raises(RuntimeError, match="offloaded to 'meta'"):
        module.enable_recording(force=True)
    assert module.state is ModuleState.TUNED
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)  # still usable

    net.load_state_dict(weights, assign=True)  # as the message says
    module.enable_passthrough(force=True)
    with torch.no_grad():
        assert torch.equal(module(x), want)


def test_offload_cpu_keeps_calls_working_and_a_forced_reset_runs_eagerly(unique_name):
    net = Lin().eval()
    module = Module(net, name=unique_name, strategy=ORT, offload="cpu")
    _record(module, batches=(1, 5))
    x = torch.randn(3, 4)
    want = _reference(net, x).detach()

    module.tune()

    assert all(p.device == torch.device("cpu") and not p.is_meta for p in net.parameters())
    with torch.no_grad():
        torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)
    module.enable_passthrough(force=True)  # unlike meta, cpu weights can run again
    with torch.no_grad():
        assert torch.equal(module(x), want)


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": ORT, "fallback": "eager"},
        {"strategy": ORT, "strict": False},
        {"strategy": EAGER},  # not ahead of time
    ],
    ids=["fallback_eager", "non_strict", "eager_backend"],
)
def test_offload_is_skipped_with_fallback_eager_non_strict_or_a_backend_that_needs_the_weights(unique_name, options):
    net = Lin().eval()
    module = Module(net, name=unique_name, offload="meta", **options)
    _record(module, batches=(1, 5))

    module.tune()

    assert not any(p.is_meta for p in net.parameters())
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _reference(net, x), atol=1e-5, rtol=1e-5)


# ============================================================================ activate/deactivate
def test_deactivate_releases_the_onnxruntime_session_and_activate_brings_it_back(unique_name):
    net = Lin().eval()
    module = Module(net, name=unique_name, strategy=ORT)
    _record(module)
    module.tune()
    backend = module.tuned_graphs[0].backend
    x = torch.randn(2, 4)

    module.deactivate()

    assert not backend.active and backend._session is None
    with pytest.raises(RuntimeError, match=f"^Module '{unique_name}' is deactivated. Call activate\\(\\) before calling it.$"):
        module(x)
    assert module.state is ModuleState.TUNED
    module.activate()
    assert backend.active and backend._session is not None
    with torch.no_grad():
        torch.testing.assert_close(module(x), _reference(net, x), atol=1e-5, rtol=1e-5)


def test_activate_in_passthrough_is_a_no_op_and_in_init_or_recording_raises(unique_name):
    module = Module(Lin().eval(), name=unique_name)
    with pytest.raises(RuntimeError, match="^Module is not tuned. Cannot activate backends.$"):
        module.activate()  # INIT
    _record(module)
    with pytest.raises(RuntimeError, match="^Module is not tuned. Cannot activate backends.$"):
        module.activate()  # RECORDING
    module.enable_passthrough()

    module.activate()

    assert module.state is ModuleState.PASSTHROUGH


# ================================================================================== properties
def test_name_state_module_and_device_properties(unique_name):
    net = Lin()
    module = Module(net, name=f"{unique_name} v2")

    assert module.name == f"{unique_name}_v2"
    assert module.state is ModuleState.INIT
    assert module.module is net
    assert module.device == torch.device("cpu")

    on_meta = Module(torch.nn.Linear(2, 2, device="meta"), name=f"{unique_name}_meta")
    assert on_meta.device == torch.device("meta")

    class BuffersOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.zeros(3, device="meta"))

    assert Module(BuffersOnly(), name=f"{unique_name}_buffers").device == torch.device("meta")
    assert Module(torch.nn.Identity(), name=f"{unique_name}_none").device == torch.device("cpu")


def test_graph_specs_are_in_first_seen_order_and_available_while_passthrough_and_tuned(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    with pytest.raises(ValueError, match="^Module has not recorded any samples. Cannot collect graph specs.$"):
        module.graph_specs
    with torch.no_grad():
        module(torch.randn(2, 8), torch.randn(2, 4))
        module(torch.randn(3, 8))
        module(torch.randn(5, 8), torch.randn(5, 4))
    expected = [
        ("graph_0", "x: tensor(float32, rank=2), y: tensor(float32, rank=2)", 2),
        ("graph_1", "x: tensor(float32, rank=2)", 1),
    ]

    def summary(m):
        return [(g.name, g.description, g.num_calls) for g in m.graph_specs]

    assert summary(module) == expected
    module.enable_passthrough()
    assert summary(module) == expected
    module.enable_recording()
    module.tune()
    assert summary(module) == expected

    restored = Module.from_dict(_fresh_two_input_net(), {**module.to_dict(), "name": f"{unique_name}_restored"})
    assert restored.state is ModuleState.TUNED
    assert summary(restored) == expected  # nothing recorded: the tuned graph specs


# ================================================================================= persistence
def test_to_dict_holds_the_type_key_the_name_and_per_graph_spec_backend_descriptions_with_artifact_paths(
    two_input_net, unique_name, isolated_cache
):
    module = Module(two_input_net, name=unique_name, strategies=[ORT, EAGER])
    _record_two_specs(module)
    module.tune()

    state = module.to_dict()

    assert state["type"] == "aitune_triton.Module" and state["name"] == unique_name
    assert Module.is_state_dict_valid(state)
    assert [g["graph"]["name"] for g in state["graphs"]] == ["graph_0", "graph_1"]
    assert [g["graph"]["description"] for g in state["graphs"]] == [g.description for g in module.graph_specs]
    assert [g["backend"]["name"] for g in state["graphs"]] == ["onnxruntime", "eager"]
    onnx = Path(state["graphs"][0]["backend"]["artifacts"]["model"])
    assert onnx.is_absolute() and onnx.is_file() and onnx.name == "model.onnx"
    assert isolated_cache.resolve() in onnx.resolve().parents
    assert state["graphs"][1]["backend"]["artifacts"] == {}
    assert json.loads(json.dumps(state)) == state  # JSON-compatible
    assert module.state_dict() == state


def test_save_and_load_round_trip_two_graph_specs_on_onnxruntime_and_eager(two_input_net, unique_name, tmp_path):
    module = Module(two_input_net, name=unique_name, strategies=[ORT, EAGER])
    _record_two_specs(module)
    module.tune()
    torch.manual_seed(5)
    inputs = [(torch.randn(2, 8),), (torch.randn(4, 8), torch.randn(4, 4))]
    with torch.no_grad():
        expected = [module(*args) for args in inputs]
    path = aitune_triton.save(module, tmp_path / "ckpt")
    del module
    gc.collect()  # frees the name and the patched forward of two_input_net

    manifest = json.loads((path / MANIFEST_NAME).read_text())
    loaded = aitune_triton.load(two_input_net, path)

    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["onnxruntime"] is not None and "aitune-triton" in manifest["versions"]
    assert sorted(manifest["files"]) == ["graph_0/model.onnx", "graph_0/warmup_max.pt", "graph_0/warmup_min.pt"]
    assert len(manifest["files"]["graph_0/model.onnx"]["sha256"]) == 64
    assert loaded.state is ModuleState.TUNED and loaded.name == unique_name
    assert _chosen(loaded) == ["onnxruntime", "eager"]
    with torch.no_grad():
        for args, want in zip(inputs, expected):
            torch.testing.assert_close(loaded(*args), want, atol=0.0, rtol=0.0)

    tampered = tmp_path / "tampered"
    shutil.copytree(path, tampered)
    artifact = tampered / "graph_0" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 3] ^= 0xFF
    artifact.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="artifact graph_0/model.onnx does not match its SHA-256 in the manifest"):
        aitune_triton.load(_fresh_two_input_net(), tampered)


# =========================================================================== graph spec grouping
def test_graph_specs_differ_by_passed_arguments_nesting_rank_dtype_and_strict_constant_but_not_by_sizes(unique_name):
    module = Module(AnyInputNet(), name=unique_name)
    a, b, c = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    with torch.no_grad():
        module([a, b])                                          # graph_0
        module([torch.randn(5, 3), torch.randn(5, 3)])          # graph_0: sizes only
        module([a, b, c])                                       # graph_1: nesting (3 leaves)
        module({"a": a, "b": b})                                # graph_2: nesting (dict)
        module([(a,), b])                                       # graph_3: nesting (tuple inside)
        module([a.unsqueeze(-1), b])                            # graph_4: rank
        module([a.double(), b])                                 # graph_5: dtype
        module([a, b], extra=c)                                 # graph_6: passed-argument set
        module([a, b], scale=2.0)                               # graph_7: passed-argument set (a constant)
        module([a, b], scale=3.0)                               # graph_8: strict: another constant
        module([torch.randn(7, 3), torch.randn(7, 3)], scale=3.0)  # graph_8: sizes only

    graphs = module.graph_specs

    assert [g.num_calls for g in graphs] == [2, 1, 1, 1, 1, 1, 1, 1, 2]
    assert graphs[5].description == "inputs.0: tensor(float64, rank=2), inputs.1: tensor(float32, rank=2)"
    assert graphs[4].description == "inputs.0: tensor(float32, rank=3), inputs.1: tensor(float32, rank=2)"
    assert graphs[6].description.endswith("extra: tensor(float32, rank=2)")
    assert graphs[7].description.endswith("scale: const(2.0)")
    assert graphs[8].description.endswith("scale: const(3.0)")
    first = graphs[0].inputs[0]
    assert (first.min_shape, first.max_shape) == ((2, 3), (5, 3))
    assert first.batch_axis == 0 and first.dim_names == ("batch", None) and first.dynamic_axes == [0]
    assert {name: dim.bounds for name, dim in graphs[0].dims.items()} == {"batch": (1, 5)}

    loose = Module(AnyInputNet(), name=f"{unique_name}_loose", strict=False)
    with torch.no_grad():
        loose([a, b], scale=2.0)
        loose([a, b], scale=3.0)
        loose([a, b])
    assert [g.num_calls for g in loose.graph_specs] == [2, 1]  # constants apart, argument set still counts


# ============================================================================== declared dims
def test_declared_dynamic_and_batch_dims_override_inference(unique_name):
    module = Module(
        SeqNet().eval(),
        name=unique_name,
        strategy=ORT,
        dynamic_shapes={"x": {0: BatchDim(1, 8), 1: DynamicDim("seq", 2, 16, opt=8)}},
    )
    with torch.no_grad():
        module(torch.randn(1, 4))
        module(torch.randn(1, 4))  # batch 1 and seq 4 only

    (graph,) = module.graph_specs
    assert {name: dim.bounds for name, dim in graph.dims.items()} == {"batch": (1, 8), "seq": (2, 16)}
    assert graph.inputs[0].batch_axis == 0 and graph.inputs[0].dim_names == ("batch", "seq")
    assert graph.outputs[0].batch_axis == 0
    assert graph.batch_size_range.bounds == (1, 8)

    module.tune()
    x = torch.randn(6, 11)  # never recorded, inside the declared ranges
    with torch.no_grad():
        torch.testing.assert_close(module(x), x * 2.0 + x.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    with pytest.raises(GraphSpecMismatchError, match="x axis 0: size 9 outside 1..8"):
        module(torch.randn(9, 4))


def test_inferred_batch_range_without_declaration_is_one_to_the_largest_seen(unique_name):
    module = Module(Lin(), name=unique_name)
    _record(module, batches=(3, 6, 4))

    assert {name: dim.bounds for name, dim in module.graph_specs[0].dims.items()} == {"batch": (1, 6)}


def test_a_call_breaking_a_declared_rank_is_a_recording_error_and_does_not_run(unique_name):
    calls: list = []
    module = Module(CountingLin(calls), name=unique_name, dynamic_shapes={"x": {2: DynamicDim("seq", 1, 8)}})

    with pytest.raises(
        RecordingError,
        match=r"^dynamic_shapes\['x'\]: axis 2 is declared, but this call passes a tensor of rank 2 \(shape \[3, 4\]\)",
    ) as info:
        with torch.no_grad():
            module(torch.randn(3, 4))

    assert isinstance(info.value, ValueError)
    assert calls == []
    with pytest.raises(NoSamplesError):
        module.graph_specs


def test_a_call_outside_a_declared_range_is_a_recording_error_and_is_not_recorded(unique_name):
    module = Module(Lin(), name=unique_name, dynamic_shapes={"x": {0: BatchDim(1, 4)}})

    with pytest.raises(
        ValueError,
        match=r"^dynamic_shapes\['x'\]: axis 0 \(batch\) has size 6 in this call, outside the declared range 1..4",
    ) as info:
        _record(module, batches=(6,))
    _record(module, batches=(2, 3))

    assert isinstance(info.value, RecordingError)
    assert module.graph_specs[0].num_calls == 2


def test_a_declared_path_that_is_no_tensor_input_is_an_error_at_tune(unique_name):
    module = Module(Lin(), name=unique_name, strategy=EAGER, dynamic_shapes={"x.z": {0: BatchDim(1, 4)}})
    _record(module)

    with pytest.raises(RecordingError, match=r"dynamic_shapes: \['x.z'\] match no tensor input of any graph spec; tensor inputs: \['x'\]") as info:
        module.tune()

    assert isinstance(info.value, ValueError)
    assert module.state is ModuleState.RECORDING


# ==================================================================================== samples
def test_recorded_samples_are_deep_copies_that_a_forward_mutating_its_input_cannot_change(unique_name):
    module = Module(InPlaceNet(), name=unique_name)
    x = torch.ones(2, 3)
    extra = {"a": torch.full((2, 3), 5.0)}

    with torch.no_grad():
        module(x, extra)

    assert float(x.sum()) == 0.0 and float(extra["a"][0, 0]) == 105.0  # forward changed the caller's tensors
    (sample,) = module._self_recorder.samples(module.graph_specs[0])
    assert torch.equal(sample.args[0], torch.ones(2, 3))
    assert torch.equal(sample.args[1]["a"], torch.full((2, 3), 5.0))
    x.fill_(7.0)
    (sample,) = module._self_recorder.samples(module.graph_specs[0])
    assert torch.equal(sample.args[0], torch.ones(2, 3))


def test_samples_are_bounded_per_graph_spec_and_stored_on_disk_under_the_cache_dir(unique_name, isolated_cache):
    module = Module(Lin(), name=unique_name, max_samples=3)
    with torch.no_grad():
        for batch in range(1, 8):
            module(torch.randn(batch, 4))
        for batch in (2, 5):
            module(torch.randn(batch, 1, 4))  # another rank: another graph spec with its own bound

    first, second = module.graph_specs
    stores = [module._self_recorder._graphs[g.key].samples for g in (first, second)]
    kept = sorted(s.args[0].shape[0] for s in module._self_recorder.samples(first))
    files = [sorted(isolated_cache.glob(f"{unique_name}-samples-*/graph_{i}/*.pt")) for i in (0, 1)]

    assert (first.num_calls, second.num_calls) == (7, 2)
    assert [len(s) for s in stores] == [3, 2]
    assert [s.on_disk for s in stores] == [3, 2]
    assert [len(f) for f in files] == [3, 2]
    assert 1 in kept and 7 in kept  # the ends of the range survive eviction
    del module, stores
    gc.collect()
    assert list(isolated_cache.glob(f"{unique_name}-samples-*")) == []  # removed with the wrapper


# =================================================================================== fallback
def test_fallback_eager_runs_an_unmatched_call_eagerly_with_one_warning_per_new_input_spec(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=ORT, fallback="eager")
    _record(module, batches=(1, 4), features=8)
    module.tune()
    x, y = torch.randn(3, 8), torch.randn(3, 4)

    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        with_y = [module(x, y), module(torch.randn(2, 8), torch.randn(2, 4)), module(x, y)]
        scaled = [module(x, scale=2.0), module(x, scale=2.0)]
        matched = module(x)

    messages = [str(w.message) for w in caught if "matches no tuned graph spec" in str(w.message)]
    assert len(messages) == 2
    assert f"Module '{unique_name}': the call (x: tensor(float32, rank=2), y: tensor(float32, rank=2))" in messages[0]
    assert "running eagerly (fallback='eager')" in messages[0] and "graph_0: x: tensor(float32, rank=2)" in messages[0]
    assert "scale: const(2.0)" in messages[1]
    with torch.no_grad():
        assert torch.equal(with_y[0]["logits"], eager(two_input_net)(x, y)["logits"])
        assert torch.equal(scaled[0]["logits"], eager(two_input_net)(x, scale=2.0)["logits"])
        torch.testing.assert_close(matched, eager(two_input_net)(x), atol=1e-5, rtol=1e-5)


def test_a_tuned_call_outside_the_recorded_range_raises_graph_spec_mismatch_error(unique_name):
    # The recorded range, without the batch size sweep that would widen it (test_batch_sweep.py).
    module = Module(Lin().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False))
    _record(module, batches=(1, 4))
    module.tune()

    with pytest.raises(
        GraphSpecMismatchError,
        match=rf"^Module '{unique_name}' graph_0: the call's shapes do not fit what its onnxruntime backend "
        r"was built for: x axis 0: size 9 outside 1..4\. Split the batch into calls of at most 4 ",
    ) as raised:
        module(torch.randn(9, 4))
    assert "cannot help" not in str(raised.value)  # the batch axis: splitting does help


def test_a_tuned_call_with_another_image_size_is_told_to_record_that_size_not_to_split(unique_name):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False))
    with torch.no_grad():
        for batch in (1, 4):
            module(torch.randn(batch, 3, 64, 64))
    module.tune()

    with pytest.raises(GraphSpecMismatchError) as raised:
        module(torch.randn(2, 3, 32, 32))  # a 32 x 32 image: within the batch range, another side
    message = str(raised.value)
    assert "input axis 2: size 32 outside 64..64" in message and "input axis 3: size 32 outside 64..64" in message
    assert "Splitting the call cannot help on input axis 2, input axis 3: record calls of these sizes" in message
    assert "DynamicDim(name, min, max)" in message and "Split the batch" not in message


def test_with_fallback_eager_a_tuned_call_outside_the_recorded_range_runs_eagerly_with_one_warning(unique_name):
    net = Lin().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False), fallback="eager")
    _record(module, batches=(1, 4))
    module.tune()
    x = torch.randn(9, 4)

    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        outputs = [module(x), module(x)]

    messages = [str(w.message) for w in caught if "do not fit what" in str(w.message)]
    assert len(messages) == 1 and "running eagerly (fallback='eager')" in messages[0]
    assert all(torch.equal(o, _reference(net, x)) for o in outputs)


# =================================================================================== pipeline
@pytest.fixture
def no_stray_modules():
    """aitune_triton.tune() acts on every live Module: drop leftovers of earlier tests first."""
    gc.collect()
    yield
    gc.collect()


def test_pipeline_tune_records_every_live_module_at_the_given_batch_sizes_and_tunes_each(unique_name, no_stray_modules):
    enc = Module(Lin().eval(), name=f"{unique_name}_enc", strategy=EAGER)
    torch.manual_seed(2)
    head_net = torch.nn.Linear(3, 2).eval()
    head = Module(head_net, name=f"{unique_name}_head", strategy=ORT)
    idle = Module(torch.nn.Linear(3, 3), name=f"{unique_name}_idle", strategy=EAGER)
    dataset = [torch.randn(4) for _ in range(6)]

    def pipeline(x):
        return head(torch.relu(enc(x)))

    results = aitune_triton.tune(pipeline, dataset, batch_sizes=[1, 3])

    assert (results[enc.name], results[head.name], results[idle.name]) == ("tuned", "tuned", "not called")
    # a Module the pipeline never called keeps its earlier state (INIT: its first call still records)
    assert (enc.state, head.state, idle.state) == (ModuleState.TUNED, ModuleState.TUNED, ModuleState.INIT)
    assert _chosen(head) == ["onnxruntime"]
    (graph,) = enc.graph_specs
    assert graph.num_calls == 6 + 2  # six batches of 1, two of 3
    assert (graph.inputs[0].min_shape, graph.inputs[0].max_shape) == ((1, 4), (3, 4))
    x = torch.randn(2, 4)
    with torch.no_grad():
        want = eager(head_net)(torch.relu(_reference(enc.module, x)))
        torch.testing.assert_close(pipeline(x), want, atol=1e-5, rtol=1e-5)


def test_pipeline_tune_without_batch_sizes_calls_func_once_per_item(unique_name, no_stray_modules):
    module = Module(Lin().eval(), name=unique_name, strategy=EAGER)
    dataset = [torch.randn(2, 4), torch.randn(5, 4), torch.randn(3, 4)]

    results = aitune_triton.tune(lambda x: module(x), dataset)

    assert results[unique_name] == "tuned" and module.state is ModuleState.TUNED
    (graph,) = module.graph_specs
    assert graph.num_calls == 3 and graph.inputs[0].max_shape == (5, 4)


def test_pipeline_tune_leaves_a_module_whose_tuning_fails_in_passthrough_and_logs_the_reason(
    unique_name, no_stray_modules, caplog
):
    good = Module(Lin().eval(), name=f"{unique_name}_good", strategy=EAGER)
    bad_net = torch.nn.Linear(3, 2).eval()
    bad = Module(bad_net, name=f"{unique_name}_bad", strategy=EXPLODES)

    with caplog.at_level(logging.WARNING, logger="aitune_triton"):
        results = aitune_triton.tune(lambda x: bad(good(x)), [torch.randn(2, 4), torch.randn(5, 4)])

    assert results[good.name] == "tuned" and good.state is ModuleState.TUNED
    assert results[bad.name].startswith("failed: ") and "RuntimeError: boom: this backend never builds" in results[bad.name]
    assert bad.state is ModuleState.PASSTHROUGH
    logged = [r.getMessage() for r in caplog.records if r.name == "aitune_triton" and bad.name in r.getMessage()]
    assert len(logged) == 1
    assert f"Module '{bad.name}' is left in passthrough: tuning failed" in logged[0] and "boom" in logged[0]
    x = torch.randn(3, 4)
    with torch.no_grad():  # the pipeline keeps running, the failed module eagerly
        assert torch.equal(bad(good(x)), eager(bad_net)(_reference(good.module, x)))


def test_pipeline_tune_dry_run_records_and_tunes_nothing(unique_name, no_stray_modules, capsys):
    module = Module(Lin().eval(), name=unique_name, strategy=ORT)

    results = aitune_triton.tune(lambda x: module(x), [torch.randn(2, 4)], dry_run=True)

    assert results[unique_name] == "dry run"
    assert module.state is ModuleState.RECORDING
    assert f"Dry run for '{unique_name}'" in capsys.readouterr().err


def test_pipeline_tune_gives_every_module_its_earlier_state_back_when_the_pipeline_raises(unique_name, no_stray_modules):
    fresh = Module(Lin().eval(), name=f"{unique_name}_fresh", strategy=EAGER)
    quiet = Module(Lin().eval(), name=f"{unique_name}_quiet", strategy=EAGER)
    quiet.enable_passthrough()

    def pipeline(x):
        fresh(x)
        raise RuntimeError("pipeline broke")

    with pytest.raises(RuntimeError, match="pipeline broke"):
        aitune_triton.tune(pipeline, [torch.randn(4)])

    assert (fresh.state, quiet.state) == (ModuleState.INIT, ModuleState.PASSTHROUGH)


# ------------------------------------------------------------------- copies, pickles, reloads
def test_copies_and_pickles_of_a_wrapper_and_of_its_bare_module_are_eager_copies_of_the_module(unique_name):
    import copy
    import pickle

    net = Lin().eval()
    module = Module(net, name=unique_name, strategy=ORT)
    _record(module, batches=(1, 3))
    module.tune()
    parent = torch.nn.Sequential(module)
    x = torch.randn(2, 4)

    for clone in (copy.deepcopy(module), copy.copy(module), pickle.loads(pickle.dumps(module)), pickle.loads(pickle.dumps(net))):
        assert type(clone) is Lin and not isinstance(clone, Module)
        torch.testing.assert_close(clone(x), _reference(net, x))
    parent_copy = copy.deepcopy(parent)
    assert type(parent_copy[0]) is Lin
    buffer = io.BytesIO()
    torch.save(parent, buffer)  # the whole parent, wrapped child included
    assert module.state is ModuleState.TUNED and "forward" not in net.__dict__


def test_from_dict_while_the_tuned_module_is_alive_takes_a_suffixed_name_with_a_warning(unique_name):
    import copy

    net = Lin().eval()
    module = Module(net, name=unique_name, strategy=ORT)
    _record(module, batches=(1, 3))
    module.tune()
    state = module.to_dict()

    with pytest.warns(UserWarning, match=f"Module '{unique_name}' is alive, so this one is named '{unique_name}_2'"):
        twin = Module.from_dict(copy.deepcopy(net), state)
    named = Module.from_dict(copy.deepcopy(net), state, name=f"{unique_name}_chosen")

    x = torch.randn(2, 4)
    assert (twin.name, named.name) == (f"{unique_name}_2", f"{unique_name}_chosen")
    for loaded in (twin, named):
        assert loaded.state is ModuleState.TUNED
        torch.testing.assert_close(loaded(x), module(x))


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"graphs": []}, "'graphs' is not a non-empty list"),
        ({"graphs": [{}]}, "graphs[0].graph is not a graph spec description"),
        ({"graphs": [1]}, "graphs[0].graph is not a graph spec description"),
        ({"signature": [1]}, "'signature' is not a list of parameters"),
    ],
)
def test_state_dicts_broken_below_the_top_level_are_invalid_and_from_dict_says_what_is_wrong(unique_name, change, problem):
    module = Module(Lin().eval(), name=unique_name, strategy=EAGER)
    _record(module, batches=(1, 3))
    module.tune()
    broken = {**module.to_dict(), **change}

    assert not Module.is_state_dict_valid(broken)
    with pytest.raises(ValueError, match=r"^Invalid dictionary format") as raised:
        Module.from_dict(Lin().eval(), broken)
    assert problem in str(raised.value)


def test_graph_specs_of_a_tuned_module_are_the_tuned_ones(unique_name):
    module = Module(torch.nn.Linear(4, 3).eval(), name=unique_name, strategy=EAGER)
    _record(module, batches=(1, 4))
    module.tune()

    assert [g.batch_independent for g in module.graph_specs] == [True]
    assert module.graph_specs == [g.spec for g in module.tuned_graphs]


def test_max_samples_below_one_is_refused_at_construction(unique_name):
    with pytest.raises(ValueError, match="max_samples: expected an integer >= 1, got 0"):
        Module(Lin(), name=unique_name, max_samples=0)


def test_tune_warns_when_the_constructor_strategy_overrides_the_one_passed_to_tune(unique_name):
    module = Module(Lin().eval(), name=unique_name, strategy=EAGER)
    _record(module, batches=(1, 3))

    with pytest.warns(UserWarning, match="the strategy passed to tune\\(\\) is not used"):
        module.tune(strategy=ORT)

    assert _chosen(module) == ["eager"]


# ------------------------------------------------------------------------- second user trial
class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(20, 3)

    def forward(self, ids, features):
        return self.embedding(ids) + features


def test_a_tuned_call_breaking_axes_the_export_tied_is_refused_not_computed(unique_name):
    module = Module(_Tied().eval(), name=unique_name, strategy=ORT)
    with torch.no_grad():
        for batch, length in ((1, 4), (3, 7)):
            module(torch.randint(0, 20, (batch, length)), torch.randn(batch, length, 3))
    module.tune()

    (described,) = module.to_dict()["graphs"]
    ids_axes, feature_axes = described["backend"]["input_axes"]
    assert ids_axes[1] == feature_axes[1] and isinstance(ids_axes[1], str) and feature_axes[2] == 3
    with pytest.raises(GraphSpecMismatchError, match=r"features axis 1: size 5 differs from ids axis 1 \(size 6\)"):
        module(torch.randint(0, 20, (2, 6)), torch.randn(2, 5, 3))


def test_axes_declared_with_one_name_must_have_equal_sizes_in_every_call(unique_name):
    module = Module(
        _Tied().eval(),
        name=unique_name,
        dynamic_shapes={"ids": {1: DynamicDim("seq", 1, 10)}, "features": {1: DynamicDim("seq", 1, 10)}},
    )

    with pytest.raises(RecordingError, match="share the dimension 'seq' but have sizes 3 and 4"):
        module(torch.randint(0, 20, (2, 4)), torch.randn(2, 3, 3))


def test_a_name_longer_than_128_characters_is_refused_up_front():
    with pytest.raises(InvalidNameError, match="expected at most 128 characters"):
        Module(Lin(), name="a" * 300)


def test_pipeline_tune_refuses_an_empty_batch_size_list(no_stray_modules):
    with pytest.raises(ValueError, match=r"batch_sizes: expected None or a non-empty list of positive integers, got \[\]"):
        aitune_triton.tune(lambda x: x, [torch.randn(4)], batch_sizes=[])


def test_a_fallback_warning_points_at_the_callers_line(unique_name):
    module = Module(Lin().eval(), name=unique_name, strategy=EAGER, fallback="eager")
    _record(module, batches=(1, 3))
    module.tune()

    with pytest.warns(UserWarning, match="matches no tuned graph spec") as caught:
        module(torch.randn(2, 3, 4))

    assert caught[0].filename == __file__


def test_loading_into_a_module_with_another_forward_names_both_parameter_lists(unique_name, tmp_path):
    module = Module(Lin().eval(), name=unique_name, strategy=EAGER)
    _record(module, batches=(1, 3))
    module.tune()
    path = aitune_triton.save(module, tmp_path / "ckpt")

    with pytest.raises(ValueError, match=r"forward takes \(x\), but this module's forward takes \(ids, features\)"):
        aitune_triton.load(Module(_Tied(), name=f"{unique_name}_other"), path)
