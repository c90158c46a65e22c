"""Shared fixtures: small real modules and an isolated tuning cache per test."""

from __future__ import annotations

import itertools

import pytest
import torch

_names = itertools.count()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Tuning artifacts go to the test's own directory."""
    monkeypatch.setenv("AITUNE_TRITON_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def unique_name(request) -> str:
    """A Module name no other live Module in the session holds."""
    return f"{request.node.name.split('[')[0]}_{next(_names)}"


class TwoInputNet(torch.nn.Module):
    """Two tensor inputs (the second optional) and nested outputs: a dict holding a list."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(4, 16)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, scale: float = 1.0):
        hidden = torch.relu(self.a(x) + (self.b(y) if y is not None else 0)) * scale
        return {"hidden": [hidden, hidden.sum(-1)], "logits": hidden[:, :3]}


@pytest.fixture
def two_input_net() -> TwoInputNet:
    torch.manual_seed(0)
    return TwoInputNet().eval()
