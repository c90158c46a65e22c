"""The names of live Modules: one name, one Module, so caches and exports never collide."""

from __future__ import annotations

import weakref
from typing import Any

from aitune_triton.errors import InvalidNameError

__all__ = ["claim_name", "live_modules", "release_name", "unique_default_name"]

_LIVE: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()


def claim_name(name: str, module: Any, replacing: Any = None) -> None:
    """Register ``module`` under ``name``; ``replacing`` may be the current holder it retires.

    Raises:
        InvalidNameError: another live Module holds ``name``.
    """
    holder = _LIVE.get(name)
    if holder is not None and holder is not module and holder is not replacing:
        raise InvalidNameError(
            f"name: a live Module is already named {name!r}; its tuned artifacts and exports would be overwritten. "
            "Give this one another name (Module(m, name='...')) or delete the other one first (re-running a notebook "
            "cell that builds a new model: `del` the old wrapper, or wrap the same model object again)."
        )
    _LIVE[name] = module


def release_name(name: str, module: Any) -> None:
    """Free ``name`` if ``module`` still holds it (a wrapper retired before anyone used it)."""
    if _LIVE.get(name) is module:
        del _LIVE[name]


def unique_default_name(base: str) -> str:
    """``base`` when no live Module holds it, else the first free ``base_2``, ``base_3``..."""
    name, counter = base, 1
    while name in _LIVE:
        counter += 1
        name = f"{base}_{counter}"
    return name


def live_modules() -> list[Any]:
    """Every live Module, in name order."""
    return [module for _, module in sorted(_LIVE.items())]
