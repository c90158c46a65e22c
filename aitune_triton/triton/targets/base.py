"""What an export target is (:class:`ExportTargetBase`) and its registry.

An export target decides what serves each graph model of an export: ``python`` (a generated
Python-backend ``model.py``, :mod:`.python`) or ``native`` (one of Triton's own backends where the
graph spec's backend declares one, :mod:`.native`). Adding a target is a new module here defining a
subclass and one :func:`register_export_target` call in :mod:`aitune_triton.triton.targets`;
``export(target=<name>)`` and the command line's ``--target`` then accept its name.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from aitune_triton._registry import Registry

if TYPE_CHECKING:
    from aitune_triton.triton.models.graph import GraphModelRequest
    from aitune_triton.triton.models.planned import PlannedModel

__all__ = ["ExportTargetBase", "export_target", "export_target_names", "register_export_target"]


class ExportTargetBase(ABC):
    """An export target: plans the model serving one graph spec.

    Attributes:
        name: What ``export(target=...)`` and ``--target`` call it.
        help: One line for the command line's help.
        checks_input_contract: Whether its graph models check their own input contract, so that a
            module with one graph spec may be exported as that one model without a router in
            front (``router=None`` or False).
    """

    name: ClassVar[str]
    help: ClassVar[str]
    checks_input_contract: ClassVar[bool]

    @abstractmethod
    def plan_graph_model(self, request: "GraphModelRequest") -> "PlannedModel":
        """The model serving ``request``'s graph spec, planned in memory.

        Raises:
            ExportError: the graph spec cannot be served by this target, and it has no fallback.
        """


_TARGETS: Registry[ExportTargetBase] = Registry("export target")


def register_export_target(target: ExportTargetBase) -> ExportTargetBase:
    """Register ``target`` under ``target.name``.

    Raises:
        DuplicateRegistrationError: another target is registered under that name.
    """
    return _TARGETS.register(target.name, target)


def export_target_names() -> list[str]:
    """Names of the registered export targets, in registration order (``["python", "native"]``)."""
    return _TARGETS.names()


def export_target(name: object, argument: str = "target") -> ExportTargetBase:
    """The export target registered as ``name`` (a name, or an :class:`enum.Enum` member whose value is one).

    Raises:
        InvalidArgumentError: no target is registered as ``name``; the message lists the names.
    """
    if isinstance(name, enum.Enum):
        name = name.value
    return _TARGETS.get(
        name, argument, "Pass 'native' to serve graph models with Triton's own backends where their backend declares one "
        "(or an ExportTarget)."
    )
