"""Typed backend options: one frozen dataclass per backend, validated once where it is built.

A backend's options travel as a dict (``Backend.options``: the checkpoint, the manifest, a
served model's ``io.json`` and the runtimes in :mod:`aitune_triton.served` read that dict);
:meth:`BackendOptions.to_dict` writes it and :meth:`BackendOptions.from_dict` reads it back, so
the stored form is unchanged while the code reads typed attributes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, NoReturn, TypeVar

from aitune_triton.errors import InvalidArgumentError

__all__ = ["BackendOptions", "refuse_option"]

_Options = TypeVar("_Options", bound="BackendOptions")


def refuse_option(owner: str, option: str, expected: str, given: Any, hint: str = "") -> NoReturn:
    """Raise the error of an option outside its allowed values.

    Raises:
        InvalidArgumentError: ``"<owner>: option '<option>' must be <expected>, got <given>; <hint>"``.
    """
    raise InvalidArgumentError(f"{owner}: option {option!r} must be {expected}, got {given!r}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class BackendOptions:
    """Base of a backend's options. Subclasses declare the fields with their defaults, check them
    in ``__post_init__`` (raising through :func:`refuse_option`) and may leave defaults out of
    :meth:`to_dict` where older stored forms did."""

    #: How messages name the backend (``"aoti"``, ``"OnnxRuntimeBackend"``).
    owner: ClassVar[str] = "backend"

    def to_dict(self) -> dict[str, Any]:
        """The stored form: option name -> JSON value, every field in declaration order."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[_Options], data: Mapping[str, Any]) -> _Options:
        """Read the stored form back (missing options take their defaults).

        Raises:
            InvalidArgumentError: ``data`` is not a mapping, names an option this backend does not
                have, or holds a value outside an option's allowed values.
        """
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"{cls.owner}: options must be a dict of option name -> value, got {data!r}")
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = [name for name in data if name not in known]
        if unknown:
            raise InvalidArgumentError(
                f"{cls.owner}: unknown option {unknown[0]!r} (given {data[unknown[0]]!r}); expected one of {known}; "
                "remove it or correct its name"
            )
        return cls(**data)

    def replace(self: _Options, **changes: Any) -> _Options:
        """A copy with ``changes`` (checked like the constructor's arguments)."""
        return dataclasses.replace(self, **changes)
