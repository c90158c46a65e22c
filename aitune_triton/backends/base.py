"""The backend interface and the registry of backend classes.

A backend runs the calls of one graph spec. It is built from the module and recorded calls,
runs flat calls (tensor leaves in flattening order in, tensor output leaves out), and describes
itself as JSON plus artifact files so that a checkpoint and a Triton export can carry it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch

from aitune_triton._versions import build_environment
from aitune_triton.backends.artifact_kinds import RECORDED_CALLS_KIND, torch_save_problem
from aitune_triton.backends.options import BackendOptions
from aitune_triton.backends.serving import NativeTarget
from aitune_triton.contract import IndexRange, InputContract
from aitune_triton.errors import ArtifactKindError, BackendUnavailableError, DuplicateBackendError, ModuleStateError, UnknownBackendError
from aitune_triton.spec import CallStructure, ForwardSignature, GraphSpec

__all__ = [
    "Backend",
    "BuildContext",
    "LoadContext",
    "register_backend",
    "get_backend_class",
    "backend_names",
    "registered_backends",
]


@dataclass
class BuildContext:
    """What a backend needs to build its artifact for one graph spec.

    Attributes:
        module: The original ``torch.nn.Module`` (not the wrapper).
        signature: Its forward signature.
        graph: The graph spec to build for.
        example: The recorded call used for export/compilation (the largest one).
        workdir: Empty directory for the artifact files.
        device: Device the backend will run on.
        log: Receives one-line progress messages.
        forward: The module's own forward, without hooks; default ``module.forward``. Backends
            capture exactly this, so hooks run once, around the tuned call.
        samples: The recorded calls of the graph spec, flattened, on ``device`` (what quantizers
            calibrate on); empty when the caller has none (then only ``example`` is known).
    """

    module: torch.nn.Module
    signature: ForwardSignature
    graph: GraphSpec
    example: CallStructure
    workdir: Path
    device: torch.device
    log: Callable[[str], None] = field(default=lambda message: None)
    forward: Callable[..., Any] | None = None
    samples: list[CallStructure] = field(default_factory=list)

    @property
    def run(self) -> Callable[..., Any]:
        """The forward to capture (:attr:`forward`, else ``module.forward``)."""
        return self.forward or self.module.forward


@dataclass
class LoadContext:
    """What a backend needs to come back from :meth:`Backend.to_dict`.

    Attributes:
        module: The original module (the eager backend runs it).
        graph: The graph spec.
        device: Device to run on.
        artifacts: Artifact role -> absolute path.
        forward: The module's own forward, without hooks; default ``module.forward``.
    """

    module: torch.nn.Module
    graph: GraphSpec
    device: torch.device
    artifacts: dict[str, Path]
    forward: Callable[..., Any] | None = None

    @property
    def run(self) -> Callable[..., Any]:
        """The forward to run (:attr:`forward`, else ``module.forward``)."""
        return self.forward or self.module.forward


class Backend(abc.ABC):
    """One way to run a graph spec.

    Subclasses set :attr:`name` (the registry key) and :attr:`artifact_names` (artifact role ->
    file name written by :meth:`build`), and implement :meth:`_build`, :meth:`_load` and
    :meth:`_infer`. A backend with typed options (a
    :class:`~aitune_triton.backends.options.BackendOptions` subclass, built and checked in its
    constructor) sets :attr:`typed_options`; :attr:`options` is then their stored form.

    Args:
        **options: Backend-specific JSON-compatible options, stored with the backend (backends
            without typed options).
    """

    name: ClassVar[str]
    artifact_names: ClassVar[dict[str, str]] = {}
    #: Artifact role -> what the file holds, for messages (see :meth:`artifact_problem`).
    artifact_kinds: ClassVar[dict[str, str]] = {}
    #: Whether non-tensor arguments are fixed at build time (true for every exported artifact).
    bakes_constants: ClassVar[bool] = True
    #: Whether the backend runs without the module's weights (its artifact holds its own copy).
    ahead_of_time: ClassVar[bool] = True
    #: The Python-backend runtime that serves this backend's artifact in a generated ``model.py``:
    #: the name of a module ``aitune_triton/served/runtimes/<name>.py`` defining ``Runtime``
    #: (``__init__(path, gpu, device_id, options)``, ``run(arrays)``, ``close()``), or None when the
    #: backend has no artifact Triton can load (eager).
    triton_runtime: ClassVar[str | None] = None
    #: The Triton backend that loads this backend's artifact itself (``export(..., target="native")``),
    #: or None when only a generated Python-backend model serves it (see :mod:`aitune_triton.backends.serving`).
    triton_native: ClassVar[NativeTarget | None] = None
    #: Artifact roles a served model needs beside the ``"model"`` artifact (OpenVINO's weights
    #: ``model.bin`` beside ``model.xml``): an export copies them into the version directory under
    #: their own file names.
    companion_artifacts: ClassVar[tuple[str, ...]] = ()
    #: Whether the artifact holds kernels compiled for the GPU architecture it was built on (a
    #: CUDA build then runs only on GPUs of that compute capability); read by ``aitune-triton check``.
    gpu_architecture_bound: ClassVar[bool] = False
    #: Whether the artifact may load only in the torch version that built it; read by ``aitune-triton check``.
    torch_version_bound: ClassVar[bool] = False
    #: Backends whose artifacts run code one compiler generates (``"inductor"`` for ``aoti`` and
    #: ``inductor``), or None (only the backend's own configurations are alike): tuning does not
    #: build a member when another ran far slower than the best candidate (:mod:`aitune_triton.strategies.pruning`).
    compiler_family: ClassVar[str | None] = None

    #: The class of the backend's typed options (None: the backend keeps a free dict).
    options_type: ClassVar[type[BackendOptions] | None] = None
    #: The backend's typed options, or None for a backend that keeps a free dict (:attr:`options`).
    typed_options: BackendOptions | None = None

    def __init__(self, **options: Any):
        self._options = dict(options)
        self.device = torch.device("cpu")
        self.artifacts: dict[str, Path] = {}
        # Per input, per axis: the size export fixed or the symbol of its size (None: no contract).
        self.input_axes: list[list[int | str]] | None = None
        # Per input: the value ranges of the indexing ops it reaches (IndexRange dicts; None: none known).
        self.index_ranges: list[list[dict[str, Any]]] | None = None
        # What the artifact was built with and on (set by build; kept through to_dict/from_dict).
        self.built_on: dict[str, str | None] | None = None
        self._active = False

    @property
    def options(self) -> dict[str, Any]:
        """The options as stored (checkpoint, manifest, a served model's ``io.json``) and printed:
        :attr:`typed_options`' ``to_dict()``, or the dict given to the constructor."""
        return self.typed_options.to_dict() if self.typed_options is not None else self._options

    @property
    def precision(self) -> str:
        """The ``precision`` option (``"fp32"`` when the backend has none)."""
        return str(self.options.get("precision", "fp32"))

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Why this backend cannot run on ``device`` here, or None when it can."""
        return None

    @classmethod
    def artifact_kind(cls, role: str) -> str:
        """What the ``role`` artifact holds (:attr:`artifact_kinds`; other roles are the recorded
        calls tuning adds, written by ``torch.save``)."""
        return cls.artifact_kinds.get(role, RECORDED_CALLS_KIND)

    @classmethod
    def artifact_problem(cls, role: str, path: Path) -> str | None:
        """What is wrong with ``path`` as this backend's ``role`` artifact, or None when it is of the
        kind :meth:`build` writes; judged from its structure, without running, loading or
        unpickling it (helpers in :mod:`aitune_triton.backends.artifact_kinds`).

        A backend with artifacts of its own overrides this for its roles (:attr:`artifact_names`)
        and leaves the others to this one: the recorded warmup calls tuning adds (``torch.save``
        files).

        Returns:
            None, or what was found instead (``"a torch.save pickle (...)"``).
        """
        return torch_save_problem(path)

    @classmethod
    def check_artifacts(cls, owner: str, artifacts: Mapping[str, str | Path]) -> None:
        """Check that every artifact is of the kind this backend builds (:meth:`artifact_problem`).

        Called at save, load and export. A missing file is left to the callers (hash check, load),
        which report it with their own hint.

        Args:
            owner: Where the backend sits, for messages (``"Module 'net' graph_0"``).
            artifacts: Artifact role -> file.

        Raises:
            ArtifactKindError: (a CheckpointError) an artifact is not of that kind; the message
                names the file, the backend, what was expected and what was found.
        """
        for role, file in artifacts.items():
            path = Path(file)
            problem = cls.artifact_problem(role, path) if path.is_file() else None
            if problem is not None:
                raise ArtifactKindError(
                    f"{owner}: artifact {path} ({role!r}) of backend {cls.name!r}: expected {cls.artifact_kind(role)}, "
                    f"found {problem}. It was replaced after tuning: tune and save again, or put back the file the "
                    "backend wrote."
                )

    @classmethod
    def default_candidates(cls) -> list["Backend"]:
        """The configurations of this backend that the default strategy evaluates, in order
        (:func:`~aitune_triton.strategies.default_candidates` collects them from every registered
        backend). None by default: a backend is tried only where a strategy names it."""
        return []

    def clone(self) -> "Backend":
        """A fresh, unbuilt backend with the same options."""
        return type(self)(**self.options)

    def build(self, context: BuildContext) -> None:
        """Build the artifact for ``context.graph`` into ``context.workdir`` and activate.

        Raises:
            BackendUnavailableError: the backend cannot run on ``context.device`` here.
            BackendBuildError: export or compilation failed.
        """
        reason = self.unavailable_reason(context.device)
        if reason:
            raise BackendUnavailableError(f"{self.name}: {reason}")
        self.device = context.device
        self.artifacts = {role: context.workdir / file for role, file in self.artifact_names.items()}
        self.built_on = build_environment(str(context.device))
        self._build(context)
        self.activate()

    @abc.abstractmethod
    def _build(self, context: BuildContext) -> None:
        """Write :attr:`artifacts` (paths already set)."""

    @abc.abstractmethod
    def _load(self) -> None:
        """Load :attr:`artifacts` into a runnable object."""

    def _unload(self) -> None:
        """Release what :meth:`_load` created."""

    def infer(self, call: CallStructure) -> list[torch.Tensor]:
        """Run one call.

        Args:
            call: The flattened call; flat backends use ``call.flat.tensors``.

        Returns:
            Output tensor leaves in the graph spec's output order.

        Raises:
            ModuleStateError: the backend is not active (built and not deactivated).
        """
        if not self._active:
            raise ModuleStateError(f"{self.name} backend is not active; call activate() first.")
        return self._infer(call)

    @abc.abstractmethod
    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        """Run one call on the loaded runtime (see :meth:`infer`)."""

    @property
    def active(self) -> bool:
        """Whether the backend holds its runtime (session, compiled package) and can infer."""
        return self._active

    def activate(self) -> None:
        """Load the artifact (no-op when active)."""
        if not self._active:
            self._load()
            self._active = True

    def deactivate(self) -> None:
        """Release runtime resources; :meth:`activate` brings them back."""
        if self._active:
            self._unload()
            self._active = False

    def input_contract(self, graph: GraphSpec) -> InputContract:
        """What the artifact accepts: ``graph``'s per-axis ranges, plus the tied or fixed axes and the
        index value ranges the export found (none for backends without an exported program)."""
        return InputContract(
            names=[spec.path for spec in graph.inputs],
            ranges=[[graph.axis_range(spec, axis).bounds for axis in range(spec.rank)] for spec in graph.inputs],
            axes=self.input_axes,
            index_ranges=None if self.index_ranges is None else [[IndexRange.from_dict(r) for r in per] for per in self.index_ranges],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description: name, options, device, absolute artifact paths, the
        artifact's input axes (``input_axes``) and index value ranges (``index_ranges``) when it has
        them, and what it was built with and on (``built_on``: torch version, GPU, CUDA, TensorRT)."""
        data: dict[str, Any] = {
            "name": self.name,
            "options": dict(self.options),
            "device": str(self.device),
            "artifacts": {role: str(path) for role, path in self.artifacts.items()},
        }
        if self.input_axes is not None:
            data["input_axes"] = self.input_axes
        if self.index_ranges is not None:
            data["index_ranges"] = self.index_ranges
        if self.built_on is not None:
            data["built_on"] = dict(self.built_on)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], context: LoadContext) -> "Backend":
        """Rebuild a backend described by :meth:`to_dict`, active, with artifacts from ``context``.

        Raises:
            BackendUnavailableError: the backend cannot run on ``context.device`` here.
            InvalidArgumentError: (a ValueError) an option of a backend with typed options is
                unknown or outside its allowed values.
        """
        backend_class = get_backend_class(data["name"])
        options = data.get("options", {})
        if backend_class.options_type is not None:  # a clear error naming an unknown or invalid option
            options = backend_class.options_type.from_dict(options).to_dict()
        backend = backend_class(**options)
        reason = backend.unavailable_reason(context.device)
        if reason:
            raise BackendUnavailableError(f"{backend.name}: {reason}")
        backend.device = context.device
        backend.artifacts = dict(context.artifacts)
        backend.input_axes = data.get("input_axes")
        backend.index_ranges = data.get("index_ranges")
        backend.built_on = data.get("built_on")
        backend._restore(context)
        backend.activate()
        return backend

    def _restore(self, context: LoadContext) -> None:
        """Hook for backends that need more than artifacts to load (the eager one needs the module)."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"


_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a backend class under ``cls.name``.

    Raises:
        DuplicateBackendError: (a ValueError) another class is already registered under that name.
    """
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise DuplicateBackendError(
            f"backend name {cls.name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
            "register yours under another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


def registered_backends() -> list[type[Backend]]:
    """Registered backend classes, in registration order."""
    return list(_REGISTRY.values())


def backend_names() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    """Return the backend class registered as ``name``.

    Raises:
        UnknownBackendError: (a ValueError) no backend has that name; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackendError(f"backend: expected one of {backend_names()}, got {name!r}") from None
