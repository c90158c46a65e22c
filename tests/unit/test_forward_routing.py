"""Every call of a wrapped module's forward goes through the wrapper's state, as AITune's patched
forward does: ``self(...)`` and ``self.forward(...)`` inside the model's own methods (the
``generate()`` pattern), calls of the bare module, and forwards set with ``functools.partial``."""

from __future__ import annotations

import copy
import functools
import gc
import inspect
import pickle
import warnings

import pytest
import torch

from aitune_triton import Module, ModuleState, OneBackendStrategy
from aitune_triton.errors import ModuleStateError
from output_nets import tiny_gpt2

ORT = OneBackendStrategy("onnxruntime")


class Stepper(torch.nn.Module):
    """A model with a decode-style loop and a helper that call its own forward; ``runs`` counts
    the Python forward's runs (a tuned call runs none)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 4)
        self.runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        return torch.tanh(self.lin(x))

    def generate(self, x: torch.Tensor, steps: int = 3) -> torch.Tensor:
        for _ in range(steps):
            x = self(x)
        return x

    def helper(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x) * 2


def _eager_twin(net: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of the (possibly wrapped) module: an eager module of its original class."""
    return copy.deepcopy(net)


def test_a_generate_method_calling_self_is_recorded_and_then_runs_tuned(unique_name):
    net = Stepper().eval()
    twin = _eager_twin(net)
    module = Module(net, name=unique_name, strategy=ORT)
    with torch.no_grad():
        module.generate(torch.randn(2, 4), steps=3)
        module.generate(torch.randn(5, 4), steps=2)

    (graph,) = module.graph_specs
    assert graph.num_calls == 5
    assert (graph.inputs[0].min_shape, graph.inputs[0].max_shape) == ((2, 4), (5, 4))

    module.tune()
    x = torch.randn(3, 4)
    net.runs = 0
    with torch.no_grad():
        tuned = module.generate(x, steps=4)
    assert net.runs == 0  # every step ran on ONNX Runtime
    with torch.no_grad():
        torch.testing.assert_close(tuned, twin.generate(x, steps=4), atol=1e-5, rtol=1e-5)


def test_a_helper_calling_self_forward_directly_is_recorded_and_runs_tuned(unique_name):
    net = Stepper().eval()
    twin = _eager_twin(net)
    module = Module(net, name=unique_name, strategy=ORT)
    with torch.no_grad():
        module.helper(torch.randn(2, 4))
        module.helper(torch.randn(4, 4))
    assert module.graph_specs[0].num_calls == 2

    module.tune()
    x = torch.randn(3, 4)
    net.runs = 0
    with torch.no_grad():
        tuned = module.helper(x)
    assert net.runs == 0
    with torch.no_grad():
        torch.testing.assert_close(tuned, twin.helper(x), atol=1e-5, rtol=1e-5)


def test_hooks_fire_once_per_call_through_the_wrapper_the_bare_module_and_self_calls(unique_name):
    net = Stepper().eval()
    seen: list[str] = []
    net.register_forward_pre_hook(lambda mod, args: seen.append("pre"))
    net.register_forward_hook(lambda mod, args, out: seen.append("post"))
    module = Module(net, name=unique_name, strategy=ORT)
    x = torch.randn(2, 4)

    with torch.no_grad():
        for state in ("recording", "tuned"):
            seen.clear()
            module(x)
            net(x)
            module.generate(x, steps=3)
            module.helper(x)  # forward called directly: no hooks, as in torch
            assert seen == ["pre", "post"] * 5, state
            if state == "recording":
                module(torch.randn(5, 4))
                module.tune()


def test_enable_passthrough_makes_every_path_plain_eager(unique_name):
    net = Stepper().eval()
    twin = _eager_twin(net)
    module = Module(net, name=unique_name, strategy=ORT)
    with torch.no_grad():
        module.generate(torch.randn(2, 4))
        module(torch.randn(4, 4))
    module.tune()
    module.enable_passthrough(force=True)

    x = torch.randn(3, 4)
    net.runs = 0
    with torch.no_grad():
        results = [module(x), net(x), module.generate(x, steps=2), module.helper(x), module.forward(x)]
    assert net.runs == 6  # the Python forward ran on every path
    with torch.no_grad():
        expected = [twin(x), twin(x), twin.generate(x, steps=2), twin.helper(x), twin(x)]
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)
    assert module.state is ModuleState.PASSTHROUGH


def test_the_bare_module_of_a_tuned_wrapper_pickles_and_deep_copies_as_a_plain_eager_module(unique_name):
    net = Stepper().eval()
    module = Module(net, name=unique_name, strategy=ORT)
    with torch.no_grad():
        module(torch.randn(2, 4))
        module(torch.randn(4, 4))
    module.tune()
    x = torch.randn(3, 4)

    payload = pickle.dumps(net)
    assert b"aitune_triton" not in payload  # loads where aitune_triton is not installed
    for clone in (pickle.loads(payload), copy.deepcopy(net), copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert type(clone) is Stepper and "forward" not in vars(clone)
        clone.runs = 0
        with torch.no_grad():
            torch.testing.assert_close(clone.generate(x, steps=2), module.generate(x, steps=2), atol=1e-5, rtol=1e-5)
        assert clone.runs == 2  # the copy runs its own forward
    assert isinstance(net, Stepper) and type(net).__name__ == "Stepper" and "forward" not in vars(net)


def test_the_routed_forward_has_the_models_signature_name_and_docstring(unique_name):
    net = Stepper().eval()
    module = Module(net, name=unique_name)

    for forward in (net.forward, module.forward):
        assert list(inspect.signature(forward).parameters) == ["x"]
        assert forward.__name__ == "forward" and forward.__self__ is net
    assert type(net).forward is Stepper.forward


def test_a_forward_set_with_functools_partial_and_update_wrapper_records_and_runs(unique_name):
    def forward(self, x, **kwargs):
        return self.lin(x) * kwargs.get("scale", 1.0)

    net = Stepper().eval()
    net.forward = functools.update_wrapper(functools.partial(forward, net), Stepper.forward)
    twin = Stepper().eval()
    twin.load_state_dict(net.state_dict())
    module = Module(net, name=unique_name, strategy=ORT)

    assert str(module.signature.describe()) == "(x, **kwargs)"
    with torch.no_grad():
        module(torch.randn(2, 4))
        module(torch.randn(5, 4))
        module(torch.randn(3, 4), scale=2.0)
    assert [g.num_calls for g in module.graph_specs] == [2, 1]

    module.tune()
    x = torch.randn(3, 4)  # inside both graph specs' batch ranges (1..5 and 1..3), never recorded
    with torch.no_grad():
        torch.testing.assert_close(module(x), twin.lin(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(module(x, scale=2.0), twin.lin(x) * 2.0, atol=1e-5, rtol=1e-5)


def test_a_forward_wrapped_by_wrapt_over_functools_partial_binds_with_the_partials_signature(unique_name):
    import wrapt

    seen = []

    @wrapt.decorator
    def logged(wrapped, instance, args, kwargs):  # AITune's call form: a wrapt decorator over the forward
        seen.append(len(args))
        return wrapped(*args, **kwargs)

    def forward(self, x, scale=1.0, bias=None):
        return self.lin(x) * scale

    net = Stepper().eval()
    net.forward = logged(functools.update_wrapper(functools.partial(forward, net), Stepper.forward))
    module = Module(net, name=unique_name)

    # the partial's own parameters, not the generic (*args, **kwargs) nor Stepper.forward's (x)
    assert [(p.name, p.kind, p.default_json) for p in module.signature.parameters] == [
        ("x", "POSITIONAL_OR_KEYWORD", None), ("scale", "POSITIONAL_OR_KEYWORD", "1.0"), ("bias", "POSITIONAL_OR_KEYWORD", "null")
    ]
    x = torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(module(x, 2.0), net.lin(x) * 2.0)
        module(torch.randn(3, 4), scale=2.0)  # the same binding as the positional 2.0: the same graph spec
        module(torch.randn(3, 4), scale=1.0)  # the default: as if not passed
        module(torch.randn(4, 4))
    assert [(g.num_calls, g.constants) for g in module.graph_specs] == [(2, {"scale": "const(2.0)"}), (2, {})]
    assert seen == [2, 1, 1, 1]  # every call went through the decorator


def test_replacing_the_forward_of_a_wrapped_module_raises_and_changes_nothing(unique_name):
    net = Stepper().eval()
    module = Module(net, name=unique_name)

    with pytest.raises(ModuleStateError, match=r"forward: this Stepper is wrapped by the live Module .*Replace forward before wrapping"):
        net.forward = lambda x: x
    with pytest.raises(ModuleStateError, match="Replace forward before wrapping"):
        module.forward = lambda x: x
    assert "forward" not in vars(net)
    with torch.no_grad():
        module(torch.randn(2, 4))
    assert module.graph_specs[0].num_calls == 1


def test_a_forward_that_calls_itself_is_recorded_once_per_outer_call(unique_name):
    class Recursive(Stepper):
        def forward(self, x, depth: int = 1):
            if depth:
                return self(x, depth=0) + 1
            return super().forward(x)

    net = Recursive().eval()
    module = Module(net, name=unique_name)
    with torch.no_grad():
        out = module(torch.randn(2, 4))
    (graph,) = module.graph_specs
    assert graph.num_calls == 1 and out.shape == (2, 4)


def test_once_its_wrapper_is_gone_the_module_has_its_own_class_back(unique_name):
    net = Stepper().eval()
    module = Module(net, name=unique_name)
    assert type(net) is not Stepper
    del module
    gc.collect()
    assert type(net) is Stepper
    net.forward = lambda x: x  # no wrapper holds it: an instance forward, as before wrapping
    assert torch.equal(net(torch.ones(1)), torch.ones(1))


def test_a_wrapped_gpt2_generate_is_recorded_tuned_and_decodes_the_same_tokens_as_eager(unique_name):
    net = tiny_gpt2()
    twin = _eager_twin(net)
    module = Module(net, name=unique_name, strategy=ORT)
    prompt = torch.randint(1, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    settings = dict(max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)

    with torch.no_grad():
        module.generate(prompt, **settings)
        module.generate(prompt[:1, :3], **settings)
    assert sum(g.num_calls for g in module.graph_specs) == 8  # one call per generated token

    module.tune()
    with torch.no_grad():
        tuned = module.generate(prompt[:, :4], **settings)
        eager = twin.generate(prompt[:, :4], **settings)
    assert torch.equal(tuned, eager)


def test_a_wrapped_fx_graph_module_still_runs_after_torch_save_and_recompile(unique_name):
    import io

    torch.manual_seed(0)
    net = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh()).eval())
    twin = _eager_twin(net)
    module = Module(net, name=unique_name)
    x = torch.randn(2, 4)
    with torch.no_grad():
        module(x)
        torch.save(module, io.BytesIO())  # GraphModule pickling recompiles, writing forward on its class
        net.recompile()
        after = [module(x), net(x)]
    assert module.graph_specs[0].num_calls == 3  # still routed: every call recorded
    for got in after:
        torch.testing.assert_close(got, twin(x))


def test_torch_export_of_a_wrapped_module_or_its_parent_traces_the_own_forward_and_records_nothing(unique_name):
    net = Stepper().eval()
    module = Module(net, name=unique_name)
    parent = torch.nn.Sequential(net, torch.nn.ReLU()).eval()  # holds the bare module
    x = torch.randn(2, 4)
    with torch.no_grad():
        module(x)
        for target in (net, parent):
            exported = torch.export.export(target, (x,))
            torch.testing.assert_close(exported.module()(x), target(x))
    assert module.graph_specs[0].num_calls == 1 + 2  # the two eager comparison calls, not the traces


class _Reducing(Stepper):
    """A module whose own ``__reduce__`` names ``type(self)``, as some libraries' modules do."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def __reduce__(self):
        return (type(self), (self.scale,))


def test_a_module_whose_reduce_names_its_own_type_pickles_and_copies_as_that_type_while_wrapped(unique_name):
    net = _Reducing(3.0)
    module = Module(net, name=unique_name)
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net), copy.copy(net)):
        assert type(clone) is _Reducing and clone.scale == 3.0
        pickle.dumps(clone)  # a plain instance of its own class
    assert module.state is ModuleState.INIT


class _Tagged(torch.nn.Module):
    def __init_subclass__(cls, *, tag: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.tag = tag


class _TaggedNet(_Tagged, tag="net"):
    def forward(self, x):
        return x


def test_a_class_that_cannot_be_subclassed_without_arguments_is_refused_with_what_to_do(unique_name):
    from aitune_triton.errors import ArgumentTypeError

    with pytest.raises(ArgumentTypeError, match=r"_TaggedNet cannot be wrapped: Module routes its forward through a subclass.*Wrap a module"):
        Module(_TaggedNet(), name=unique_name)


def test_routed_classes_do_not_accumulate_when_modules_come_and_go(unique_name):
    import weakref

    def wrap_and_drop(count: int, start: int) -> list:
        classes = []
        for index in range(start, start + count):
            net = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4)))  # a class of its own
            classes.append(weakref.ref(type(net)))
            module = Module(net, name=f"{unique_name}_{index}")
            with torch.no_grad():
                module(torch.randn(1, 4))
            del module, net
        gc.collect()
        return classes

    few = wrap_and_drop(2, 0)
    many = wrap_and_drop(10, 2)
    alive = sum(reference() is not None for reference in few + many)
    assert alive <= 2  # at most the last ones, still referenced by this frame's leftovers, not one per module


def test_a_wrapped_gpt2_generate_with_its_default_cache_is_recorded_tuned_and_decodes_like_eager(unique_name):
    from transformers.cache_utils import DynamicCache

    net = tiny_gpt2()
    twin = _eager_twin(net)
    module = Module(net, name=unique_name, strategy=ORT)
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)  # use_cache left at its default, True
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.generate(torch.tensor([[1, 2, 3, 4, 5]]), **settings)
        net.generate(torch.tensor([[1, 2, 3], [4, 5, 6]]), **settings)
    # generate() passes each step's returned cache on itself: the in-place update is not the caller's concern
    assert not [w for w in caught if "object it was given" in str(w.message)]

    # The prefill step is given an empty cache (no tensor inputs); the decode steps a filled one.
    prefill, decode = module.graph_specs
    assert [spec.path for spec in prefill.inputs] == ["input_ids", "position_ids"]
    assert [spec.path for spec in decode.inputs] == ["input_ids", "cache.0", "cache.1", "cache.2", "cache.3", "position_ids"]
    assert (prefill.num_calls, decode.num_calls) == (2, 6)
    assert not any("DynamicCache" in value for graph in (prefill, decode) for value in graph.constants.values())
    assert decode.dims["batch"].bounds == (1, 2) and (3, 7) in [dim.bounds for dim in decode.dims.values()]  # the cache's length varied: 3..7

    module.tune()
    inner_runs: list[int] = []
    net.transformer.register_forward_hook(lambda *_: inner_runs.append(1))
    prompt = torch.tensor([[9, 10, 11, 12], [13, 14, 15, 16]])  # a prompt length never recorded, inside the ranges
    generated = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        tuned = net.generate(prompt, **generated)
        eager = twin.generate(prompt, **generated)
    assert inner_runs == []  # every step, the prefill included, ran on ONNX Runtime
    assert torch.equal(tuned.sequences, eager.sequences)
    for tuned_logits, eager_logits in zip(tuned.logits, eager.logits, strict=True):  # the cache carried every step
        torch.testing.assert_close(tuned_logits, eager_logits, atol=1e-4, rtol=1e-4)
    assert isinstance(tuned.past_key_values, DynamicCache) and tuned.past_key_values.get_seq_length() == 6
