"""OneBackendStrategy: build exactly one backend."""

from __future__ import annotations

from aitune_triton.backends import Backend
from aitune_triton.strategies.base import TuneStrategy, resolve_backend

__all__ = ["OneBackendStrategy"]


class OneBackendStrategy(TuneStrategy):
    """Use one backend; tuning fails if it does not build or does not match eager.

    Args:
        backend: Registered backend name (``"aoti"``, ``"onnxruntime"``, ``"eager"``) or a
            configured :class:`~aitune_triton.backends.Backend` instance.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.

    Raises:
        UnknownBackendError: (a ValueError) unknown backend name.
        ArgumentTypeError: (a TypeError) ``backend`` is neither a name nor a Backend.
    """

    def __init__(self, backend: str | Backend, atol: float = 1e-4, rtol: float = 1e-4):
        super().__init__(atol=atol, rtol=rtol)
        self._backend = resolve_backend(backend)

    def candidates(self) -> list[Backend]:
        """A fresh copy of the one backend."""
        return [self._backend.clone()]
