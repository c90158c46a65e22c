"""``manifest.json``: what one exported model version is made of and where it can run.

Every version directory of an exported model holds a ``manifest.json`` (:class:`ModelManifest`):
the model's kind, the tool and library versions, the device its artifact was tuned on, the backend
and precision, the IO mapping its ``config.pbtxt`` declares, the graph spec it serves, and the
SHA-256 of every other file in the directory. The generated ``model.py`` reads ``sha256`` from it
before it loads a file; ``aitune-triton check`` compares all of it with the repository and the
running machine.

Manifests written before :data:`MANIFEST_FORMAT` 1 hold only ``source``, ``versions``,
``sha256``, ``model`` and ``version``; :meth:`ModelManifest.from_dict` reads them with
``format_version`` 0 and ``kind`` None (:func:`model_kind` then tells the kind from the files).
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton._versions import aitune_version, library_versions, sha256_file, tensorrt_version
from aitune_triton.errors import AITuneTritonError
from aitune_triton.module.description import BackendDescription, GraphDescription
from aitune_triton.triton.config import ROUTES_PARAMETER, read_model_config
from aitune_triton.triton.device_info import DeviceInfo, device_info

__all__ = [
    "KINDS",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "DeviceInfo",
    "ManifestError",
    "ModelKind",
    "ModelManifest",
    "ServingFields",
    "TensorManifest",
    "build_manifest",
    "version_files",
    "device_info",
    "latest_version",
    "model_kind",
    "read_manifest",
    "tensors_of",
]

#: File name of the manifest in each version directory.
MANIFEST_FILE = "manifest.json"
#: Format of the manifests written now (0: the fields of older exports only).
MANIFEST_FORMAT = 1


class ModelKind(str, enum.Enum):
    """What an exported model is (``manifest.json``'s ``kind``; a ``str`` so manifests read the same).

    One module per kind plans it: :mod:`aitune_triton.triton.models`.

    Attributes:
        GRAPH: Runs one graph spec's artifact (``<name>.<graph>``).
        ENTRY: The module's entry model: a BLS router in front of the graph models, or the one
            graph model of a module exported without a router.
        STEP: A pre/post-processing function (:mod:`aitune_triton.triton.steps`).
        ENSEMBLE: A Triton ensemble wiring steps around an entry model.
    """

    GRAPH = "graph"
    ENTRY = "entry"
    STEP = "step"
    ENSEMBLE = "ensemble"

    __hash__ = str.__hash__  # a member and its value are the same dict key

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "ModelKind | str") -> "ModelKind":
        """The kind named by ``value``.

        Raises:
            ManifestError: ``value`` names no kind.
        """
        try:
            return cls(value)
        except ValueError:
            raise ManifestError(f"kind: expected one of {list(KINDS)}, got {value!r}") from None


#: The kinds' names, as ``manifest.json`` writes them.
KINDS = tuple(kind.value for kind in ModelKind)


@dataclass
class ServingFields:
    """The fields of ``manifest.json`` an export adds for its model's kind and target (top-level
    fields of the JSON; absent when None).

    Attributes:
        target: Export target serving a graph model (``"python"``, ``"native"``).
        reason: Why a graph model stayed a Python-backend model in a native export.
        layout: A graph model's instance layout: ``{"written": ..., "measured": ...}``.
        router: False for the graph model of a module exported without a router.
        platform: A native graph model's Triton platform (``"onnxruntime_onnx"``).
        default_model_filename: A native graph model's artifact file name.
        step: A step model's declaration (:meth:`~aitune_triton.triton.steps.Step.to_dict`,
            with ``role`` and ``source_file``).
    """

    target: str | None = None
    reason: str | None = None
    layout: dict[str, Any] | None = None
    router: bool | None = None
    platform: str | None = None
    default_model_filename: str | None = None
    step: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as ``manifest.json`` holds them."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServingFields":
        """The fields of a manifest's extra fields (:attr:`ModelManifest.extra`); others are ignored."""
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


class ManifestError(AITuneTritonError, ValueError):
    """A ``manifest.json`` is missing, is not JSON, or lacks a field it needs."""


@dataclass(frozen=True)
class TensorManifest:
    """One tensor as the model's ``config.pbtxt`` declares it.

    Attributes:
        name: Triton tensor name.
        data_type: Triton config data type (``TYPE_FP32``).
        dims: Config dims (``-1`` = dynamic; without the batch axis when ``max_batch_size > 0``).
    """

    name: str
    data_type: str
    dims: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorManifest":
        """Rebuild from :meth:`to_dict`."""
        return cls(str(data["name"]), str(data["data_type"]), tuple(int(d) for d in data["dims"]))


def tensors_of(config: mc.ModelConfig) -> tuple[list[TensorManifest], list[TensorManifest]]:
    """``(inputs, outputs)`` of a model configuration as :class:`TensorManifest` lists."""

    def tensors(messages: Any) -> list[TensorManifest]:
        return [TensorManifest(m.name, mc.DataType.Name(m.data_type), tuple(m.dims)) for m in messages]

    return tensors(config.input), tensors(config.output)


@dataclass
class ModelManifest:
    """The manifest of one model version (``<model>/<version>/manifest.json``).

    Attributes:
        model: Triton model name.
        version: Version directory number.
        kind: A :class:`ModelKind`; None in manifests of format 0 (see :func:`model_kind`).
        source: What was exported (``"module 'minilm'"``, ``"checkpoint /abs/path"``).
        tool_version: aitune-triton version that wrote it.
        versions: Python and library versions at export (``torch``, ``onnxruntime``...; None: absent).
        device: Where the artifact was tuned (:class:`DeviceInfo`).
        backend: Backend name of a graph model's artifact (``"aoti"``); None for other kinds.
        precision: The backend's precision option (``"fp32"`` when it has none); None without a backend.
        inputs: Input tensors as ``config.pbtxt`` declares them.
        outputs: Output tensors as ``config.pbtxt`` declares them.
        max_batch_size: The configuration's ``max_batch_size``.
        graph: The graph spec served (``GraphSpec.to_dict()``); None for other kinds.
        sha256: File name -> hex SHA-256 of every file of the version directory but this one.
            Generated ``model.py`` files read this field.
        format_version: :data:`MANIFEST_FORMAT` of the writer (0: an older export).
        extra: Any other top-level fields (a kind's own data, say), kept as they are.
    """

    model: str
    version: int
    kind: ModelKind | None
    source: str
    sha256: dict[str, str]
    tool_version: str = "unknown"
    versions: dict[str, str | None] = field(default_factory=dict)
    device: DeviceInfo = field(default_factory=DeviceInfo)
    backend: str | None = None
    precision: str | None = None
    inputs: list[TensorManifest] = field(default_factory=list)
    outputs: list[TensorManifest] = field(default_factory=list)
    max_batch_size: int = 0
    graph: dict[str, Any] | None = None
    format_version: int = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (what ``manifest.json`` holds)."""
        return {
            **self.extra,
            "format_version": self.format_version,
            "model": self.model,
            "version": self.version,
            "kind": self.kind.value if self.kind is not None else None,
            "source": self.source,
            "tool_version": self.tool_version,
            "versions": dict(self.versions),
            "device": self.device.to_dict(),
            "backend": self.backend,
            "precision": self.precision,
            "max_batch_size": self.max_batch_size,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "graph": self.graph,
            "sha256": dict(self.sha256),
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON with a trailing newline."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelManifest":
        """Rebuild from :meth:`to_dict`, or from a format-0 manifest (``kind`` None).

        Raises:
            ManifestError: a required field (``model``, ``version``, ``sha256``) is missing or of
                the wrong type, or ``kind`` is not one of :data:`KINDS`.
        """
        try:
            sha256 = data["sha256"]
            if not isinstance(sha256, dict):
                raise TypeError(f"'sha256' is {type(sha256).__name__}, expected a dict")
            kind = data.get("kind")
            if kind is not None and kind not in KINDS:
                raise ValueError(f"'kind' is {kind!r}, expected one of {list(KINDS)}")
            kind = ModelKind(kind) if kind is not None else None
            return cls(
                model=str(data["model"]),
                version=int(data["version"]),
                kind=kind,
                source=str(data.get("source", "")),
                sha256={str(k): str(v) for k, v in sha256.items()},
                tool_version=str(data.get("tool_version", "unknown")),
                versions=dict(data.get("versions") or {}),
                device=DeviceInfo.from_dict(data.get("device")),
                backend=data.get("backend"),
                precision=data.get("precision"),
                inputs=[TensorManifest.from_dict(t) for t in data.get("inputs") or []],
                outputs=[TensorManifest.from_dict(t) for t in data.get("outputs") or []],
                max_batch_size=int(data.get("max_batch_size", 0)),
                graph=data.get("graph"),
                format_version=int(data.get("format_version", 0)),
                extra={key: value for key, value in data.items() if key not in _FIELDS},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"manifest: {type(error).__name__}: {error}; export the model again.") from None

    @property
    def serving(self) -> ServingFields:
        """What the export added for this model's kind and target (:class:`ServingFields`)."""
        return ServingFields.from_dict(self.extra)

    def write(self, version_dir: Path) -> Path:
        """Write as ``version_dir/manifest.json``."""
        path = version_dir / MANIFEST_FILE
        path.write_text(self.to_json())
        return path


_FIELDS = frozenset(ModelManifest.__dataclass_fields__) - {"extra"}


def version_files(version_dir: Path) -> list[str]:
    """Every file of a version directory but ``manifest.json``, as ``/``-separated paths relative
    to it (the served package copy is a subdirectory), sorted; ``__pycache__`` is left out."""
    return sorted(
        path.relative_to(version_dir).as_posix()
        for path in version_dir.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE and "__pycache__" not in path.relative_to(version_dir).parts
    )


def build_manifest(
    version_dir: Path | None,
    *,
    model: str,
    version: int,
    kind: ModelKind | str,
    source: str,
    config: mc.ModelConfig | None = None,
    backend: BackendDescription | None = None,
    graph: GraphDescription | None = None,
    sha256: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelManifest:
    """The manifest of a model version about to be published.

    Args:
        version_dir: The written version directory: ``sha256`` is computed over its files (all
            but ``manifest.json``). None with ``sha256`` given (a dry run hashes in memory).
        model: Triton model name.
        version: Version number.
        kind: A :class:`ModelKind` (or its value).
        source: What was exported.
        config: The model's configuration; gives the IO mapping and ``max_batch_size``.
        backend: A graph model's backend, as the tuned description holds it: name, precision
            (default ``"fp32"``) and device.
        graph: A graph model's graph spec, as the tuned description holds it.
        sha256: File name -> digest, instead of hashing ``version_dir``.
        extra: More top-level fields for the manifest (kept by :meth:`ModelManifest.from_dict`).

    Raises:
        ManifestError: ``kind`` is not one of :data:`KINDS`, or neither ``version_dir`` nor
            ``sha256`` is given.
    """
    kind = ModelKind.parse(kind)
    if sha256 is None:
        if version_dir is None:
            raise ManifestError("build_manifest: pass version_dir or sha256")
        sha256 = {name: sha256_file(version_dir / name) for name in version_files(version_dir)}
    inputs, outputs = tensors_of(config) if config is not None else ([], [])
    return ModelManifest(
        model=model,
        version=version,
        kind=kind,
        source=source,
        sha256=dict(sha256),
        tool_version=aitune_version(),
        versions=library_versions(),
        device=device_info(backend.device or "cpu", backend.built_on) if backend else DeviceInfo(),
        backend=backend.name if backend else None,
        precision=(backend.precision or "fp32") if backend else None,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=config.max_batch_size if config is not None else 0,
        graph=graph.to_dict() if graph is not None else None,
        extra=dict(extra or {}),
    )


def read_manifest(version_dir: Path) -> ModelManifest:
    """Read ``version_dir/manifest.json``.

    Raises:
        ManifestError: the file is missing, is not JSON, or lacks a required field.
    """
    path = version_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; export the model again.") from None
    except (OSError, ValueError) as error:
        raise ManifestError(f"{path}: cannot be read as JSON ({error}); export the model again.") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: holds a {type(data).__name__}, expected a JSON object; export the model again.")
    try:
        return ModelManifest.from_dict(data)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from None


def latest_version(model_dir: Path) -> int | None:
    """Highest numbered version directory of ``model_dir``, or None."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=None)


def model_kind(model_dir: Path) -> ModelKind | None:
    """The kind of an existing model directory, from its latest version; None when it is not ours.

    The latest version's manifest ``kind`` decides; for a manifest without one (an older export)
    a version holding ``io.json`` is a graph model and a configuration with the
    ``aitune_triton.routes`` parameter an entry model. A directory without a manifest (a model
    written by hand or by another tool), or holding no version, gives None.
    """
    version = latest_version(model_dir)
    if version is None:
        return None
    version_dir = model_dir / str(version)
    try:
        manifest = read_manifest(version_dir)
    except ManifestError:
        return None
    if manifest.kind is not None:
        return manifest.kind
    if (version_dir / "io.json").is_file():
        return ModelKind.GRAPH
    try:
        config = read_model_config(model_dir / "config.pbtxt")
    except (OSError, text_format.ParseError):
        return None
    return ModelKind.ENTRY if ROUTES_PARAMETER in config.parameters else None


def refuse_kind_collision(repository: Path, name: str, kind: ModelKind) -> None:
    """Refuse to write a model of ``kind`` named ``name`` over an existing model of another kind.

    A new version of a model of the same kind (a second export of a module) is allowed. The
    existing kind is read with :func:`model_kind`.

    Raises:
        ExportError: ``repository/name`` exists and holds a model of another kind, or a model
            (or directory) that has no aitune_triton manifest.
    """
    from aitune_triton.errors import ExportError

    model_dir = repository / name
    if not model_dir.exists():
        return
    existing = model_kind(model_dir)
    if existing == kind:
        return
    def a(kind: ModelKind) -> str:
        return f"{'an' if kind.value[0] in 'aeiou' else 'a'} {kind.value} model"

    what = a(existing) if existing else "a model without an aitune_triton manifest (written by hand or another tool)"
    if not model_dir.is_dir():
        what = "a file"
    raise ExportError(
        f"{name}: {model_dir} already holds {what}; this export would write {a(kind)} there. "
        f"Export under another name (--name / Module name), or remove {model_dir} first."
    )
