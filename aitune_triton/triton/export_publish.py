"""Export, step 3 of 3: move the staged models into the model repository (:func:`publish`).

Everything is built in a staging directory next to the repository (never inside it: Triton refuses
a repository holding a directory that is not a model) and renamed into place, graph models before
the entry models, each version directory before its ``config.pbtxt`` (replaced atomically), so a
failed export leaves no half-written model directory; a killed export's staging directory, named
with its pid, is removed by the next export or save next to it. Versions are never overwritten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from aitune_triton._atomic import make_staging_dir
from aitune_triton._progress import progress
from aitune_triton.errors import ExportError
from aitune_triton.triton.export_plan import PlannedExport
from aitune_triton.triton.export_stage import stage_model
from aitune_triton.triton.warmup import WARMUP_DIR

__all__ = ["publish", "publish_model"]


def publish_model(staged_model: Path, target_model: Path, version: int) -> None:
    """Move a staged version directory (and its warmup inputs) into the repository, then its config.pbtxt.

    Raises:
        ExportError: that version directory or a warmup file appeared in the repository meanwhile.
    """
    target_model.mkdir(exist_ok=True)
    target_version = target_model / str(version)
    if target_version.exists():
        raise ExportError(f"{target_version} appeared while exporting; versions are never overwritten. Export again.")
    (staged_model / str(version)).rename(target_version)
    staged_warmup = staged_model / WARMUP_DIR
    if staged_warmup.is_dir():  # the warmup inputs the new config.pbtxt names, before it
        (target_model / WARMUP_DIR).mkdir(exist_ok=True)
        for staged_file in sorted(staged_warmup.iterdir()):
            if (target_model / WARMUP_DIR / staged_file.name).exists():
                raise ExportError(f"{target_model / WARMUP_DIR / staged_file.name} exists; warmup files are never overwritten.")
            staged_file.rename(target_model / WARMUP_DIR / staged_file.name)
    os.replace(staged_model / "config.pbtxt", target_model / "config.pbtxt")


def publish(plan: PlannedExport, show_progress: bool = True) -> None:
    """Stage every model of ``plan`` next to the repository, then move them into it in order.

    Raises:
        ExportError: an artifact no longer exists, or a version appeared meanwhile. The staging
            directory is removed either way.
    """
    repository = plan.repository
    repository.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(repository.parent)
    try:
        with progress(f"Exporting '{plan.title}' to {repository}", enabled=show_progress) as log:
            _stage_all(plan, staging, log)
            for model in plan.models:  # graph models first, the entry models last
                publish_model(staging / model.name, repository / model.name, model.version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_all(plan: PlannedExport, staging: Path, log: Callable[[str], None]) -> None:
    for model in plan.models:
        stage_model(model, staging / model.name, plan.source)
        log(f"{model.name}: version {model.version} ({model.summary})")
