"""The tuned call's fast path (CallLayouts) gives what flatten_call gives, call after call.

Each case flattens a first call (which fills the cache) and then a second one, with new tensors,
through the cache, and compares it with flatten_call of the same second call: same key, leaf
paths, structure and leaves, or the same error. The module-level tests check that a tuned module
picks the same graph spec, and raises the same errors, once a similar call has been cached.
"""

from __future__ import annotations

import collections
import copy
import enum

import numpy as np
import pytest
import torch
from nets import TwoInputNet

from aitune_triton import Module, OneBackendStrategy
from aitune_triton.errors import GraphSpecMismatchError
from aitune_triton.spec import CallLayouts, CallStructure, ForwardSignature, flatten_call

Pair = collections.namedtuple("Pair", ["left", "right"])


class Mode(enum.IntEnum):
    FAST = 1


def _forward(x, y=None, *extra, scale=1.0, **options):
    return x


SIGNATURE = ForwardSignature.from_callable(_forward)


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


def _assert_same(got: CallStructure, want: CallStructure) -> None:
    assert got.key == want.key
    assert got.flat.paths == want.flat.paths
    assert got.flat.treespec == want.flat.treespec
    assert len(got.flat.leaves) == len(want.flat.leaves)
    for mine, theirs in zip(got.flat.leaves, want.flat.leaves):
        if isinstance(theirs, torch.Tensor):
            assert mine is theirs
        else:
            assert type(mine) is type(theirs) and mine == theirs
    assert got.flat.constants == want.flat.constants
    assert got.describe() == want.describe()


# Per case: a first call and a second call of the same structure with other tensors.
SAME_STRUCTURE = {
    "one positional tensor": (lambda: ((t(2, 8),), {})),
    "two positional tensors": (lambda: ((t(2, 8), t(2, 4)), {})),
    "a keyword tensor": (lambda: ((t(2, 8),), {"y": t(2, 4)})),
    "a scalar equal to its default": (lambda: ((t(2, 8),), {"scale": 1.0})),
    "a scalar that is not the default": (lambda: ((t(2, 8),), {"scale": 0.5})),
    "an int where the default is a float": (lambda: ((t(2, 8),), {"scale": 1})),
    "extra positionals": (lambda: ((t(2, 8), None, t(3), 4, "s"), {})),
    "keyword options": (lambda: ((t(2, 8),), {"b": t(1), "a": True, "mode": "greedy", "dtype": torch.float16})),
    "nested dicts and lists": (lambda: ((t(2, 8),), {"past": {"key": [t(2, 4), t(2, 4)], "value": (t(2, 4), None)}})),
    "a namedtuple": (lambda: ((Pair(t(2, 8), t(2, 8)),), {})),
    "another dtype and rank": (lambda: ((t(2, 8, 3, dtype=torch.int64),), {"y": t(5, dtype=torch.bfloat16)})),
    "a negative zero": (lambda: ((t(2, 8),), {"scale": -0.0})),
    "a device": (lambda: ((t(2, 8),), {"where": torch.device("cpu")})),
    "keywords out of signature order": (lambda: ((), {"y": t(2, 4), "x": t(2, 8)})),
    "extra keywords out of sorted order": (lambda: ((t(2, 8),), {"b": t(3), "a": t(2, 2)})),
}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non_strict"])
@pytest.mark.parametrize("case", list(SAME_STRUCTURE), ids=list(SAME_STRUCTURE))
def test_a_repeated_call_structure_flattens_as_flatten_call_flattens_it(case, strict):
    layouts = CallLayouts(SIGNATURE, strict)
    first_args, first_kwargs = SAME_STRUCTURE[case]()
    _assert_same(layouts.flatten(first_args, first_kwargs), flatten_call(SIGNATURE, first_args, first_kwargs, strict))
    assert len(layouts) == 1
    args, kwargs = SAME_STRUCTURE[case]()

    got = layouts.flatten(args, kwargs)

    assert got.args is args and got.kwargs is kwargs
    _assert_same(got, flatten_call(SIGNATURE, args, kwargs, strict))
    assert len(layouts) == 1  # the second call reused the first one's layout


# Per case: the cached call, then a call that could be mistaken for it.
DIVERGING = {
    "a changed constant": (((t(2, 8),), {"scale": 2.0}), ((t(2, 8),), {"scale": 3.0})),
    "a constant of another type": (((t(2, 8),), {"scale": 1.0}), ((t(2, 8),), {"scale": True})),
    "an int for a float": (((t(2, 8),), {"scale": 2.0}), ((t(2, 8),), {"scale": 2})),
    "a negative zero": (((t(2, 8),), {"scale": 0.0}), ((t(2, 8),), {"scale": -0.0})),
    "another dtype": (((t(2, 8),), {}), ((t(2, 8, dtype=torch.float64),), {})),
    "another rank": (((t(2, 8),), {}), ((t(2, 8, 1),), {})),
    "a new keyword": (((t(2, 8),), {}), ((t(2, 8),), {"y": t(2, 4)})),
    "a positional spelled as keyword": (((t(2, 8), t(2, 4)), {}), ((t(2, 8),), {"y": t(2, 4)})),
    "None for a tensor": (((t(2, 8), t(2, 4)), {}), ((t(2, 8), None), {})),
    "a tensor for None": (((t(2, 8), None, None), {}), ((t(2, 8), None, t(1)), {})),
    "a dict with other keys": (((t(2, 8),), {"past": {"key": t(1)}}), ((t(2, 8),), {"past": {"value": t(1)}})),
    "a list for a tuple": (((t(2, 8),), {"past": [t(1)]}), ((t(2, 8),), {"past": (t(1),)})),
    "a longer list": (((t(2, 8),), {"past": [t(1)]}), ((t(2, 8),), {"past": [t(1), t(1)]})),
    "keywords in another order": (((t(2, 8),), {"a": t(1), "b": 1}), ((t(2, 8),), {"b": 1, "a": t(1)})),
    "a namedtuple for a tuple": (((Pair(t(1), t(1)),), {}), (((t(1), t(1)),), {})),
}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non_strict"])
@pytest.mark.parametrize("case", list(DIVERGING), ids=list(DIVERGING))
def test_a_call_that_differs_from_a_cached_one_flattens_as_flatten_call_flattens_it(case, strict):
    layouts = CallLayouts(SIGNATURE, strict)
    (cached_args, cached_kwargs), (args, kwargs) = DIVERGING[case]
    layouts.flatten(cached_args, cached_kwargs)
    layouts.flatten(cached_args, cached_kwargs)

    got = layouts.flatten(args, kwargs)

    _assert_same(got, flatten_call(SIGNATURE, args, kwargs, strict))
    _assert_same(layouts.flatten(args, kwargs), flatten_call(SIGNATURE, args, kwargs, strict))  # now from its own layout
    _assert_same(layouts.flatten(cached_args, cached_kwargs), flatten_call(SIGNATURE, cached_args, cached_kwargs, strict))


def test_a_non_strict_call_with_another_constant_shares_the_key_but_carries_its_own_constants():
    layouts = CallLayouts(SIGNATURE, strict=False)
    layouts.flatten((t(2, 8),), {"scale": 2.0})

    call = layouts.flatten((t(2, 8),), {"scale": 3.0})

    assert call.key == flatten_call(SIGNATURE, (t(2, 8),), {"scale": 2.0}, strict=False).key
    assert call.flat.constants == {"scale": "const(3.0)"}


@pytest.mark.parametrize(
    "args, kwargs",
    [((t(2, 8), t(2, 4), t(1)), {"y": t(2, 4)}), ((), {"y": t(2, 4)}), ((t(2, 8),), {"x": t(2, 8)})],
    ids=["y given twice", "x missing", "x given twice"],
)
def test_a_call_that_does_not_fit_the_signature_raises_as_flatten_call_raises_after_a_cached_call(args, kwargs):
    layouts = CallLayouts(SIGNATURE)
    layouts.flatten((t(2, 8),), {"y": t(2, 4)})
    with pytest.raises(TypeError) as slow:
        flatten_call(SIGNATURE, args, kwargs)

    with pytest.raises(TypeError) as fast:
        layouts.flatten(args, kwargs)

    assert str(fast.value) == str(slow.value)
    assert len(layouts) == 1


def _one_tensor_twice():
    x = t(2, 8)
    return (x, x), {}


@pytest.mark.parametrize(
    "make",
    [
        lambda: ((np.zeros((2, 8), dtype=np.float32),), {}),
        lambda: ((t(2, 8),), {"mode": Mode.FAST}),
        lambda: ((t(2, 8),), {"past": {1: t(1)}}),
        lambda: ((t(2, 8),), {"anything": object()}),
        lambda: ((t(2, 8),), {"scale": float("nan")}),
        _one_tensor_twice,
    ],
    ids=["a numpy array", "an IntEnum", "a dict with int keys", "an object", "a NaN", "one tensor passed twice"],
)
def test_calls_the_cache_cannot_tell_apart_take_flatten_call_every_time(make):
    layouts = CallLayouts(SIGNATURE)
    for _ in range(2):
        args, kwargs = make()
        got = layouts.flatten(args, kwargs)
        want = flatten_call(SIGNATURE, args, kwargs)
        assert got.key == want.key and got.flat.paths == want.flat.paths

    assert len(layouts) == 0


def test_the_cache_keeps_its_capacity_of_the_newest_structures_and_flattens_every_call_alike():
    layouts = CallLayouts(SIGNATURE, capacity=2)
    for rank in (1, 2, 3, 4, 1, 4):
        x = torch.zeros((1,) * rank)
        _assert_same(layouts.flatten((x,), {}), flatten_call(SIGNATURE, (x,), {}))

    assert len(layouts) == 2


def test_a_non_strict_call_with_a_new_constant_each_time_keeps_its_own_constants():
    layouts = CallLayouts(SIGNATURE, strict=False, capacity=4)
    for step in range(10):
        call = layouts.flatten((t(2, 8),), {"scale": 0.1 * step})
        assert call.flat.constants == flatten_call(SIGNATURE, (t(2, 8),), {"scale": 0.1 * step}, strict=False).flat.constants

    assert len(layouts) == 4


# ------------------------------------------------------------------------------ tuned modules
def _tuned_two_input_net(name: str, strict: bool = True, backend: str = "eager", scale: float | None = None) -> tuple[Module, TwoInputNet]:
    torch.manual_seed(0)
    net = TwoInputNet().eval()
    reference = copy.deepcopy(net)
    module = Module(net, name=name, strategy=OneBackendStrategy(backend), strict=strict)
    extra = {} if scale is None else {"scale": scale}
    with torch.no_grad():
        for batch in (1, 3):
            module(torch.randn(batch, 8), torch.randn(batch, 4), **extra)
            module(torch.randn(batch, 8), **extra)
    module.tune()
    return module, reference


def test_a_tuned_module_runs_each_call_on_its_own_graph_spec_s_backend_with_calls_alternating(unique_name):
    # ONNX Runtime sessions take the inputs of their own graph spec only: a call sent to the other
    # graph spec's session would fail or compute without y.
    module, reference = _tuned_two_input_net(unique_name, backend="onnxruntime")
    with torch.no_grad():
        for _ in range(3):
            x, y = torch.randn(2, 8), torch.randn(2, 4)
            both, alone, keyword = module(x, y), module(x), module(x, y=y)
            assert torch.allclose(both["hidden"][0], reference(x, y)["hidden"][0], atol=1e-5)
            assert torch.allclose(alone["hidden"][0], reference(x)["hidden"][0], atol=1e-5)
            assert torch.allclose(keyword["hidden"][0], reference(x, y)["hidden"][0], atol=1e-5)
            assert not torch.allclose(both["hidden"][0], alone["hidden"][0])


@pytest.mark.parametrize(
    "call, shown",
    [
        (lambda m: m(torch.randn(2, 8), scale=2.0), r"scale: const\(2.0\)"),
        (lambda m: m(torch.randn(2, 8, dtype=torch.float64)), r"x: tensor\(float64, rank=2\)"),
        (lambda m: m(torch.randn(2, 8), torch.randn(2, 4), y2=torch.randn(2, 4)), None),
        (lambda m: m(torch.randn(2, 8, 1)), r"x: tensor\(float32, rank=3\)"),
    ],
    ids=["a changed constant", "another dtype", "a new keyword", "another rank"],
)
def test_a_tuned_module_refuses_a_call_no_graph_spec_matches_after_a_similar_call_was_cached(unique_name, call, shown):
    module, _ = _tuned_two_input_net(unique_name)
    with torch.no_grad():
        module(torch.randn(2, 8))
        module(torch.randn(2, 8), torch.randn(2, 4))
        if shown is None:  # the forward takes no y2: the same TypeError as the module's own forward
            with pytest.raises(TypeError, match="y2"):
                call(module)
        else:
            with pytest.raises(GraphSpecMismatchError, match=shown):
                call(module)
        module(torch.randn(2, 8))  # the cached call still works


def test_a_tuned_module_given_none_for_an_optional_tensor_after_a_tensor_runs_the_spec_recorded_without_it(unique_name):
    module, reference = _tuned_two_input_net(unique_name)
    x = torch.randn(2, 8)
    with torch.no_grad():
        module(x, torch.randn(2, 4))

        got = module(x, None)

        assert torch.allclose(got["logits"], reference(x)["logits"], atol=1e-6)


def test_a_non_strict_tuned_module_notices_a_changed_constant_after_a_cached_call(unique_name):
    module, reference = _tuned_two_input_net(unique_name, strict=False, backend="onnxruntime", scale=2.0)
    x = torch.randn(3, 8)
    with torch.no_grad():
        for _ in range(2):
            assert torch.allclose(module(x, scale=2.0)["logits"], reference(x, scale=2.0)["logits"], atol=1e-5)

        with pytest.warns(UserWarning, match=r"differ from those its onnxruntime backend was built with"):
            got = module(x, scale=5.0)["logits"]

        assert torch.allclose(got, reference(x, scale=5.0)["logits"], atol=1e-5)
        assert torch.allclose(module(x, scale=2.0)["logits"], reference(x, scale=2.0)["logits"], atol=1e-5)


def test_a_transformers_cache_argument_growing_call_by_call_reuses_one_layout_and_flattens_as_flatten_call():
    from transformers.cache_utils import DynamicCache

    def forward(input_ids, past=None, use_cache=True):
        return input_ids

    signature = ForwardSignature.from_callable(forward)
    layouts = CallLayouts(signature)
    for length in (3, 4, 5):
        cache = DynamicCache()
        cache.update(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4), 0)
        args, kwargs = (torch.ones(1, 1, dtype=torch.long),), {"past": cache}

        _assert_same(layouts.flatten(args, kwargs), flatten_call(signature, args, kwargs))

    assert len(layouts) == 1
