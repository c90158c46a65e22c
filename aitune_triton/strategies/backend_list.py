"""BackendListStrategy: the base of the strategies over a list of candidate backends."""

from __future__ import annotations

from typing import Any, Sequence

from aitune_triton.backends import Backend
from aitune_triton.strategies.base import TuneStrategy
from aitune_triton.strategies.candidates import resolve_backends

__all__ = ["BackendListStrategy"]


class BackendListStrategy(TuneStrategy):
    """A strategy over a list of candidate backends, evaluated in the given order.

    Args:
        backends: Registered names or configured Backend instances.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy`.

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty or a single backend.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
        ArgumentTypeError: (a TypeError) an entry is neither a name nor a Backend.
    """

    def __init__(self, backends: Sequence[str | Backend], atol: float = 1e-4, rtol: float = 1e-4, **options: Any):
        super().__init__(atol=atol, rtol=rtol, **options)
        self._backends = resolve_backends(backends)

    def candidates(self) -> list[Backend]:
        """Fresh copies of the given backends, in the given order."""
        return [b.clone() for b in self._backends]

