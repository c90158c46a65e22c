"""Shared fixtures: small real modules and an isolated tuning cache per test."""

from __future__ import annotations

import itertools

import pytest
import torch
from nets import TwoInputNet

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


@pytest.fixture
def two_input_net() -> TwoInputNet:
    torch.manual_seed(0)
    return TwoInputNet().eval()
