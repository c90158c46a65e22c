"""``export(..., dry_run=True)``: the planned repository tree and configurations, nothing written.

The plan is built from the same in-memory models the export writes (every ``config.pbtxt``,
``model.py``, ``io.json``), so a dry run fails exactly where the export would, before anything
touches the disk; the artifact sizes come from the tuned artifacts and ``manifest.json`` is built
in memory with the SHA-256 of every planned file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from aitune_triton._versions import sha256_file
from aitune_triton.errors import ExportError
from aitune_triton.triton.config import model_config_text
from aitune_triton.triton.manifest import MANIFEST_FILE, ModelKind, build_manifest
from aitune_triton.triton.models.planned import PlannedModel

__all__ = ["ExportPlan", "PlannedFile", "PlannedModelVersion", "build_plan"]


@dataclass(frozen=True)
class PlannedFile:
    """One file an export would write.

    Attributes:
        path: Path relative to the repository (``minilm.graph_0/1/model.onnx``).
        size_bytes: Its size in bytes.
    """

    path: str
    size_bytes: int


@dataclass(frozen=True)
class PlannedModelVersion:
    """One model version an export would add.

    Attributes:
        name: Triton model name.
        version: The version directory it would get.
        kind: What it is (:class:`~aitune_triton.triton.manifest.ModelKind`, a ``str``:
            ``"graph"``, ``"entry"``, ``"step"`` or ``"ensemble"``).
        exists: Whether the model directory exists already (the export adds a version to it).
        config_text: The ``config.pbtxt`` it would write (replacing the existing one).
        files: Files of the version directory, and ``config.pbtxt``.
    """

    name: str
    version: int
    kind: ModelKind
    exists: bool
    config_text: str
    files: tuple[PlannedFile, ...]


@dataclass(frozen=True)
class ExportPlan:
    """What an export would write (:func:`~aitune_triton.triton.exporter.export` with ``dry_run=True``).

    Attributes:
        repository: The model repository (absolute; not created by a dry run).
        source: What would be exported.
        models: The model versions in publishing order: graph models, entry models, then step
            models and the ensemble.
    """

    repository: Path
    source: str
    models: tuple[PlannedModelVersion, ...]

    @property
    def total_bytes(self) -> int:
        """Bytes the export would write."""
        return sum(f.size_bytes for m in self.models for f in m.files)

    def tree(self) -> str:
        """The planned tree as indented text, one line per directory and file (sizes in bytes)."""
        lines = [f"{self.repository}/"]
        for model in self.models:
            lines.append(f"  {model.name}/  ({model.kind} model, version {model.version}"
                         + (", new version of an existing model)" if model.exists else ", new model)"))
            for planned in model.files:
                relative = planned.path.split("/", 1)[1]
                lines.append(f"    {relative}  {planned.size_bytes} B")
        lines.append(f"{len(self.models)} model version(s), {self.total_bytes} B in all; nothing written (dry run).")
        return "\n".join(lines)


def build_plan(repository: Path, source: str, models: Sequence[PlannedModel]) -> ExportPlan:
    """The :class:`ExportPlan` of planned models, without writing anything.

    Raises:
        ExportError: a graph model's artifact does not exist (the export would fail the same way).
    """
    planned: list[PlannedModelVersion] = []
    for model in models:
        digests: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for file_name, text in model.files.items():
            data = text.encode()
            digests[file_name], sizes[file_name] = hashlib.sha256(data).hexdigest(), len(data)
        if model.artifact is not None:
            if not model.artifact.is_file():
                raise ExportError(f"{model.name}: artifact {model.artifact} does not exist (was the tuning cache cleared?).")
            digests[model.artifact.name] = sha256_file(model.artifact)
            sizes[model.artifact.name] = model.artifact.stat().st_size
        for companion_name, companion in model.companions.items():
            if not companion.is_file():
                raise ExportError(f"{model.name}: artifact {companion} does not exist (was the tuning cache cleared?).")
            digests[companion_name], sizes[companion_name] = sha256_file(companion), companion.stat().st_size
        manifest = build_manifest(None, model=model.name, version=model.version, kind=model.kind, source=source,
                                  config=model.config, backend=model.backend, graph=model.graph, sha256=digests,
                                  extra=model.serving.to_dict())
        sizes[MANIFEST_FILE] = len(manifest.to_json().encode())
        config_text = model_config_text(model.config)
        files = [PlannedFile(f"{model.name}/{model.version}/{name}", size) for name, size in sorted(sizes.items())]
        files.append(PlannedFile(f"{model.name}/config.pbtxt", len(config_text.encode())))
        files += [PlannedFile(f"{model.name}/warmup/{name}", len(data)) for name, data in sorted(model.warmup_files.items())]
        planned.append(PlannedModelVersion(model.name, model.version, model.kind, (repository / model.name).is_dir(),
                                           config_text, tuple(files)))
    return ExportPlan(repository, source, tuple(planned))
