"""Export, step 2 of 3: write each planned model into a staging directory (:func:`stage_model`):
its version directory (files, the artifact, ``manifest.json`` with the SHA-256 of every file), its
``warmup/`` inputs and its ``config.pbtxt``. Nothing here touches the model repository; step 3
(:mod:`aitune_triton.triton.export_publish`) moves the staged models into it."""

from __future__ import annotations

import shutil
from pathlib import Path

from aitune_triton.errors import ExportError
from aitune_triton.triton.config import write_model_config
from aitune_triton.triton.manifest import build_manifest
from aitune_triton.triton.models.planned import PlannedModel
from aitune_triton.triton.warmup import WARMUP_DIR

__all__ = ["stage_model"]


def stage_model(model: PlannedModel, model_dir: Path, source: str) -> None:
    """Write ``model`` as ``model_dir/<version>/...``, ``model_dir/warmup/`` and ``model_dir/config.pbtxt``.

    Args:
        model: The planned model.
        model_dir: Its directory in the staging directory (must not hold that version yet).
        source: What was exported, for the manifest.

    Raises:
        ExportError: the model's artifact no longer exists (the tuning cache was cleared).
    """
    version_dir = model_dir / str(model.version)
    version_dir.mkdir(parents=True)
    for file_name, text in model.files.items():
        (version_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
        (version_dir / file_name).write_text(text)
    if model.artifact is not None:
        if not model.artifact.is_file():
            raise ExportError(f"{model.name}: artifact {model.artifact} does not exist (was the tuning cache cleared?).")
        shutil.copyfile(model.artifact, version_dir / (model.artifact_name or model.artifact.name))
    for companion_name, companion in model.companions.items():
        if not companion.is_file():
            raise ExportError(f"{model.name}: artifact {companion} does not exist (was the tuning cache cleared?).")
        shutil.copyfile(companion, version_dir / companion_name)
    build_manifest(
        version_dir, model=model.name, version=model.version, kind=model.kind, source=source,
        config=model.config, backend=model.backend, graph=model.graph, extra=model.serving.to_dict(),
    ).write(version_dir)
    if model.warmup_files:
        (model_dir / WARMUP_DIR).mkdir()
        for file_name, data in model.warmup_files.items():
            (model_dir / WARMUP_DIR / file_name).write_bytes(data)
    write_model_config(model.config, model_dir / "config.pbtxt")
