"""One tuned, exported and served module for the whole integration session.

TwoInputNet (tests/conftest.py) is recorded with two graph specs, ``(x, y)`` and ``(x,)``, at
batch sizes 1, 3 and 5, tuned with ONNX Runtime (graph_0) and AOTInductor (graph_1, with its
served layout measured) so that both runtimes are served, saved as a checkpoint, exported by the real command line in a
subprocess, and served by ONE TritonServer that is always stopped at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from nets import TwoInputNet, record_two_input_calls
from nets import eager as eager_copy

import aitune_triton
from aitune_triton import Module, OneBackendStrategy
from triton_helpers import require_tritonserver

ENTRY_MODEL = "served_two_input_net"
SCALAR_MODEL = "served_scalar_net"
CENTERED_MODEL = "served_centered_net"
SCALED_MODEL = "served_scaled_net"
TIED_MODEL = "served_tied_net"
ORT_TORCHSCRIPT_MODEL = "served_ort_torchscript_net"
ORT_INT8_MODEL = "served_ort_int8_net"
ORT_FUSED_STATIC_MODEL = "served_ort_fused_static_bert"
OPENVINO_MODEL = "served_openvino_net"
OPENVINO_INT8_MODEL = "served_openvino_int8_net"


class TiedNet(torch.nn.Module):
    """Two inputs whose token axes the model needs equal (an embedding added to features)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 6)

    def forward(self, ids: torch.Tensor, features: torch.Tensor):
        return self.embedding(ids) + features


class TokenNet(torch.nn.Module):
    """Token ids and a mask, dynamic batch and sequence, nested outputs (served through ONNX Runtime's TorchScript export)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 8)
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        hidden = torch.tanh(self.linear(self.embedding(ids))) * mask.unsqueeze(-1)
        return {"hidden": hidden, "pooled": [hidden.sum(1)]}


class WideNet(torch.nn.Module):
    """Two Linear layers: enough weights for int8 quantization to matter."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(64, 128)
        self.down = torch.nn.Linear(128, 32)

    def forward(self, x: torch.Tensor):
        return self.down(torch.relu(self.up(x)))


class TinyBertNet(torch.nn.Module):
    """A 2-layer BERT with a 32-wide hidden state built offline (random weights) -> its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            max_position_embeddings=32)  # fmt: skip
        self.bert = BertModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def min_token_cosine(eager: torch.Tensor, tuned: torch.Tensor) -> float:
    """The accuracy gate of the int8 BERT: the lowest cosine between eager's and the tuned hidden states, per token."""
    return float(torch.nn.functional.cosine_similarity(eager, tuned, dim=-1).min())


class ScalarNet(torch.nn.Module):
    """Never batched (the first axis is always 2); returns a 0-d tensor among its outputs."""

    def forward(self, x: torch.Tensor):
        return {"total": x.sum(), "doubled": x * 2}


class CenteredNet(torch.nn.Module):
    """Each sample's output depends on the whole batch (the batch mean): Triton must not join requests."""

    def forward(self, x: torch.Tensor):
        return x - x.mean(dim=0, keepdim=True)



@dataclass
class Served:
    """What the session fixture built.

    Attributes:
        net: The eager TwoInputNet (the reference).
        module: The in-process tuned Module around ``net``.
        checkpoint: The saved checkpoint.
        repository: The model repository the CLI exported into.
        server: The running TritonServer.
        entry_model: The entry (router) model name.
        graph_models: The graph model names.
        extra: Entry model name -> (eager module, tuned Module) of the other exported modules.
    """

    net: torch.nn.Module
    module: Module
    checkpoint: Path
    repository: Path
    server: object
    entry_model: str
    graph_models: list[str]
    extra: dict


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    from aitune_triton.triton.server import TritonServer

    require_tritonserver()

    root = tmp_path_factory.mktemp("served")
    previous_cache = os.environ.get("AITUNE_TRITON_CACHE_DIR")
    os.environ["AITUNE_TRITON_CACHE_DIR"] = str(root / "cache")
    server = None
    try:
        torch.manual_seed(0)
        net = TwoInputNet().eval()
        module = Module(
            net,
            name=ENTRY_MODEL,
            # The recorded batch range 1..5 (no sweep): the served tests check refusals and splits at
            # batch 6. graph_1 measures its served layouts (short windows): the CLI export writes them.
            strategies=[
                OneBackendStrategy("onnxruntime", find_max_batch_size=False),
                OneBackendStrategy("aoti", find_max_batch_size=False, measure_layouts=True, layout_seconds=0.25),
            ],
        )
        generator = torch.Generator().manual_seed(1)
        record_two_input_calls(module, generator)
        module.tune()
        assert [g.backend.name for g in module.tuned_graphs] == ["onnxruntime", "aoti"]
        checkpoint = aitune_triton.save(module, root / "checkpoint")
        repository = root / "model_repository"
        exported = subprocess.run(
            [sys.executable, "-m", "aitune_triton", "export", str(checkpoint), "-o", str(repository), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert exported.returncode == 0, f"export failed:\n{exported.stdout}\n{exported.stderr}"
        extra = {}
        tied_net = TiedNet().eval()
        tied = Module(tied_net, name=TIED_MODEL, strategy=OneBackendStrategy("onnxruntime"))
        for batch, length in ((1, 4), (3, 7), (2, 9)):
            tied(torch.randint(0, 50, (batch, length), generator=generator), torch.randn(batch, length, 6, generator=generator))
        tied.tune()
        # router=True for the single-graph modules here: tests call their entry and graph models by name.
        aitune_triton.export(tied, repository, show_progress=False, router=True)
        extra[TIED_MODEL] = (eager_copy(tied_net), tied)
        for name, eager, shapes in (
            (SCALAR_MODEL, ScalarNet().eval(), [(2, 3), (2, 5), (2, 4)]),
            (CENTERED_MODEL, CenteredNet().eval(), [(2, 3), (4, 3), (3, 3)]),
        ):
            other = Module(eager, name=name, strategy=OneBackendStrategy("onnxruntime"))
            for shape in shapes:
                other(torch.randn(*shape, generator=generator))
            other.tune()
            aitune_triton.export(other, repository, show_progress=False, router=True)
            extra[name] = (eager_copy(eager), other)
        # Two graph specs with the same tensors, told apart only by a constant argument.
        scaled_net = TwoInputNet().eval()
        scaled = Module(scaled_net, name=SCALED_MODEL, strategy=OneBackendStrategy("onnxruntime"))
        for batch in (1, 3):
            scaled(torch.randn(batch, 8, generator=generator))
            scaled(torch.randn(batch, 8, generator=generator), scale=2.0)
        scaled.tune()
        aitune_triton.export(scaled, repository, show_progress=False)
        extra[SCALED_MODEL] = (eager_copy(scaled_net), scaled)
        # ONNX Runtime with the TorchScript exporter and measured session options, and int8.
        from aitune_triton.backends import OnnxRuntimeBackend

        token_net = TokenNet().eval()
        token = Module(token_net, name=ORT_TORCHSCRIPT_MODEL, strategy=OneBackendStrategy(OnnxRuntimeBackend(exporter="torchscript")))
        for batch, length in ((1, 4), (3, 7), (2, 9)):
            token(torch.randint(0, 50, (batch, length), generator=generator), torch.ones(batch, length))
        wide_net = WideNet().eval()
        wide = Module(wide_net, name=ORT_INT8_MODEL, strategy=OneBackendStrategy(OnnxRuntimeBackend(precision="int8"), atol=0.1, rtol=0.1))
        for batch in (1, 4, 8):
            wide(torch.randn(batch, 64, generator=generator))
        # The transformer optimizer's fusions (required) and static int8 calibrated on the recorded calls.
        bert_net = TinyBertNet().eval()
        fused_static = OnnxRuntimeBackend(exporter="torchscript", transformer_fusion=True, precision="int8", quantization="static")
        bert = Module(bert_net, name=ORT_FUSED_STATIC_MODEL, strategy=OneBackendStrategy(fused_static, accuracy=min_token_cosine, min_accuracy=0.95))
        for batch, length in ((1, 5), (3, 12), (2, 16)):
            bert(torch.randint(1, 64, (batch, length), generator=generator), torch.ones(batch, length, dtype=torch.long))
        for name, eager, other in ((ORT_TORCHSCRIPT_MODEL, token_net, token), (ORT_INT8_MODEL, wide_net, wide), (ORT_FUSED_STATIC_MODEL, bert_net, bert)):
            other.tune()
            aitune_triton.export(other, repository, show_progress=False, router=True)
            extra[name] = (eager_copy(eager), other)
        # OpenVINO fp32 (threads measured) on the token net and int8 (NNCF) on the wide net.
        from aitune_triton.backends import OpenVINOBackend

        ov_token_net = TokenNet().eval()
        ov_token = Module(ov_token_net, name=OPENVINO_MODEL, strategy=OneBackendStrategy(OpenVINOBackend()))
        for batch, length in ((1, 4), (3, 7), (2, 9)):
            ov_token(torch.randint(0, 50, (batch, length), generator=generator), torch.ones(batch, length))
        ov_wide_net = WideNet().eval()
        # Static int8 calibrated on 13 rows moves some outputs by more than the 0.1 of int8's default
        # elementwise gate: judged by the cosine of each output row instead.
        ov_wide = Module(ov_wide_net, name=OPENVINO_INT8_MODEL, strategy=OneBackendStrategy(
            OpenVINOBackend(precision="int8"), min_accuracy=0.98,
            accuracy=lambda eager, tuned: float(torch.nn.functional.cosine_similarity(eager, tuned, dim=-1).min()),
        ))
        for batch in (1, 4, 8):
            ov_wide(torch.randn(batch, 64, generator=generator))
        for name, eager, other in ((OPENVINO_MODEL, ov_token_net, ov_token), (OPENVINO_INT8_MODEL, ov_wide_net, ov_wide)):
            other.tune()
            aitune_triton.export(other, repository, show_progress=False, router=True)
            extra[name] = (eager_copy(eager), other)
        server = TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=180)
        server.start()
        yield Served(
            net=eager_copy(net),
            module=module,
            checkpoint=checkpoint,
            repository=repository,
            server=server,
            entry_model=ENTRY_MODEL,
            graph_models=[f"{ENTRY_MODEL}.graph_0", f"{ENTRY_MODEL}.graph_1"],
            extra=extra,
        )
    finally:
        if server is not None:
            server.stop()
        if previous_cache is None:
            os.environ.pop("AITUNE_TRITON_CACHE_DIR", None)
        else:
            os.environ["AITUNE_TRITON_CACHE_DIR"] = previous_cache
