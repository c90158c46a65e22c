"""A module's forward signature: its parameters, stored as JSON, and the binding of a call to them.

A call is bound to the module's forward signature, giving a dict ``{parameter name: value}`` of the
arguments that were actually passed (an argument passed with its scalar default counts as not
passed); :mod:`aitune_triton.spec.calls` flattens that dict.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["ForwardSignature", "ParameterSpec", "call_signature"]

_MISSING = object()


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a forward signature.

    Attributes:
        name: Parameter name.
        kind: ``inspect.Parameter`` kind name, e.g. ``"POSITIONAL_OR_KEYWORD"``.
        has_default: Whether the parameter may be omitted.
        default_json: The default value as JSON when it is a JSON scalar (``"1.0"``, ``"null"``,
            ``"true"``...), else None. A call passing exactly this value binds as if it had
            omitted the argument.
    """

    name: str
    kind: str
    has_default: bool
    default_json: str | None = None


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _json_scalar(value: Any) -> str | None:
    """JSON text of a None/bool/int/float/str value, else None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value)
    return None


def call_signature(function: Any) -> inspect.Signature:
    """The parameters a call of ``function`` must fit.

    ``inspect.signature`` follows ``__wrapped__`` (set by ``functools.wraps`` /
    ``functools.update_wrapper``); that gives the parameters of the wrapped function, which is
    right for a generic ``(*args, **kwargs)`` decorator but wrong for a callable with parameters of
    its own (a ``functools.partial`` made to look like ``forward``). So the callable's own
    signature is used unless it is generic; then the wrapped one, without a leading ``self`` when
    the wrapped function is a plain function defined in a class and the callable is not bound. A
    proxy whose own signature cannot be read (``wrapt``'s ``FunctionWrapper`` around a partial)
    binds as the callable it wraps.

    Raises:
        TypeError, ValueError: no signature can be read (as ``inspect.signature``).
    """
    try:
        own = inspect.signature(function, follow_wrapped=False)
    except (TypeError, ValueError):
        wrapped = getattr(function, "__wrapped__", None)
        if wrapped is None or wrapped is function:
            raise
        # A transparent proxy whose own signature cannot be read (a ``wrapt.decorator`` over a
        # ``functools.partial``): the call fits the callable it wraps, read by this same rule.
        return call_signature(wrapped)
    generic = all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in own.parameters.values())
    if not generic or not hasattr(function, "__wrapped__") and not inspect.ismethod(function):
        return own
    wrapped = inspect.signature(function)
    target = inspect.unwrap(function.__func__ if inspect.ismethod(function) else function)
    parameters = list(wrapped.parameters.values())
    if (
        not inspect.ismethod(function)
        and inspect.isfunction(target)
        and "." in target.__qualname__
        and parameters
        and parameters[0].name == "self"
    ):
        return wrapped.replace(parameters=parameters[1:])
    return wrapped


class ForwardSignature:
    """The parameters of a module's ``forward``: enough to bind a call without the module.

    RemoteModule uses it to bind the same arguments the original module takes.
    """

    def __init__(self, parameters: Sequence[ParameterSpec]):
        self.parameters = tuple(parameters)
        variadic = ("VAR_POSITIONAL", "VAR_KEYWORD")
        self._signature = inspect.Signature(
            [
                inspect.Parameter(
                    p.name,
                    getattr(inspect.Parameter, p.kind),
                    default=_MISSING if p.has_default and p.kind not in variadic else inspect.Parameter.empty,
                )
                for p in self.parameters
            ]
        )
        self._var_keyword = next((p.name for p in self.parameters if p.kind == "VAR_KEYWORD"), None)
        self._defaults = {
            p.name: p.default_json for p in self.parameters if p.default_json is not None and p.kind != "POSITIONAL_ONLY"
        }

    @classmethod
    def from_callable(cls, function: Any) -> "ForwardSignature":
        """Read the signature of ``function`` (a bound ``forward``); ``(*args, **kwargs)`` if unknown.

        The signature is the one a call must fit (:func:`call_signature`): a ``functools.partial``
        set as ``forward`` with ``functools.update_wrapper`` binds as the partial, not as the
        function it was made to look like."""
        try:
            signature = call_signature(function)
        except (TypeError, ValueError):
            return cls([ParameterSpec("args", "VAR_POSITIONAL", True), ParameterSpec("kwargs", "VAR_KEYWORD", True)])
        return cls(
            [
                ParameterSpec(
                    p.name,
                    p.kind.name,
                    p.default is not inspect.Parameter.empty,
                    _json_scalar(p.default) if p.default is not inspect.Parameter.empty else None,
                )
                for p in signature.parameters.values()
            ]
        )

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Bind a call to the signature.

        Returns:
            ``{parameter name: value}`` for the arguments actually passed, in signature order;
            an argument passed with exactly its scalar default value (``scale=1.0`` for
            ``scale: float = 1.0``, ``mask=None``) counts as not passed. ``*args`` binds to a tuple
            and ``**kwargs`` to a dict sorted by key (the order keyword arguments are written in
            does not change a call's structure).

        Raises:
            TypeError: the arguments do not fit the signature, as calling the function would.
        """
        arguments = {
            name: value
            for name, value in self._signature.bind(*args, **kwargs).arguments.items()
            if name not in self._defaults or _json_scalar(value) != self._defaults[name]
        }
        if self._var_keyword in arguments:
            arguments[self._var_keyword] = dict(sorted(arguments[self._var_keyword].items()))
        return arguments

    def unbind(self, arguments: dict[str, Any]) -> tuple[tuple, dict]:
        """Turn bound arguments back into ``(args, kwargs)`` for a call."""
        bound = inspect.BoundArguments(self._signature, dict(arguments))
        return bound.args, bound.kwargs

    def to_dict(self) -> list[dict[str, Any]]:
        """JSON-compatible form (a list of parameter dicts)."""
        return [dataclasses.asdict(p) for p in self.parameters]

    @classmethod
    def from_dict(cls, data: list[dict[str, Any]]) -> "ForwardSignature":
        """Rebuild from :meth:`to_dict`."""
        return cls([ParameterSpec(**p) for p in data])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ForwardSignature) and self.parameters == other.parameters

    def describe(self) -> str:
        """The parameter list, e.g. ``(x, y=..., *args, **kwargs)``."""
        return str(self._signature)

    def __repr__(self) -> str:
        return f"ForwardSignature{self._signature}"
