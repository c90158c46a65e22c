"""What a deployment target is (:class:`DeploymentTarget`) and the registry of them by name.

A deployment target turns an exported model repository into the files an engine runs it with (a
Kubernetes Deployment and Service, a KServe InferenceService, a compose file). Each declares its
name, a dataclass of its options (validated when the target is made) and ``generate``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from aitune_triton._registry import Registry
from aitune_triton.deployment.facts import RepositoryFacts, repository_facts, warn_if_unreadable
from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["DeploymentTarget", "deployment_target", "deployment_target_names", "register_deployment_target"]


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a deployment target that takes none."""


class DeploymentTarget(ABC):
    """A generator of deployment files for a model repository.

    Subclasses set :attr:`name` and :attr:`options_type` and implement :meth:`write`; :meth:`generate`
    reads the repository's facts once, warns when the replicas' user may not read it, and calls it.

    Args:
        options: An instance of :attr:`options_type`; None: its defaults.

    Raises:
        ArgumentTypeError: ``options`` is not an instance of :attr:`options_type`.

    Attributes:
        name: What the registry and the command line call it (``"kubernetes"``).
        options_type: The dataclass of its options.
        options: The options it generates with.
    """

    name: ClassVar[str]
    options_type: ClassVar[type[Any]] = NoOptions
    #: Whether the target builds its image from the runtime environment ``deploy`` writes beside
    #: its files (``runtime/``) when no image is given; otherwise such a deployment runs the stock image.
    builds_runtime_image: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        if options is None:
            options = self.options_type()
        if not isinstance(options, self.options_type):
            raise ArgumentTypeError(
                f"options: expected {self.options_type.__name__} for deployment target {self.name!r}, got "
                f"{type(options).__name__}. Pass {self.options_type.__name__}(...) or None for its defaults."
            )
        self.options = options

    def generate(self, repository: str | Path, output_dir: str | Path, facts: RepositoryFacts | None = None) -> list[Path]:
        """Write the deployment files of the model repository ``repository`` into ``output_dir``.

        Args:
            repository: An exported model repository (``aitune_triton.export``).
            output_dir: Directory for the files (created when missing).
            facts: The repository's facts when the caller read them already; None: read here
                (:func:`~aitune_triton.deployment.facts.repository_facts`).

        Returns:
            The files written, sorted.

        Raises:
            InvalidArgumentError: ``repository`` is not a model repository, or ``output_dir`` is a file.
        """
        repository, output_dir = Path(repository).absolute(), Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise InvalidArgumentError(f"output_dir: {output_dir} is a file; pass a directory path.")
        facts = facts if facts is not None else repository_facts(repository)
        warn_if_unreadable(repository)
        output_dir.mkdir(parents=True, exist_ok=True)
        return sorted(self.write(repository, facts, output_dir))

    @abstractmethod
    def write(self, repository: Path, facts: RepositoryFacts, output_dir: Path) -> list[Path]:
        """Write this target's files for ``repository`` (described by ``facts``) into the existing
        directory ``output_dir``; return the files written."""


_TARGETS: Registry[type[DeploymentTarget]] = Registry("deployment target")


def register_deployment_target(target: type[DeploymentTarget]) -> type[DeploymentTarget]:
    """Register the class ``target`` under ``target.name`` (usable as a class decorator).

    Raises:
        InvalidArgumentError: ``target`` is not a DeploymentTarget subclass with a name.
        DuplicateRegistrationError: another class is registered under that name.
    """
    if not (isinstance(target, type) and issubclass(target, DeploymentTarget)):
        raise InvalidArgumentError(f"target: expected a DeploymentTarget subclass, got {target!r}")
    return _TARGETS.register(getattr(target, "name", ""), target)


def deployment_target_names() -> list[str]:
    """Names of the registered deployment targets, in registration order."""
    return _TARGETS.names()


def deployment_target(name: str) -> type[DeploymentTarget]:
    """The deployment target class registered as ``name``.

    Raises:
        InvalidArgumentError: nothing is registered as ``name``; the message lists the names.
    """
    return _TARGETS.get(name, "deployment target", "Register one with register_deployment_target.")
