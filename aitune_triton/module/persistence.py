"""Persistence of a :class:`~aitune_triton.Module`: its tuned description in and out.

:class:`ModulePersistence` is a mixin of :class:`~aitune_triton.module.wrapper.Module`:
``to_dict`` / ``state_dict`` write the tuned description (also nested in a parent's
``state_dict()``), ``load_tuned`` and a parent's ``load_state_dict`` read it back. Checkpoint
directories (manifest and artifact files) are :mod:`aitune_triton.checkpoint`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch

from aitune_triton.backends import get_backend_class
from aitune_triton.errors import (
    AITuneTritonError,
    InvalidArgumentError,
    InvalidStateDictError,
    ModuleStateError,
    UnknownBackendError,
)
from aitune_triton.module.description import (
    INVALID_STATE_DICT,
    STATE_DICT_FORMAT_VERSION,
    STATE_DICT_KEY,
    STATE_DICT_TYPE,
    TunedDescription,
    state_dict_problem,
)
from aitune_triton.module.routing import original_type
from aitune_triton.module.state import ModuleState
from aitune_triton.module.tuned import TunedModule
from aitune_triton.spec import ForwardSignature

__all__ = ["ModulePersistence", "check_artifact_kinds", "checked_device", "described"]


class ModulePersistence:
    """``to_dict`` / ``state_dict`` / ``load_tuned`` of a :class:`~aitune_triton.Module` (a mixin of it)."""

    if TYPE_CHECKING:  # set by Module.__init__
        __wrapped__: torch.nn.Module
        _self_name: str
        _self_handler: Any
        _self_strict: bool
        _self_fallback: str | None
        _self_forward: Any
        _self_signature: ForwardSignature

        @property
        def state(self) -> ModuleState: ...

    # ----------------------------------------------------------------------------- persistence
    def _description(self) -> dict[str, Any]:
        tuned = self._self_handler
        if not isinstance(tuned, TunedModule):
            raise ModuleStateError(
                f"Module '{self._self_name}' is not tuned (state: {self.state.name}). Cannot create its state dict; "
                "record calls and call tune() first."
            )
        wrapped = self.__wrapped__
        return {
            "type": STATE_DICT_TYPE,
            "format_version": STATE_DICT_FORMAT_VERSION,
            "name": self._self_name,
            "module_class": f"{original_type(wrapped).__module__}.{original_type(wrapped).__qualname__}",
            "signature": self._self_signature.to_dict(),
            "strict": self._self_strict,
            "graphs": tuned.to_dict(),
        }

    def to_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """Describe the tuned module; nests in a parent's ``state_dict()`` like any submodule.

        Called directly (no destination, no prefix) it returns the tuned description:
        ``{"type": "aitune_triton.Module", "format_version", "name", "module_class", "signature",
        "strict", "graphs": [...]}`` with, per graph spec, the spec, the backend description
        (absolute artifact paths) and the tuning report. ``TunedDescription.from_dict`` (in
        :mod:`aitune_triton.module.description`) checks it and reads it as typed fields.

        Called by a parent's ``state_dict()`` (``torch.nn.Module.state_dict(destination, prefix,
        keep_vars)`` convention) it adds the wrapped module's own entries under ``prefix`` as usual
        and, when tuned, the description under ``prefix + "_aitune_triton"``; a parent's
        ``load_state_dict`` reads it back (see :meth:`_load_from_state_dict`).

        Raises:
            ModuleStateError: called directly on a module that is not tuned.
        """
        if args:  # torch's deprecated positional form: (destination, prefix, keep_vars)
            destination, prefix, keep_vars = (tuple(args) + (destination, prefix, keep_vars)[len(args) :])[:3]
        if destination is None and not prefix:
            return self._description()
        destination = self.__wrapped__.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if isinstance(self._self_handler, TunedModule):
            destination[prefix + STATE_DICT_KEY] = self._description()
        return destination

    state_dict = to_dict

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """``torch.nn.Module.load_state_dict`` hook: takes this Module's tuned description out of a
        parent's state dict (and loads it when not tuned yet), then loads the wrapped module's own
        entries as usual."""
        description = state_dict.pop(prefix + STATE_DICT_KEY, None)
        self.__wrapped__._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if description is not None and not isinstance(self._self_handler, TunedModule):
            self.load_tuned(description)

    @staticmethod
    def is_state_dict_valid(state_dict: Any) -> bool:
        """Whether ``state_dict`` has the structure of :meth:`to_dict` output, checked down to each
        graph spec's tensors and backend (artifact files are checked when loading)."""
        return state_dict_problem(state_dict) is None

    def load_tuned(self, state_dict: Mapping[str, Any] | TunedDescription, device: str | torch.device | None = None) -> None:
        """Switch this Module to ``TUNED`` with the backends described by ``state_dict``.

        Raises:
            InvalidStateDictError: (a ValueError) invalid ``state_dict``, or one recorded for another
                forward signature.
            InvalidArgumentError: (a ValueError) ``device`` is invalid or holds no data (``meta``).
            ArtifactKindError: an artifact file is not of the kind its backend builds (see
                :func:`check_artifact_kinds`).
            UnknownBackendError: (a ValueError) a stored backend is not registered here.
            ModuleStateError: the module is already tuned.
        """
        description = described(state_dict)
        if isinstance(self._self_handler, TunedModule):
            raise ModuleStateError("Module is already tuned. Use enable_recording(force=True) to reset it first.")
        signature = description.forward_signature
        if signature != self._self_signature:
            raise InvalidStateDictError(
                f"state_dict: recorded for a module whose forward takes {signature.describe()}, but this module's "
                f"forward takes {self._self_signature.describe()}. Load it into the module it was tuned from."
            )
        check_artifact_kinds(description)
        try:
            tuned = TunedModule.from_dict(
                self._self_name,
                signature,
                description.graphs,
                self.__wrapped__,
                checked_device(device),
                description.strict,
                self._self_fallback,
                self._self_forward,
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, AITuneTritonError):
                raise
            raise InvalidStateDictError(f"{INVALID_STATE_DICT} ({type(error).__name__}: {error})") from error
        self._self_handler = tuned


def described(state_dict: Mapping[str, Any] | TunedDescription) -> TunedDescription:
    """``state_dict`` checked and read (:meth:`TunedDescription.from_dict`); a description already read passes.

    Raises:
        InvalidStateDictError: not the output of :meth:`Module.to_dict`.
    """
    return state_dict if isinstance(state_dict, TunedDescription) else TunedDescription.from_dict(state_dict)


#: Device types that hold no data: a backend loaded there has nothing to run on (an AOTInductor
#: package loaded for ``meta`` aborts the process at its first call).
NO_DATA_DEVICE_TYPES = ("meta",)


def checked_device(device: str | torch.device | None, argument: str = "device") -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), refused where it holds no data.

    Raises:
        InvalidArgumentError: ``device`` is not a device torch knows, or is ``meta`` (the message
            names ``argument``).
    """
    if device is None:
        return None
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidArgumentError(f"{argument}: expected a device such as 'cpu' or 'cuda:0', got {device!r}: {error}") from error
    if chosen.type in NO_DATA_DEVICE_TYPES:
        raise InvalidArgumentError(
            f"{argument}: expected a device that holds data, such as 'cpu' or 'cuda:0', got {str(chosen)!r}: tuned "
            "backends cannot run on it. Pass None (the device each backend was tuned for) or a real device."
        )
    return chosen


def check_artifact_kinds(description: TunedDescription) -> None:
    """Check that every artifact of ``description`` is of the kind its backend builds, without
    loading any (``Backend.check_artifacts``); run at save, load and export.

    A backend not registered here is skipped: loading and exporting report it their own way.

    Raises:
        ArtifactKindError: (a CheckpointError) one is not; the message names the file, the
            backend, what was expected and what was found.
    """
    for entry in description.graphs:
        try:
            backend = get_backend_class(entry.backend.name)
        except UnknownBackendError:
            continue
        backend.check_artifacts(f"Module '{description.name}' {entry.name}", entry.backend.artifacts)
