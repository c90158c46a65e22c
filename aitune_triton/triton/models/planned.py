"""A Triton model an export is about to write (:class:`PlannedModel`), and what planning every kind
of model needs: the jinja2 templates, the served package's files, the next version number."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton import served
from aitune_triton.backends import backend_names, get_backend_class
from aitune_triton.errors import ExportError, InvalidOptionError, UnknownBackendError
from aitune_triton.module.description import BackendDescription, GraphDescription
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.manifest import ModelKind, ServingFields

__all__ = [
    "PACKAGE_DIR",
    "PlannedModel",
    "companion_files",
    "exportable_backends",
    "next_version",
    "served_files",
    "template_environment",
    "templates_dir",
    "triton_runtime",
]

#: Directory of the copy of :mod:`aitune_triton.served` beside each generated ``model.py`` (the
#: served environment may not have aitune_triton installed).
PACKAGE_DIR = served.PACKAGE_DIR


@dataclass
class PlannedModel:
    """One model version an export writes, built in memory so that invalid input fails before writing.

    Attributes:
        name: Triton model name.
        version: The version directory it gets.
        config: Its ``config.pbtxt`` message.
        files: File name in the version directory -> text (``model.py``, ``io.json``...).
        artifact: The tuned artifact to copy into the version directory, or None.
        summary: One progress line about it.
        kind: What it is.
        backend: A graph model's backend, as the tuned description holds it.
        graph: A graph model's graph spec, as the tuned description holds it.
        artifact_name: The artifact's file name in the version directory; default its own.
        serving: The manifest fields of its kind and export target.
        warmup_files: File name under ``warmup/`` -> raw input bytes.
        io: A graph model's IO mapping, as its ``io.json`` and the entry model's routes hold it.
        companions: File name in the version directory -> artifact file the served artifact needs
            beside it (:func:`companion_files`: OpenVINO's ``model.bin``).
    """

    name: str
    version: int
    config: mc.ModelConfig
    files: dict[str, str]
    artifact: Path | None
    summary: str
    kind: ModelKind = ModelKind.GRAPH
    backend: BackendDescription | None = None
    graph: GraphDescription | None = None
    artifact_name: str | None = None
    serving: ServingFields = field(default_factory=ServingFields)
    warmup_files: dict[str, bytes] = field(default_factory=dict)
    io: ModelIO | None = None
    companions: dict[str, Path] = field(default_factory=dict)


def companion_files(backend: BackendDescription) -> dict[str, Path]:
    """The artifacts ``backend``'s served artifact needs beside it (its class's
    ``companion_artifacts``), by their own file names; empty for an unknown backend."""
    try:
        roles = get_backend_class(backend.name).companion_artifacts
    except UnknownBackendError:
        return {}
    return {backend.artifact(role).name: backend.artifact(role) for role in roles}


def served_files() -> dict[str, str]:
    """The files of :mod:`aitune_triton.served` as they are copied into a version directory:
    ``aitune_triton_served/<path>`` -> source text, every ``.py`` file of the package."""
    root = Path(served.__file__).resolve().parent
    return {f"{PACKAGE_DIR}/{path.relative_to(root).as_posix()}": path.read_text()
            for path in sorted(root.rglob("*.py")) if "__pycache__" not in path.parts}


def exportable_backends() -> list[str]:
    """Registered backends whose artifact a generated Python-backend model can serve, sorted."""
    return [name for name in backend_names() if get_backend_class(name).triton_runtime is not None]


def triton_runtime(backend: str) -> str | None:
    """The served runtime module of ``backend`` (``aitune_triton/served/runtimes/<name>.py``; None: nothing Triton can load)."""
    try:
        return get_backend_class(backend).triton_runtime
    except UnknownBackendError:
        return None


def templates_dir() -> Path:
    """Directory of the jinja2 templates: inside the installed package, else the source tree's ``templates/``.

    Raises:
        ExportError: neither exists (a broken installation).
    """
    packaged = Path(__file__).resolve().parents[2] / "templates"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[3] / "templates"
    if source.is_dir():
        return source
    raise ExportError(f"templates: found neither {packaged} nor {source}; the installation is incomplete.")


def template_environment() -> jinja2.Environment:
    """The jinja2 environment of the ``model.py`` templates (undefined names are errors)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def next_version(model_dir: Path, version: int | None = None) -> int:
    """``version`` when given (refused when that version directory exists), else the next free one.

    Raises:
        InvalidOptionError: ``version`` is given and ``model_dir`` has it already.
    """
    if version is not None:
        if (model_dir / str(version)).exists():
            raise InvalidOptionError(
                f"version: expected a version that {model_dir.name} does not have yet, got {version} ({model_dir / str(version)} "
                "exists); versions are never overwritten. Pass another version, or none for the next one."
            )
        return version
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1
