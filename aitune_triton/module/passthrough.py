"""Passthrough: calls go to the original module, nothing is recorded."""

from __future__ import annotations

from typing import Any

import torch

from aitune_triton.module.state import ModuleState

__all__ = ["PassthroughState"]


class PassthroughState:
    """Calls the original module (hooks included) and records nothing."""

    state = ModuleState.PASSTHROUGH

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        return module(*args, **kwargs)
