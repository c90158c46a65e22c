"""A registry of named extensions (export targets, deployment targets): one object per name, in
registration order; a second registration under a taken name is refused, as Model Navigator's
registries do."""

from __future__ import annotations

from typing import Generic, TypeVar

from aitune_triton.errors import DuplicateRegistrationError, InvalidArgumentError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind.

    Args:
        what: What the registry holds, for messages (``"export target"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Register ``item`` as ``name``; registering the same object again is a no-op.

        Raises:
            InvalidArgumentError: ``name`` is not a non-empty string.
            DuplicateRegistrationError: another object is registered as ``name``.
        """
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"name: expected a non-empty string naming the {self.what}, got {name!r}")
        existing = self._items.get(name)
        if existing is not None and existing is not item:
            owner = existing if isinstance(existing, type) else type(existing)
            raise DuplicateRegistrationError(
                f"{self.what} name {name!r} is already registered by {owner.__module__}.{owner.__qualname__}; "
                "register yours under another name"
            )
        self._items[name] = item
        return item

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def get(self, name: object, argument: str, hint: str = "") -> T:
        """The object registered as ``name``.

        Args:
            name: The name asked for.
            argument: The argument that gave it, for the message.
            hint: What to do, appended to the message.

        Raises:
            InvalidArgumentError: nothing is registered as ``name``; the message lists the names.
        """
        item = self._items.get(name) if isinstance(name, str) else None
        if item is None:
            raise InvalidArgumentError(
                f"{argument}: expected one of {self.names()} (a registered {self.what}), got {name!r}." + (f" {hint}" if hint else "")
            )
        return item
