"""The Module proxy: life cycle, proxying, strategy selection, tuned dispatch."""

from __future__ import annotations

import gc

import pytest
import torch
from nets import eager

import aitune_triton
from aitune_triton import FirstWinsStrategy, Module, ModuleState, OneBackendStrategy
from aitune_triton.backends import EagerBackend, register_backend
from aitune_triton.errors import (
    AlreadyTunedError,
    GraphSpecMismatchError,
    InvalidNameError,
    ModuleStateError,
    NoSamplesError,
    TuningError,
)


class MarkerBackend(EagerBackend):
    """Runs eagerly like ``eager`` but has its own name, so tests can see which strategy was used."""

    name = "test_wrapper_marker"


register_backend(MarkerBackend)


class OffByOneBackend(EagerBackend):
    """Always fails the eager check."""

    name = "test_wrapper_off_by_one"

    def infer(self, call):
        return [t + 1.0 for t in super().infer(call)]


register_backend(OffByOneBackend)

EAGER = OneBackendStrategy("eager")
MARKER = OneBackendStrategy("test_wrapper_marker")


def _record(module, batches=(1, 4), with_y=False):
    with torch.no_grad():
        for batch in batches:
            if with_y:
                module(torch.randn(batch, 8), torch.randn(batch, 4))
            else:
                module(torch.randn(batch, 8))


def _chosen(module) -> list[str]:
    return [g.backend.name for g in module.tuned_graphs]


# ------------------------------------------------------------------------------- life cycle
def test_new_module_is_in_init_and_the_first_call_starts_recording(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    assert module.state is ModuleState.INIT
    with pytest.raises(NoSamplesError, match="Module has not recorded any samples. Cannot collect graph specs."):
        module.graph_specs

    x = torch.randn(2, 8)
    with torch.no_grad():
        output = module(x)
        expected = eager(two_input_net)(x)

    assert module.state is ModuleState.RECORDING
    assert [g.num_calls for g in module.graph_specs] == [1]
    assert torch.equal(output["logits"], expected["logits"])


def test_passthrough_records_nothing(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    module.enable_passthrough()

    x = torch.randn(3, 8)
    with torch.no_grad():
        output = module(x)
        expected = eager(two_input_net)(x)

    assert module.state is ModuleState.PASSTHROUGH
    assert torch.equal(output["hidden"][0], expected["hidden"][0])
    with pytest.raises(NoSamplesError):
        module.graph_specs
    module.activate()  # a no-op in passthrough
    assert module.state is ModuleState.PASSTHROUGH


def test_enable_recording_after_passthrough_continues_the_recording(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    _record(module, batches=(2,))
    module.enable_passthrough()
    _record(module, batches=(16,), with_y=True)  # neither this size nor this structure is recorded
    module.enable_recording()
    _record(module, batches=(5,))

    (graph,) = module.graph_specs
    assert module.state is ModuleState.RECORDING
    assert graph.num_calls == 2
    assert (graph.inputs[0].min_shape, graph.inputs[0].max_shape) == ((2, 8), (5, 8))


def test_hooks_of_the_wrapped_module_run_while_recording(two_input_net, unique_name):
    seen = []
    two_input_net.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    module = Module(two_input_net, name=unique_name)

    _record(module, batches=(3,))
    module.enable_passthrough()
    _record(module, batches=(5,))

    assert seen == [3, 5]


def test_tune_without_samples_raises_no_samples_error(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)

    with pytest.raises(NoSamplesError) as info:
        module.tune()

    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"Module: '{unique_name}' has not recorded any samples. Cannot tune it."
    module.enable_passthrough()
    _record(module)
    with pytest.raises(ValueError, match="has not recorded any samples. Cannot tune it."):
        module.tune()


def test_tune_twice_raises_already_tuned_error(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()

    with pytest.raises(AlreadyTunedError, match=f"Module: '{unique_name}' has already been tuned. Reset it to do it again."):
        module.tune()
    with pytest.raises(ValueError):
        module.tune(strategy=EAGER)
    assert module.state is ModuleState.TUNED


@pytest.mark.parametrize("method", ["enable_recording", "enable_passthrough"])
def test_enable_recording_after_tuned_without_force_raises(two_input_net, unique_name, method):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()

    with pytest.raises(RuntimeError, match="^Module is already tuned. Use force=True to reset tuned module.$") as info:
        getattr(module, method)()

    assert isinstance(info.value, ModuleStateError)
    assert module.state is ModuleState.TUNED
    assert module.tuned_graphs[0].backend.active


def test_enable_recording_with_force_resets_a_tuned_module(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()
    old_backend = module.tuned_graphs[0].backend

    module.enable_recording(force=True)

    assert module.state is ModuleState.RECORDING
    assert not old_backend.active
    with pytest.raises(NoSamplesError):  # the old recording was dropped
        module.graph_specs
    with pytest.raises(ModuleStateError):
        module.tuned_graphs
    _record(module, batches=(3, 7), with_y=True)
    (graph,) = module.graph_specs
    assert graph.description == "x: tensor(float32, rank=2), y: tensor(float32, rank=2)"
    module.tune()
    assert module.state is ModuleState.TUNED


def test_enable_passthrough_with_force_resets_a_tuned_module(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()

    module.enable_passthrough(force=True)

    assert module.state is ModuleState.PASSTHROUGH
    with pytest.raises(NoSamplesError):
        module.graph_specs


def test_activate_on_untuned_module_raises(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)

    with pytest.raises(RuntimeError, match="^Module is not tuned. Cannot activate backends.$"):
        module.activate()
    _record(module)
    with pytest.raises(ModuleStateError, match="Module is not tuned. Cannot activate backends."):
        module.activate()
    module.deactivate()  # a no-op unless tuned
    assert module.state is ModuleState.RECORDING


def test_deactivated_tuned_module_call_raises_until_activated(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()
    x = torch.randn(2, 8)

    module.deactivate()
    with pytest.raises(RuntimeError, match=f"Module '{unique_name}' is deactivated. Call activate\\(\\) before calling it."):
        module(x)
    assert not module.tuned_graphs[0].backend.active

    module.activate()
    with torch.no_grad():
        assert torch.equal(module(x)["logits"], eager(two_input_net)(x)["logits"])


def test_to_dict_before_tuning_raises(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    with pytest.raises(ModuleStateError, match=f"Module '{unique_name}' is not tuned \\(state: INIT\\)."):
        module.to_dict()
    _record(module)
    with pytest.raises(RuntimeError, match="is not tuned \\(state: RECORDING\\)."):
        module.state_dict()


def test_training_mode_tuning_warns(unique_name):
    module = Module(torch.nn.Linear(3, 2).train(), name=unique_name, strategy=EAGER)
    with torch.no_grad():
        module(torch.randn(2, 3))

    with pytest.warns(UserWarning, match="is in training mode"):
        module.tune()

    assert module.state is ModuleState.TUNED  # a warning, not a refusal


def test_failed_tuning_leaves_the_recording_in_place(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    _record(module)

    with pytest.raises(TuningError, match="test_wrapper_off_by_one: failed"):
        module.tune(strategy=OneBackendStrategy("test_wrapper_off_by_one"))

    assert module.state is ModuleState.RECORDING
    assert module.graph_specs[0].num_calls == 2
    module.tune(strategy=EAGER)
    assert _chosen(module) == ["eager"]


# ------------------------------------------------------------------------------ persistence
def test_is_state_dict_valid_accepts_to_dict_output_only(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()
    state = module.to_dict()

    assert Module.is_state_dict_valid(state)
    assert state["type"] == "aitune_triton.Module" and state["name"] == unique_name
    assert state["module_class"].endswith("nets.TwoInputNet")
    assert not Module.is_state_dict_valid({})
    assert not Module.is_state_dict_valid([state])
    assert not Module.is_state_dict_valid({**state, "type": "something.else"})
    assert not Module.is_state_dict_valid({**state, "graphs": {}})
    assert not Module.is_state_dict_valid({k: v for k, v in state.items() if k != "signature"})


@pytest.mark.parametrize("bad", [{}, {"type": "aitune_triton.Module"}, "aitune_triton.Module", None])
def test_from_dict_rejects_an_invalid_dictionary(two_input_net, bad):
    with pytest.raises(ValueError, match="^Invalid dictionary format"):
        Module.from_dict(two_input_net, bad)


def test_from_dict_rebuilds_a_tuned_module_without_tuning(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record(module, batches=(1, 6))
    module.tune()
    state = module.to_dict()
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = module(x)
    del module
    gc.collect()  # free the name

    restored = Module.from_dict(two_input_net, state)

    assert restored.state is ModuleState.TUNED and restored.name == unique_name
    assert _chosen(restored) == ["onnxruntime"]
    assert restored.tuned_graphs[0].report.chosen == "onnxruntime"
    with torch.no_grad():
        got = restored(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_load_tuned_into_a_tuned_module_or_with_another_signature_raises(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()
    state = module.to_dict()

    with pytest.raises(ModuleStateError, match="Module is already tuned"):
        module.load_tuned(state)
    other = Module(torch.nn.Linear(8, 2), name=f"{unique_name}_linear")
    with pytest.raises(ValueError, match="state_dict: recorded for a module whose forward takes"):
        other.load_tuned(state)
    with pytest.raises(ValueError, match="Invalid dictionary format"):
        other.load_tuned({"name": "x"})


# ------------------------------------------------------------------------ names and proxying
def test_duplicate_live_name_raises_invalid_name_error(two_input_net, unique_name):
    first = Module(two_input_net, name=unique_name)

    with pytest.raises(InvalidNameError, match=f"a live Module is already named '{unique_name}'"):
        Module(torch.nn.Linear(2, 2), name=unique_name)
    with pytest.raises(ValueError):  # InvalidNameError is a ValueError
        Module(torch.nn.Linear(2, 2), name=unique_name)
    assert first.name == unique_name


def test_a_name_is_free_again_once_its_module_is_gone(unique_name):
    module = Module(torch.nn.Linear(2, 2), name=unique_name)
    del module
    gc.collect()

    assert Module(torch.nn.Linear(2, 2), name=unique_name).name == unique_name


def test_names_are_sanitized_and_empty_or_dot_names_rejected(unique_name):
    module = Module(torch.nn.Linear(2, 2), name=f"{unique_name} v1/β")

    assert module.name == f"{unique_name}_v1__"
    for bad in ("", "..", "."):
        with pytest.raises(InvalidNameError):
            Module(torch.nn.Linear(2, 2), name=bad)


@pytest.mark.parametrize("bad", ["a string", 42, torch.ones(1), lambda x: x])
def test_non_module_argument_raises_type_error(bad):
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module that is not already wrapped"):
        Module(bad)


def test_wrapping_a_module_twice_raises_type_error(unique_name):
    module = Module(torch.nn.Linear(2, 2), name=unique_name)

    with pytest.raises(TypeError, match="got Module"):
        Module(module, name=f"{unique_name}_again")


def test_isinstance_attributes_indexing_and_len_go_to_the_wrapped_module(unique_name):
    torch.manual_seed(0)
    sequential = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    module = Module(sequential, name=unique_name)

    assert isinstance(module, torch.nn.Sequential)
    assert isinstance(module, torch.nn.Module)
    assert isinstance(module, Module)
    assert len(module) == 3
    assert module[0] is sequential[0]
    assert isinstance(module[1], torch.nn.ReLU)
    assert [type(m) for m in module] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert module.module is sequential
    assert list(module.parameters()) == list(sequential.parameters())
    assert module[2].weight.shape == (2, 3)
    assert module.training is True
    module.eval()
    assert sequential.training is False
    module.extra_attribute = 7
    assert sequential.extra_attribute == 7
    assert module.device == torch.device("cpu")
    assert module.state is ModuleState.INIT  # none of that was a call


def test_device_of_a_module_without_parameters_is_cpu(unique_name):
    assert Module(torch.nn.ReLU(), name=unique_name).device == torch.device("cpu")


# ----------------------------------------------------------------------------- strategies
def _record_two_specs(module):
    _record(module, batches=(1, 3))
    _record(module, batches=(2, 5), with_y=True)


def test_strategies_list_too_short_raises_runtime_error_naming_both_counts(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies=[EAGER])
    _record_two_specs(module)

    with pytest.raises(RuntimeError, match="strategies: 1 given, but 2 graph specs were captured") as info:
        module.tune()

    assert "graph_0: x: tensor(float32, rank=2)" in str(info.value)
    assert "graph_1: x: tensor(float32, rank=2), y: tensor(float32, rank=2)" in str(info.value)
    assert module.state is ModuleState.RECORDING


def test_strategies_list_is_applied_in_graph_spec_order(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies=[MARKER, EAGER])
    _record_two_specs(module)

    module.tune()

    assert _chosen(module) == ["test_wrapper_marker", "eager"]


def test_strategies_dict_with_unknown_key_raises_value_error_listing_known_graph_specs(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategies={"graph_1": EAGER, "graph_7": EAGER})
    _record_two_specs(module)

    with pytest.raises(ValueError, match=r"strategies: 1 key\(s\) name no recorded graph spec \(\['graph_7'\]\)") as info:
        module.tune()

    assert "the recorded graph specs are:\n  graph_0: x: tensor(float32, rank=2)\n  graph_1: x: tensor(float32, rank=2), y:" in str(info.value)
    assert module.state is ModuleState.RECORDING


def test_strategies_dict_entry_beats_constructor_strategy_which_beats_tune_strategy(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER, strategies={"graph_1": MARKER})
    _record_two_specs(module)

    module.tune(strategy=OneBackendStrategy("test_wrapper_off_by_one"))

    assert _chosen(module) == ["eager", "test_wrapper_marker"]


def test_constructor_strategy_beats_tune_strategy(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=MARKER)
    _record(module)

    module.tune(strategy=EAGER)

    assert _chosen(module) == ["test_wrapper_marker"]
    assert module.tuned_graphs[0].report.strategy == "OneBackendStrategy([test_wrapper_marker])"


def test_tune_strategy_is_used_when_the_constructor_has_none(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name)
    _record(module)

    module.tune(strategy=FirstWinsStrategy(["test_wrapper_off_by_one", "test_wrapper_marker"], speed_margin=None))

    assert _chosen(module) == ["test_wrapper_marker"]
    assert [c.status for c in module.tuned_graphs[0].report.candidates] == ["failed", "chosen"]


def test_dry_run_changes_no_state_and_writes_no_artifact(two_input_net, unique_name, isolated_cache, tmp_path, capsys):
    module = Module(two_input_net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    explicit = Module(torch.nn.Linear(8, 2).eval(), name=f"{unique_name}_b", cache_dir=tmp_path / "explicit")
    _record_two_specs(module)
    _record(explicit)

    module.tune(dry_run=True)
    explicit.tune(dry_run=True)

    assert module.state is ModuleState.RECORDING and explicit.state is ModuleState.RECORDING
    with pytest.raises(ModuleStateError):
        module.tuned_graphs
    for cache in (isolated_cache, tmp_path / "explicit"):  # recorded calls only: no tuning directory, no artifact
        assert all("-samples-" in entry.name for entry in cache.iterdir())
        assert not [p for p in cache.rglob("*") if p.suffix in (".onnx", ".pt2")]
    printed = capsys.readouterr().err
    assert f"Dry run for '{unique_name}' on cpu" in printed
    assert "graph_0:" in printed and "graph_1:" in printed
    assert "inputs x: [1, 8]..[3, 8]" in printed
    assert "y: [2, 4]..[5, 4]" in printed
    assert [g.num_calls for g in module.graph_specs] == [2, 2]
    module.tune(strategy=EAGER)  # still tunable after the dry run; the constructor's strategy wins
    assert _chosen(module) == ["onnxruntime", "onnxruntime"]


def test_dry_run_names_the_backends_it_would_build(two_input_net, unique_name, capsys):
    module = Module(two_input_net, name=unique_name, strategy=FirstWinsStrategy(["onnxruntime", "eager"]))
    _record(module)

    module.tune(dry_run=True)

    assert "FirstWinsStrategy([onnxruntime, eager])" in capsys.readouterr().err


# -------------------------------------------------------------------------- tuned dispatch
def test_tuned_outputs_equal_eager_and_keep_the_nested_structure(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    _record_two_specs(module)
    module.tune()
    assert module.state is ModuleState.TUNED
    assert _chosen(module) == ["onnxruntime", "onnxruntime"]

    for args in [(torch.randn(2, 8),), (torch.randn(4, 8), torch.randn(4, 4)), (torch.randn(3, 8),)]:
        with torch.no_grad():
            got = module(*args)
            want = eager(two_input_net)(*args)
        assert isinstance(got, dict) and list(got) == ["hidden", "logits"]
        assert isinstance(got["hidden"], list) and len(got["hidden"]) == 2
        for g, w in [(got["hidden"][0], want["hidden"][0]), (got["hidden"][1], want["hidden"][1]), (got["logits"], want["logits"])]:
            assert g.shape == w.shape and g.dtype == w.dtype
            assert float((g - w).abs().max()) <= 1e-5


def test_tuned_module_does_not_record_more_calls(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()

    _record(module, batches=(2, 2, 2))

    assert [g.num_calls for g in module.graph_specs] == [2]


def test_a_call_matching_no_graph_spec_raises_graph_spec_mismatch_error(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER)
    _record(module)
    module.tune()

    with pytest.raises(GraphSpecMismatchError) as info:
        module(torch.randn(2, 8), torch.randn(2, 4))
    message = str(info.value)
    assert message.startswith(
        f"Module '{unique_name}': the call matches no tuned graph spec.\n"
        "  call: x: tensor(float32, rank=2), y: tensor(float32, rank=2)\n"
        "  differences from graph_0 (closest):\n"
        "    - extra argument y (tensor(float32, rank=2))\n"
    )
    assert "graph specs:\n    graph_0: x: tensor(float32, rank=2)\n" in message

    with pytest.raises(GraphSpecMismatchError, match=r"x: tensor\(float64, rank=2\)"):
        module(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"scale: const\(2.0\)"):  # strict: a new constant is a new spec
        module(torch.randn(2, 8), scale=2.0)


def test_non_strict_module_dispatches_calls_with_other_constants_to_the_same_spec(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=EAGER, strict=False)
    with torch.no_grad():
        module(torch.randn(2, 8), scale=3.0)
        module(torch.randn(3, 8), scale=2.0)
    assert len(module.graph_specs) == 1
    module.tune()
    x = torch.randn(2, 8)

    with torch.no_grad():
        got = module(x, scale=5.0)

    assert torch.equal(got["logits"], eager(two_input_net)(x, scale=5.0)["logits"])


def test_non_strict_module_runs_eagerly_with_a_warning_when_a_constant_differs_from_the_built_one(two_input_net, unique_name):
    module = Module(two_input_net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"), strict=False)
    with torch.no_grad():
        module(torch.randn(2, 8), scale=2.0)
        module(torch.randn(4, 8), scale=2.0)
    module.tune()
    x = torch.randn(3, 8)

    with torch.no_grad(), pytest.warns(UserWarning, match=r"differ from those its onnxruntime backend was built with"):
        got = module(x, scale=5.0)["logits"]
    with torch.no_grad():
        want = eager(two_input_net)(x, scale=5.0)["logits"]
        same_constant = module(x, scale=2.0)["logits"]

    assert float((got - want).abs().max()) <= 1e-5
    assert float((same_constant - eager(two_input_net)(x, scale=2.0)["logits"]).abs().max()) <= 1e-5


def test_aitune_triton_exports_the_module_api():
    assert aitune_triton.Module is Module
    assert aitune_triton.ModuleState.TUNED.value == "tuned"
