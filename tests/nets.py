"""Small real modules shared by the tests (importable as `nets`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import copy

import torch


class TwoInputNet(torch.nn.Module):
    """Two tensor inputs (the second optional) and nested outputs: a dict holding a list."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(4, 16)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, scale: float = 1.0):
        hidden = torch.relu(self.a(x) + (self.b(y) if y is not None else 0)) * scale
        return {"hidden": [hidden, hidden.sum(-1)], "logits": hidden[:, :3]}


def record_two_input_calls(module, generator: torch.Generator) -> None:
    """Call a wrapped TwoInputNet with and without ``y`` at batch sizes 1, 3 and 5 (two graph
    specs), drawing the inputs from ``generator``."""
    for batch in (1, 3, 5):
        module(torch.randn(batch, 8, generator=generator), torch.randn(batch, 4, generator=generator))
        module(torch.randn(batch, 8, generator=generator))



def record_two_specs(module: torch.nn.Module, batches: tuple[int, ...] = (1, 3, 5)) -> None:
    """Record a TwoInputNet wrapper with two graph specs, ``(x, y)`` and ``(x,)``, at ``batches``."""
    with torch.no_grad():
        for batch in batches:
            module(torch.randn(batch, 8), torch.randn(batch, 4))
            module(torch.randn(batch, 8))


def tuned_two_input_net(name: str, root):
    """A TwoInputNet (seed 0) wrapped as ``name``, recorded with :func:`record_two_specs`, tuned with
    ONNX Runtime (tuning cache under ``root``) and saved to ``root/checkpoint``. Without the batch
    size sweep: the tests using it check names, routes and refusals at the recorded batch range 1..5.

    Returns:
        ``(module, checkpoint path)``.
    """
    import aitune_triton

    torch.manual_seed(0)
    module = aitune_triton.Module(
        TwoInputNet().eval(), name=name, strategy=aitune_triton.OneBackendStrategy("onnxruntime", find_max_batch_size=False),
        cache_dir=root / "cache",
    )
    record_two_specs(module)
    module.tune()
    return module, aitune_triton.save(module, root / "checkpoint")


class IndependentNet(torch.nn.Module):
    """Independent samples along the batch; two outputs, one of them per-sample scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor):
        hidden = torch.relu(self.linear(x))
        return {"hidden": hidden, "total": hidden.sum(-1)}


class Centered(torch.nn.Module):
    """Each sample's output depends on the whole batch (the batch mean)."""

    def forward(self, x: torch.Tensor):
        return x - x.mean(dim=0, keepdim=True)


class PerSampleNet(torch.nn.Module):
    """Per-sample vectors in and out: ``lengths`` (B,) int64 and ``scale`` (B,) float32."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, scale: torch.Tensor):
        hidden = self.linear(x) * scale[:, None]
        return {"total": hidden.sum(-1), "doubled": lengths * 2}


class Bf16BoolNet(torch.nn.Module):
    """Computes in bfloat16; a bool input selects, a bool output says where the result is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3).to(torch.bfloat16)

    def forward(self, x: torch.Tensor, keep: torch.Tensor):
        y = self.linear(x)
        return {"y": y, "positive": y > 0, "kept": torch.where(keep, y, torch.zeros_like(y))}


def eager(module: torch.nn.Module) -> torch.nn.Module:
    """An eager reference for a module, wrapped or not: a deep copy of the torch module, of its
    original class. While a wrapper lives, every call of the module itself goes through the
    wrapper's state (recorded or tuned), so a test that compares with eager compares with this."""
    from aitune_triton import Module

    return copy.deepcopy(module.module if isinstance(module, Module) else module)


class MaskedMeanNet(torch.nn.Module):
    """Token ids and a 0/1 attention mask in, per-token states and their masked mean out: padding
    the sequence (ids with any value, mask with 0) changes no valid output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(32, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        states = torch.tanh(self.proj(self.embed(input_ids))) * mask
        pooled = states.sum(1) / mask.sum(1).clamp(min=1.0)
        return {"states": states, "pooled": pooled}


class LeakyMeanNet(MaskedMeanNet):
    """Like MaskedMeanNet but its mean ignores the mask: padding changes ``pooled``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        states = torch.tanh(self.proj(self.embed(input_ids))) * mask
        return {"states": states, "pooled": states.mean(1)}


def record_token_calls(module, lengths=(3, 5, 7, 9, 12), batch: int = 1, seed: int = 0) -> None:
    """Call a wrapped MaskedMeanNet-like module once per length (token ids 1..31, mask all ones)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for length in lengths:
            ids = torch.randint(1, 32, (batch, length), generator=generator)
            module(ids, torch.ones(batch, length, dtype=torch.int64))


class WideNet(torch.nn.Module):
    """Two Linear layers (64 -> 128 -> 32), enough weights for int8 quantization to matter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 32)

    def forward(self, x: torch.Tensor):
        return self.down(torch.relu(self.up(x)))


def build_on_recorded(backend, net: torch.nn.Module, calls: list[tuple], workdir):
    """Record ``calls`` (argument tuples of one input structure) on ``net``, build ``backend`` on the
    largest, with every call as a calibration sample, as a strategy does (under ``no_grad``);
    return ``(BuildContext, log lines)``."""
    from aitune_triton.backends import BuildContext
    from aitune_triton.module.recording import Recorder
    from aitune_triton.spec import ForwardSignature, flatten_call

    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        for args in calls:
            recorder.record(net, args, {})
    (graph,) = recorder.graph_specs()
    largest = recorder.largest_sample(graph)
    lines: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    context = BuildContext(
        net, signature, graph, flatten_call(signature, largest.args, largest.kwargs), workdir, torch.device("cpu"),
        log=lines.append, samples=[flatten_call(signature, args, {}) for args in calls],
    )  # fmt: skip
    with torch.no_grad():
        backend.build(context)
    return context, lines


def run_built(backend, context, *args) -> list[torch.Tensor]:
    """``backend``'s flat outputs for the call ``args`` (in ``context``'s signature)."""
    from aitune_triton.spec import flatten_call

    with torch.no_grad():
        return backend.infer(flatten_call(context.signature, args, {}))
