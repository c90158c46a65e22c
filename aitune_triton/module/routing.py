"""Routing a wrapped module's ``forward`` to its wrapper's state, only for calls through the wrapper.

``nn.Module.__call__`` runs the hooks and then ``self.forward``; while a call made through a
:class:`~aitune_triton.Module` runs, the module's ``forward`` is a router that sends the call to the
wrapper's current state (recording, passthrough, tuned). At rest the module carries nothing of
the wrapper.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from typing import Any, Callable

import torch

__all__ = ["CALLING", "Routing", "StateForward", "live_wrapper_of", "own_forward", "register_wrapper"]

# The wrapper whose __call__ is running the wrapped module right now (per thread and task).
CALLING: contextvars.ContextVar[Any] = contextvars.ContextVar("aitune_triton_calling", default=None)


class StateForward:
    """Installed as the wrapped module's ``forward`` while calls through the wrapper run (see
    :class:`Routing`). A call made through the wrapper reaches it after ``nn.Module.__call__`` ran
    the hooks and is routed to the wrapper's current state; a call of the bare module in another
    thread meanwhile runs the module's own forward, as before wrapping. Holds the wrapper weakly."""

    def __init__(self, wrapper: Any, original: Callable[..., Any]):
        self._wrapper = weakref.ref(wrapper)
        self.original = original

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapper = self._wrapper()
        if wrapper is None or CALLING.get() is not wrapper:
            return self.original(*args, **kwargs)
        token = CALLING.set(None)
        try:
            return wrapper._dispatch(args, kwargs)
        finally:
            CALLING.reset(token)


_NOTHING = object()


class Routing:
    """Puts the router in the module's ``__dict__`` as ``forward`` while at least one call through
    the wrapper runs, and puts back what was there afterwards. At rest the module carries nothing
    of the wrapper, so it pickles, deep-copies and runs exactly as before wrapping."""

    def __init__(self, module: torch.nn.Module, router: StateForward):
        self._module = module
        self._router = router
        self._active = 0
        self._saved: Any = _NOTHING
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = self._module.__dict__.get("forward", _NOTHING)
                self._module.__dict__["forward"] = self._router
            self._active += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                if self._saved is _NOTHING:
                    self._module.__dict__.pop("forward", None)
                else:
                    self._module.__dict__["forward"] = self._saved


#: torch module -> its live wrapper (both held weakly).
WRAPPERS: "weakref.WeakKeyDictionary[torch.nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


def live_wrapper_of(module: torch.nn.Module) -> Any:
    """The live, not retired Module wrapping ``module``, if any."""
    reference = WRAPPERS.get(module)
    wrapper = reference() if reference is not None else None
    return wrapper if wrapper is not None and not wrapper._self_retired else None


def own_forward(module: torch.nn.Module) -> Callable[..., Any]:
    """The module's own forward: an instance-level one if the user set one, else the class's."""
    forward = module.__dict__.get("forward")
    if isinstance(forward, StateForward):  # created while a call through another wrapper runs
        forward = forward.original
    return forward or type(module).forward.__get__(module)




def register_wrapper(module: torch.nn.Module, wrapper: Any) -> None:
    """Remember ``wrapper`` (weakly) as the wrapper of ``module``."""
    WRAPPERS[module] = weakref.ref(wrapper)
