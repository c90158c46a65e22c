"""Passthrough: calls go to the original module, nothing is recorded."""

from __future__ import annotations

from typing import Any, Callable

from aitune_triton.module.state import ModuleState

__all__ = ["PassthroughState"]


class PassthroughState:
    """Runs the module's own forward and records nothing."""

    state = ModuleState.PASSTHROUGH

    def __call__(self, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return forward(*args, **kwargs)
