"""Small real modules with container outputs (importable as `output_nets`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """A 2-layer GPT-2 built from a config (no download), eval mode, default ``use_cache=True``:
    it returns a ModelOutput holding a ``DynamicCache``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


#: (batch, sequence length) of the calls recorded for tiny_gpt2; new calls use other lengths.
GPT2_RECORDED = ((1, 4), (2, 6), (3, 8))


def record_gpt2(module: torch.nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for batch, length in GPT2_RECORDED:
            module(torch.randint(0, 100, (batch, length), generator=generator))


def cache_tensors(output) -> list[torch.Tensor]:
    """Keys and values of every layer of a transformers cache output, in layer order."""
    cache = output["cache"] if "cache" in output else output["past_key_values"]  # transformers 5 renamed it
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


@dataclass
class Encoded:
    """A dataclass output: two tensors and a constant."""

    hidden: torch.Tensor
    pooled: torch.Tensor
    kind: str = "encoded"


class DataclassNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> Encoded:
        hidden = torch.tanh(self.linear(x))
        return Encoded(hidden, hidden.mean(-1))
