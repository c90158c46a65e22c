"""Routing a wrapped module's ``forward`` to its wrapper's current state, on every path.

AITune patches ``module.forward``, so a method of the model that calls ``self(...)`` or
``self.forward(...)`` (``generate()``, a prefill/decode loop, a helper) goes through the tuned
module too. Here, while a :class:`~aitune_triton.Module` wraps a torch module, the module's class
is swapped for a routed subclass (same name, module and qualified name; ``isinstance`` holds) whose
``forward`` is a data descriptor: reading ``module.forward`` gives a router that sends the call to
the live wrapper's state (recording, passthrough, tuned), and setting it stores the new forward as
an instance attribute would. Nothing is added to the module's ``__dict__``; the routed subclass
pickles and copies as the original class, so copies and pickles of the bare module are plain eager
modules of the original class, and a module no live wrapper holds runs its own forward.
"""

from __future__ import annotations

import contextvars
import copyreg
import functools
import inspect
import weakref
from typing import Any, Callable

import torch

from aitune_triton.errors import ArgumentTypeError, ModuleStateError

__all__ = [
    "DISPATCHING",
    "StateForward",
    "live_wrapper_of",
    "original_type",
    "own_forward",
    "register_wrapper",
    "route",
    "unroute",
]

# The wrapper whose state is running a call right now (per thread and task): a ``self(...)`` or
# ``self.forward(...)`` made inside that call is part of it and runs the module's own forward.
DISPATCHING: contextvars.ContextVar[Any] = contextvars.ContextVar("aitune_triton_dispatching", default=None)

#: torch module -> its live wrapper (both held weakly).
WRAPPERS: "weakref.WeakKeyDictionary[torch.nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()

#: original class -> its routed subclass, while a module of that subclass exists (the routed class
#: holds the original as its base, so a weak-key cache would keep both alive forever).
_ROUTED: "weakref.WeakValueDictionary[type, type]" = weakref.WeakValueDictionary()
_ORIGINAL_ATTRIBUTE = "_aitune_triton_original_type"


def live_wrapper_of(module: torch.nn.Module) -> Any:
    """The live, not retired Module wrapping ``module``, if any."""
    reference = WRAPPERS.get(module)
    wrapper = reference() if reference is not None else None
    return wrapper if wrapper is not None and not wrapper._self_retired else None


def register_wrapper(module: torch.nn.Module, wrapper: Any) -> None:
    """Remember ``wrapper`` (weakly) as the wrapper of ``module``."""
    WRAPPERS[module] = weakref.ref(wrapper)


def original_type(module: torch.nn.Module) -> "type[torch.nn.Module]":
    """The module's class as written, also while a wrapper routes it."""
    return original_type_of_class(type(module))


def own_forward(module: torch.nn.Module) -> Callable[..., Any]:
    """The module's own forward: an instance-level one if the user set one, else its class's."""
    forward = module.__dict__.get("forward")
    return forward if forward is not None else original_type(module).forward.__get__(module)


_DELEGATED = frozenset({"__code__", "__func__", "__globals__", "__defaults__", "__kwdefaults__", "__closure__", "__annotations__"})


def _tracing() -> bool:
    """Whether the call is being traced or compiled (torch.compile, torch.export, torch.jit.trace,
    torch.fx.symbolic_trace): the trace must see the module's own forward, not the wrapper's
    state, which would record or run a backend on symbolic values."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch._C._is_tracing():
        return True
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


class StateForward:
    """What ``module.forward`` reads as while a live wrapper holds the module: calling it routes
    the call (hooks already run by ``nn.Module.__call__``, or none when ``forward`` is called
    directly) to the wrapper's current state. It carries the own forward's signature, name and
    docstring (``inspect.signature(module.forward)`` is the model's, as ``generate()`` expects).
    Holds the wrapper weakly."""

    def __init__(self, wrapper: Any, module: torch.nn.Module):
        self._wrapper = weakref.ref(wrapper)
        self.__self__ = module
        forward = wrapper._self_forward  # read once: replacing forward on a wrapped module raises
        functools.update_wrapper(self, forward, updated=())  # name, docstring, __wrapped__
        try:
            self.__signature__ = inspect.signature(forward)
        except (TypeError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        # Tools that read the forward function (torch.export: ``__code__``; torch.jit.script:
        # ``__func__``, ``__globals__``) see the module's own forward.
        if name.startswith("__") and name.endswith("__") and name not in _DELEGATED:
            raise AttributeError(name)
        return getattr(self.__dict__["__wrapped__"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapper = self._wrapper()
        if wrapper is None or wrapper._self_retired or _tracing():
            return own_forward(self.__self__)(*args, **kwargs)
        if DISPATCHING.get() is wrapper:  # a self(...) inside the wrapped call: part of that call
            return wrapper._self_forward(*args, **kwargs)
        token = DISPATCHING.set(wrapper)
        try:
            return wrapper._dispatch(args, kwargs)
        finally:
            DISPATCHING.reset(token)

    def __repr__(self) -> str:
        return f"<forward of {type(self.__self__).__name__}, routed by aitune_triton>"


class _RoutedForward:
    """The routed subclass's ``forward``: a data descriptor, so it wins over an instance attribute.

    Reading gives the live wrapper's :class:`StateForward`, or the own forward when no live wrapper
    holds the module (a copy, a module whose wrapper is gone). Setting or deleting it is what plain
    ``module.forward = f`` does, except while a live wrapper holds the module: the wrapper read the
    forward when it wrapped the module, so replacing it then raises ``ModuleStateError``.
    """

    def __get__(self, module: Any, owner: type | None = None) -> Any:
        if module is None:
            return original_type_of_class(owner).forward if owner is not None else self
        wrapper = live_wrapper_of(module)
        if wrapper is not None:
            return wrapper._self_router
        return own_forward(module)

    def __set__(self, module: Any, value: Any) -> None:
        _refuse_while_wrapped(module)
        module.__dict__["forward"] = value

    def __delete__(self, module: Any) -> None:
        _refuse_while_wrapped(module)
        if "forward" not in module.__dict__:
            raise AttributeError("forward")
        del module.__dict__["forward"]


def _refuse_while_wrapped(module: Any) -> None:
    wrapper = live_wrapper_of(module)
    if wrapper is not None:
        raise ModuleStateError(
            f"forward: this {type(module).__name__} is wrapped by the live Module '{wrapper.name}', which read its "
            "forward when it wrapped it. Replace forward before wrapping (model.forward = f, then Module(model)); "
            "a new forward now would bypass what was recorded and tuned."
        )


def original_type_of_class(cls: type) -> "type[torch.nn.Module]":
    """The original class of a routed subclass (``cls`` itself otherwise)."""
    return cls.__dict__.get(_ORIGINAL_ATTRIBUTE, cls)


def _reduce_as_original(self: torch.nn.Module, protocol: Any) -> Any:
    """Pickle and copy a routed module as an instance of its original class.

    The reduction names the class as its callable (a class's own ``__reduce__`` returning
    ``(type(self), args)``) or first among its arguments (``object.__reduce_ex__``); both become
    the original class. Pickle refuses a ``copyreg.__newobj__`` whose class is not the object's,
    so that one becomes the standard library's ``copyreg._reconstructor``
    (``object.__new__(original)``, then the state): the pickle loads without aitune_triton."""
    routed = type(self)
    original = original_type_of_class(routed)
    reduced = super(routed, self).__reduce_ex__(protocol)
    if not isinstance(reduced, tuple) or len(reduced) < 2 or not isinstance(reduced[1], tuple):
        return reduced
    function, arguments, *rest = reduced
    if function is routed:
        function = original
    if arguments and arguments[0] is routed:
        if function is getattr(copyreg, "__newobj__") and len(arguments) == 1:
            return (getattr(copyreg, "_reconstructor"), (original, object, None), *rest)
        arguments = (original, *arguments[1:])
    return (function, arguments, *rest)


def _recompile_as_original(self: torch.nn.Module) -> Any:
    """``torch.fx.GraphModule.recompile`` writes ``forward`` and ``__call__`` on ``type(self)``;
    it runs with the original class in place, so it writes them there and not over the routing."""
    routed = type(self)
    self.__class__ = original_type_of_class(routed)
    try:
        return self.recompile()  # type: ignore[operator]
    finally:
        self.__class__ = routed


def _routed_type(original: type) -> type:
    routed = _ROUTED.get(original)
    if routed is None:
        namespace: dict[str, Any] = {
            "__slots__": (),  # the same instance layout, so ``module.__class__`` can be assigned
            "forward": _RoutedForward(),
            "__reduce_ex__": _reduce_as_original,
            "__module__": original.__module__,
            "__qualname__": original.__qualname__,
            "__doc__": original.__doc__,
            _ORIGINAL_ATTRIBUTE: original,
        }
        if issubclass(original, torch.fx.GraphModule):
            namespace["recompile"] = _recompile_as_original
        try:
            routed = type(original)(original.__name__, (original,), namespace)
        except Exception as error:  # a class whose __init_subclass__ or metaclass refuses a plain subclass
            raise ArgumentTypeError(
                f"module: {original.__qualname__} cannot be wrapped: Module routes its forward through a subclass "
                f"(as AITune patches forward), and creating one failed ({type(error).__name__}: {error}). Wrap a module "
                "whose class can be subclassed without arguments, e.g. an nn.Module that holds this one."
            ) from error
        _ROUTED[original] = routed
    return routed


def route(module: torch.nn.Module) -> None:
    """Swap ``module``'s class for its routed subclass (idempotent)."""
    if _ORIGINAL_ATTRIBUTE not in type(module).__dict__:
        module.__class__ = _routed_type(type(module))


def unroute(module_ref: "weakref.ref[torch.nn.Module]") -> None:
    """Give ``module`` its original class back when no live wrapper holds it any more."""
    module = module_ref()
    if module is not None and live_wrapper_of(module) is None and _ORIGINAL_ATTRIBUTE in type(module).__dict__:
        module.__class__ = original_type(module)

