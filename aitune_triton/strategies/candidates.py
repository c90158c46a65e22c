"""Which backends a strategy evaluates: names or configured instances resolved to fresh backends,
and the default strategy's candidates, collected from the backend registry."""

from __future__ import annotations

from typing import Sequence

from aitune_triton.backends import Backend, get_backend_class, registered_backends
from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["default_candidates", "resolve_backend", "resolve_backends"]


def default_candidates() -> list[Backend]:
    """The default strategy's candidate backends: what each registered backend declares
    (:meth:`Backend.default_candidates <aitune_triton.backends.Backend.default_candidates>`), in
    registration order. With the built-in backends: ONNX Runtime with the TorchScript exporter and
    with the dynamo exporter (session options and transformer fusion measured at build),
    AOTInductor with freezing, and OpenVINO (fp32, threads measured at build); Inductor and
    AOTInductor without freezing are opt-in (slower where measured, and a compile each). Which wins depends on the
    model and the machine, hence measuring each (each backend's ``default_candidates`` gives the numbers measured here)."""
    return [candidate for cls in registered_backends() for candidate in cls.default_candidates()]


def resolve_backend(backend: str | Backend) -> Backend:
    """A fresh backend from a registered name (``"aoti"``) or a configured instance.

    Raises:
        UnknownBackendError: (a ValueError) the name is not registered; the message lists registered names.
        ArgumentTypeError: (a TypeError) ``backend`` is neither a string nor a :class:`Backend`.
    """
    if isinstance(backend, Backend):
        return backend.clone()
    if isinstance(backend, str):
        return get_backend_class(backend)()
    if isinstance(backend, type) and issubclass(backend, Backend):
        raise ArgumentTypeError(
            f"backend: got the class {backend.__name__}; pass an instance ({backend.__name__}(...)) or its registered name"
        )
    raise ArgumentTypeError(
        f"backend: expected a registered backend name or a Backend instance, got {type(backend).__name__}"
    )


def resolve_backends(backends: Sequence[str | Backend]) -> list[Backend]:
    """Fresh backends for a strategy's candidate list (see :func:`resolve_backend`).

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is a single name or backend, or empty.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
        ArgumentTypeError: (a TypeError) an entry is neither a name nor a Backend.
    """
    if isinstance(backends, (str, Backend)) or not backends:
        raise InvalidArgumentError(
            f"backends: expected a non-empty list of backend names or instances, got {backends!r}; "
            "wrap a single backend in a list, or use OneBackendStrategy"
        )
    return [resolve_backend(b) for b in backends]
