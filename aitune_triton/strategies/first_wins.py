"""FirstWinsStrategy: try backends in order, keep the first that matches eager."""

from __future__ import annotations

from typing import Sequence

from aitune_triton.backends import Backend
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.strategies.base import TuneStrategy, resolve_backend

__all__ = ["FirstWinsStrategy"]


class FirstWinsStrategy(TuneStrategy):
    """Try backends in the given order and keep the first one that builds and matches eager.

    Args:
        backends: Registered names or configured Backend instances, most preferred first.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
        ArgumentTypeError: (a TypeError) an entry is neither a name nor a Backend.
    """

    def __init__(self, backends: Sequence[str | Backend], atol: float = 1e-4, rtol: float = 1e-4):
        super().__init__(atol=atol, rtol=rtol)
        if isinstance(backends, (str, Backend)) or not backends:
            raise InvalidArgumentError(f"backends: expected a non-empty list of backend names or instances, got {backends!r}")
        self._backends = [resolve_backend(b) for b in backends]

    def candidates(self) -> list[Backend]:
        """Fresh copies of the given backends, in the given order."""
        return [b.clone() for b in self._backends]
