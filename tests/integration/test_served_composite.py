"""A checkpoint of a model holding two wrapped submodules, exported and served by a real tritonserver:
each submodule is its own entry model, called through RemoteModule with the results of eager."""

from __future__ import annotations

import pytest
import torch

import aitune_triton
from aitune_triton import Module, OneBackendStrategy, OnnxRuntimeBackend, RemoteModule
from aitune_triton.triton.server import TritonServer
from triton_helpers import require_tritonserver

pytestmark = pytest.mark.triton


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 2)

    def forward(self, hidden, scale=None):
        out = self.lin(hidden)
        return {"logits": out * scale if scale is not None else out}


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(21)
        self.encoder = Encoder()
        self.head = Head()

    def forward(self, x, scale=None):
        return self.head(self.encoder(x), scale)["logits"]


def test_both_submodules_of_a_saved_model_are_served_as_entry_models_giving_the_eager_results(tmp_path, monkeypatch):
    require_tritonserver()
    monkeypatch.setenv("AITUNE_TRITON_CACHE_DIR", str(tmp_path / "cache"))
    net, reference = Net().eval(), Net().eval()
    net.encoder = Module(net.encoder, name="served_composite_encoder", strategy=OneBackendStrategy(OnnxRuntimeBackend()))
    net.head = Module(net.head, name="served_composite_head", strategy=OneBackendStrategy(OnnxRuntimeBackend()))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for batch in (1, 6):
            net(torch.randn(batch, 4, generator=generator))
            net(torch.randn(batch, 4, generator=generator), torch.rand(batch, 2, generator=generator))
    net.encoder.tune()
    net.head.tune()
    checkpoint = aitune_triton.save(net, tmp_path / "checkpoint")

    result = aitune_triton.export(checkpoint, tmp_path / "repository", show_progress=False)

    assert result.entry_models == {"encoder": "served_composite_encoder", "head": "served_composite_head"}
    x = torch.randn(3, 4, generator=generator)
    scale = torch.rand(3, 2, generator=generator)
    with torch.no_grad():
        hidden = reference.encoder(x)
        want_plain, want_scaled = reference.head(hidden), reference.head(hidden, scale)
    with TritonServer(result.repository, log_path=tmp_path / "server.log", show_progress=False, timeout_s=180) as server:
        with RemoteModule(server.grpc_url, result.entry_models["encoder"], protocol="grpc") as encoder, RemoteModule(
            server.http_url, result.entry_models["head"], protocol="http"
        ) as head:
            served_hidden = encoder(x)
            served_plain, served_scaled = head(served_hidden), head(served_hidden, scale)
    torch.testing.assert_close(served_hidden, hidden, atol=1e-5, rtol=1e-5)
    assert list(served_plain) == ["logits"]
    torch.testing.assert_close(served_plain["logits"], want_plain["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(served_scaled["logits"], want_scaled["logits"], atol=1e-5, rtol=1e-5)
