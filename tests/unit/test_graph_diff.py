"""GraphSpecMismatchError names what differs between a call and the closest graph specs."""

from __future__ import annotations

import pytest
import torch

from aitune_triton import Module, OneBackendStrategy
from aitune_triton.errors import GraphSpecMismatchError
from aitune_triton.graph_diff import describe_leaves, leaf_differences, mismatch_message
from aitune_triton.spec import ForwardSignature, flatten_call


class DecoderLike(torch.nn.Module):
    """The hidden arguments a Hugging Face decoder's generate() passes: a mask, a position tensor, flags."""

    def forward(self, input_ids, attention_mask=None, cache_position=None, use_cache=True, output_attentions=False, temperature=1.0):
        hidden = input_ids.float().unsqueeze(-1)
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1)
        if cache_position is not None:
            hidden = hidden + cache_position.float().view(1, -1, 1)
        return hidden * (2.0 if use_cache else 1.0) / temperature


def _call(module: torch.nn.Module, *args, **kwargs):
    return flatten_call(ForwardSignature.from_callable(module.forward), args, kwargs)


def test_describe_leaves_keeps_constants_holding_commas_whole():
    leaves = describe_leaves('x: tensor(float32, rank=2), sizes: const([1, 2]), name: const("a, b: c")')
    assert leaves == {"x": "tensor(float32, rank=2)", "sizes": "const([1, 2])", "name": 'const("a, b: c")'}


def test_leaf_differences_name_missing_extra_dtype_rank_and_constant():
    given = {"a": "tensor(int32, rank=3)", "b": "const(false)", "extra": "tensor(float32, rank=1)"}
    expected = {"a": "tensor(int64, rank=2)", "b": "const(true)", "mask": "tensor(int64, rank=2)"}
    assert leaf_differences(given, expected) == [
        "missing argument mask (tensor(int64, rank=2))",
        "extra argument extra (tensor(float32, rank=1))",
        "a: dtype int32, expected int64; rank 3, expected 2",
        "b: constant false differs, expected true",
    ]


def test_the_message_names_the_differences_from_the_closest_graph_spec_only():
    net = DecoderLike()
    ids = torch.ones(1, 4, dtype=torch.int64)
    recorded = [
        _call(net, ids, attention_mask=torch.ones(1, 4, dtype=torch.int64), cache_position=torch.arange(4)),
        _call(net, ids.float()),
    ]
    graphs = [(f"graph_{i}", call.describe()) for i, call in enumerate(recorded)]

    message = mismatch_message("headline", _call(net, ids, attention_mask=torch.ones(1, 4, dtype=torch.int64)), graphs)

    assert message.splitlines()[:4] == [
        "headline",
        "  call: input_ids: tensor(int64, rank=2), attention_mask: tensor(int64, rank=2)",
        "  differences from graph_0 (closest):",
        "    - missing argument cache_position (tensor(int64, rank=1))",
    ]
    assert "graph_1 (closest)" not in message
    assert f"    graph_1: {graphs[1][1]}" in message


def test_a_tuned_module_names_the_constant_that_differs(unique_name):
    net = DecoderLike().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("eager"))
    with torch.no_grad():
        module(torch.ones(2, 4, dtype=torch.int64), attention_mask=torch.ones(2, 4, dtype=torch.int64), temperature=0.5)
    module.tune()
    ids, mask = torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64)

    with pytest.raises(GraphSpecMismatchError) as raised:
        module(ids, attention_mask=mask, temperature=0.7)
    assert "    - temperature: constant 0.7 differs, expected 0.5\n" in str(raised.value)

    with pytest.raises(GraphSpecMismatchError) as raised:  # a value other than its default is an argument of its own
        module(ids, attention_mask=mask, temperature=0.5, use_cache=False)
    assert "    - extra argument use_cache (const(false))\n" in str(raised.value)
