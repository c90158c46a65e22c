"""Checkpoints: a directory with ``manifest.json`` and the backends' artifacts.

Layout::

    CHECKPOINT/
      manifest.json          format, library versions, the tuned module description, file hashes
      graph_0/model.onnx     artifacts, one folder per graph spec
      graph_1/model.pt2

The manifest is JSON and artifacts are ONNX models and AOTInductor packages: loading unpickles
nothing. But an AOTInductor package holds compiled native code (a shared library) that runs when
it is loaded, as any compiled model does: load only checkpoints you trust. Every artifact's
SHA-256 and size are checked against the manifest before it is loaded; that detects corruption
and truncation, not tampering by someone who can also edit the manifest. A checkpoint is written
into a temporary sibling directory and renamed into place, so a failed save leaves no
half-written checkpoint. Replacing a checkpoint (``overwrite=True``) swaps the new directory in
atomically where the OS allows it, so the path never lacks a complete checkpoint; staging
directories left by a killed save are removed by the next save or export next to them
(``aitune_triton._atomic``).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from aitune_triton._atomic import make_staging_dir, replace_dir
from aitune_triton._versions import library_versions, sha256_file
from aitune_triton.errors import CheckpointError
from aitune_triton.module.wrapper import Module

__all__ = ["MANIFEST_NAME", "load", "read_checkpoint", "save"]

MANIFEST_NAME = "manifest.json"
CHECKPOINT_FORMAT = "aitune_triton.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


def save(module: Module, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a tuned module's graph specs, backend descriptions and artifacts to a directory.

    Args:
        module: A ``TUNED`` :class:`~aitune_triton.Module`.
        path: Checkpoint directory to create.
        overwrite: Replace an existing checkpoint at ``path``: the new one is built completely
            first, then swapped in atomically (on Linux; elsewhere with two renames), and the old
            one removed.

    Returns:
        The checkpoint directory.

    Raises:
        ModuleStateError: ``module`` is not tuned.
        CheckpointError: ``path`` exists and ``overwrite`` is False, or is a file.
    """
    path = Path(path).absolute()
    description = module.to_dict()
    if path.exists() and (not overwrite or not path.is_dir()):
        raise CheckpointError(
            f"path: {path} already exists. Pass overwrite=True to replace it, or choose another directory."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(path.parent)
    try:
        files = _copy_artifacts(description, staging)
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
            "module": description,
            "files": files,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _copy_artifacts(description: dict[str, Any], staging: Path) -> dict[str, dict[str, Any]]:
    """Copy artifacts into ``staging`` and rewrite their paths in ``description`` as relative ones."""
    files: dict[str, dict[str, Any]] = {}
    for entry in description["graphs"]:
        artifacts = entry["backend"]["artifacts"]
        for role, source in list(artifacts.items()):
            relative = f"{entry['graph']['name']}/{Path(source).name}"
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not Path(source).is_file():
                raise CheckpointError(
                    f"{entry['graph']['name']}: artifact {source} of backend {entry['backend']['name']!r} no longer "
                    "exists (was the tuning cache cleared?). Tune again, then save."
                )
            shutil.copyfile(source, target)
            files[relative] = {"sha256": sha256_file(target), "size_bytes": target.stat().st_size}
            artifacts[role] = relative
    return files


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint without loading any artifact.

    Returns:
        The manifest, with the module description's artifact paths made absolute.

    Raises:
        CheckpointError: ``path`` is not a checkpoint directory, the manifest is unreadable or of
            another format, or an artifact is missing, truncated or modified (size or SHA-256
            differs from the manifest).
    """
    path = Path(path).absolute()
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: {path} is not a directory. Pass the directory written by aitune_triton.save().")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: {path} has no {MANIFEST_NAME}; it was not written by aitune_triton.save().") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint: cannot read {manifest_path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint: {manifest_path} is not an aitune_triton checkpoint manifest.")
    if manifest.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint: format version {manifest.get('format_version')!r} is not supported "
            f"(this aitune_triton reads {CHECKPOINT_FORMAT_VERSION})."
        )
    if not Module.is_state_dict_valid(manifest.get("module")):
        raise CheckpointError(f"checkpoint: {manifest_path} holds an invalid module description (was it edited?).")
    _verify_files(path, manifest.get("files", {}))
    manifest = copy.deepcopy(manifest)
    for entry in manifest["module"]["graphs"]:
        artifacts = entry["backend"]["artifacts"]
        for role, relative in artifacts.items():
            if relative not in manifest.get("files", {}):
                raise CheckpointError(f"checkpoint: artifact {relative!r} is not listed in the manifest's files.")
            artifacts[role] = str(path / relative)
    return manifest


def _verify_files(path: Path, files: dict[str, dict[str, Any]]) -> None:
    for relative, expected in files.items():
        target = (path / relative).resolve()
        if path.resolve() not in target.parents:
            raise CheckpointError(f"checkpoint: file entry {relative!r} points outside the checkpoint.")
        if not target.is_file():
            raise CheckpointError(f"checkpoint: artifact {relative} is missing from {path}.")
        if target.stat().st_size != expected.get("size_bytes"):
            raise CheckpointError(
                f"checkpoint: artifact {relative} is {target.stat().st_size} bytes, the manifest says "
                f"{expected.get('size_bytes')}: it was truncated or replaced after saving. Save the checkpoint again."
            )
        if sha256_file(target) != expected.get("sha256"):
            raise CheckpointError(
                f"checkpoint: artifact {relative} does not match its SHA-256 in the manifest: it was modified "
                "after saving. Save the checkpoint again."
            )


def load(
    module: torch.nn.Module, path: str | os.PathLike, device: str | torch.device | None = None, name: str | None = None
) -> Module:
    """Load a checkpoint written by :func:`save`.

    Args:
        module: The original ``torch.nn.Module`` (wrapped under the checkpoint's name), or a
            not-yet-tuned :class:`~aitune_triton.Module`, which is switched to ``TUNED``.
        path: Checkpoint directory.
        device: Device to run on; default the device each backend was tuned for.
        name: For a plain ``module``: the new Module's name; default the checkpoint's, with a
            ``_2`` suffix (and a warning) when another live Module holds it.

    Returns:
        The ``TUNED`` Module.

    Raises:
        CheckpointError: see :func:`read_checkpoint`; also when the description is invalid.
        ModuleStateError: ``module`` is a Module that is already tuned.
    """
    description = read_checkpoint(path)["module"]
    if not Module.is_state_dict_valid(description):
        raise CheckpointError(f"checkpoint: {path} holds an invalid module description (was the manifest edited?).")
    if isinstance(module, Module):
        module.load_tuned(description, device)
        return module
    return Module.from_dict(module, description, device, name=name)
