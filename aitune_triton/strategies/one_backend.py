"""OneBackendStrategy: build exactly one backend."""

from __future__ import annotations

from typing import Any

from aitune_triton.backends import Backend
from aitune_triton.strategies.base import CandidateReport, TuneStrategy, resolve_backend

__all__ = ["OneBackendStrategy"]


class OneBackendStrategy(TuneStrategy):
    """Use one backend; tuning fails if it does not build or does not match eager. It is checked
    and profiled like every candidate, but no speed gate applies: it is kept even when slower
    than eager.

    Args:
        backend: Registered backend name (``"aoti"``, ``"onnxruntime"``, ``"inductor"``,
            ``"eager"``) or a configured :class:`~aitune_triton.backends.Backend` instance.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy` (``accuracy``,
            ``find_max_batch_size``, ``profiler``...).

    Raises:
        UnknownBackendError: (a ValueError) unknown backend name.
        ArgumentTypeError: (a TypeError) ``backend`` is neither a name nor a Backend.
    """

    gated = False

    def __init__(self, backend: str | Backend, atol: float = 1e-4, rtol: float = 1e-4, **options: Any):
        super().__init__(atol=atol, rtol=rtol, **options)
        self._backend = resolve_backend(backend)

    def candidates(self) -> list[Backend]:
        """A fresh copy of the one backend."""
        return [self._backend.clone()]

    def rule(self) -> str:
        return "the one backend given"

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The one candidate."""
        return passed[0]
