"""The checkpoint format: ``manifest.json`` (format, versions, module descriptions, file hashes)
and the artifact files it lists, written and read back checked.

:mod:`aitune_triton.checkpoint` orchestrates saving and loading modules with it; this module
knows the format alone: it copies a description's artifacts into a checkpoint folder, hashes
them, builds the manifest, and reads a checkpoint back (every file's size and SHA-256 checked,
descriptions validated, artifact paths made absolute) without loading any artifact.

Manifest format version 2 stores ``"modules": [{"path": ..., "module": <Module.to_dict()>}, ...]``;
version 1 (still read) stored one ``"module"``, the same as version 2 with one entry at path ``""``.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aitune_triton._versions import library_versions, sha256_file
from aitune_triton._warnings import warn
from aitune_triton.errors import CheckpointError, InvalidStateDictError
from aitune_triton.module.description import TunedDescription

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "MANIFEST_NAME",
    "READABLE_FORMAT_VERSIONS",
    "SUBMODULES_DIR",
    "StoredModule",
    "copy_artifacts",
    "new_manifest",
    "read_checkpoint",
    "read_checkpoint_modules",
]

MANIFEST_NAME = "manifest.json"
CHECKPOINT_FORMAT = "aitune_triton.checkpoint"
CHECKPOINT_FORMAT_VERSION = 2
#: Format versions :func:`read_checkpoint` reads (1: one ``"module"``; 2: ``"modules"`` by attribute path).
READABLE_FORMAT_VERSIONS = (1, 2)
#: Folder of the artifacts of wrapped submodules (``modules/<name>/graph_0/...``).
SUBMODULES_DIR = "modules"


# ------------------------------------------------------------------------------------------ write
def copy_artifacts(
    description: TunedDescription, staging: Path, folder: str
) -> tuple[TunedDescription, dict[str, dict[str, Any]]]:
    """Copy artifacts into ``staging / folder``; the description with their paths made relative
    ones, and the manifest's file entries."""
    files: dict[str, dict[str, Any]] = {}
    relatives: dict[tuple[int, str], str] = {}
    for index, entry in enumerate(description.graphs):
        for role, source in entry.backend.artifacts.items():
            relative = f"{folder}{entry.name}/{Path(source).name}"
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not Path(source).is_file():
                raise CheckpointError(
                    f"{description.name}.{entry.name}: artifact {source} of backend "
                    f"{entry.backend.name!r} no longer exists (was the tuning cache cleared?). Tune again, then save."
                )
            shutil.copyfile(source, target)
            files[relative] = {"sha256": sha256_file(target), "size_bytes": target.stat().st_size}
            relatives[(index, role)] = relative
    return description.with_artifacts(relatives), files


def new_manifest(stored: list[tuple[str, TunedDescription]], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a checkpoint holding ``stored`` (attribute path, description with relative
    artifact paths) and ``files`` (relative path -> ``{"sha256", "size_bytes"}``), in the current format."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "modules": [{"path": attribute_path, "module": description.to_dict()} for attribute_path, description in stored],
        "files": files,
    }


# ------------------------------------------------------------------------------------------- read
@dataclass(frozen=True)
class StoredModule:
    """One module of a checkpoint.

    Attributes:
        path: Attribute path in the saved object (``""`` for a Module saved on its own).
        description: Its tuned description, artifact paths absolute.
    """

    path: str
    description: TunedDescription


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint without loading any artifact.

    Returns:
        The manifest, with every module description's artifact paths made absolute, in the
        current format: ``"modules"`` is a list of ``{"path": attribute path, "module":
        description}`` (a version-1 checkpoint gives one entry at path ``""``). When the checkpoint
        holds one Module saved on its own (one entry at path ``""``), ``"module"`` is that
        description too. :func:`read_checkpoint_modules` gives the descriptions typed.

    Raises:
        CheckpointError: ``path`` is not a checkpoint directory, the manifest is unreadable or of
            another format or version, a module description is invalid (the message says what is
            wrong in it), two entries share an attribute path or a name, an artifact is
            missing, truncated or modified (size or SHA-256 differs from the manifest).

    A file the manifest lists but no stored backend uses is reported with a warning and ignored.
    """
    return read_checkpoint_modules(path)[0]


def read_checkpoint_modules(path: str | os.PathLike) -> tuple[dict[str, Any], list[StoredModule]]:
    """:func:`read_checkpoint`'s manifest, and its modules as typed descriptions (checked once).

    Raises:
        CheckpointError: see :func:`read_checkpoint`.
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
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise CheckpointError(
            f"checkpoint: format version {manifest.get('format_version')!r} is not supported "
            f"(this aitune_triton reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))})."
        )
    manifest = copy.deepcopy(manifest)
    if manifest["format_version"] == 1:
        manifest["modules"] = [{"path": "", "module": manifest.pop("module", None)}]
    modules = _check_entries(manifest.get("modules"), manifest_path)
    _verify_files(path, manifest.get("files", {}))
    for index, stored in enumerate(modules):
        absolute: dict[tuple[int, str], str] = {}
        for graph_index, graph in enumerate(stored.description.graphs):
            for role, relative in graph.backend.artifacts.items():
                if relative not in manifest.get("files", {}):
                    raise CheckpointError(f"checkpoint: artifact {relative!r} is not listed in the manifest's files.")
                absolute[(graph_index, role)] = str(path / relative)
        modules[index] = StoredModule(stored.path, stored.description.with_artifacts(absolute))
    _report_unused_files(manifest.get("files", {}), modules, path)
    manifest["modules"] = [{"path": stored.path, "module": stored.description.to_dict()} for stored in modules]
    if len(manifest["modules"]) == 1 and manifest["modules"][0]["path"] == "":
        manifest["module"] = manifest["modules"][0]["module"]
    return manifest, modules


def _report_unused_files(files: dict[str, Any], modules: list[StoredModule], path: Path) -> None:
    """Warn about files the manifest lists but no stored backend uses. :func:`save` lists exactly
    the artifacts it copies, so such an entry means the manifest was edited; nothing reads those
    files (their hashes were checked all the same), so the checkpoint still loads."""
    used = {Path(file).relative_to(path).as_posix() for stored in modules for graph in stored.description.graphs
            for file in graph.backend.artifacts.values()}
    unused = sorted(set(files) - used)
    if unused:
        warn(
            f"checkpoint: {path / MANIFEST_NAME} lists files that no stored backend uses: {unused} (was it edited?); "
            "they are ignored. Remove those entries, or save the checkpoint again."
        )


def _check_entries(entries: Any, manifest_path: Path) -> list[StoredModule]:
    if not isinstance(entries, list) or not entries:
        raise CheckpointError(f"checkpoint: {manifest_path} holds no module descriptions (was it edited?).")
    modules: list[StoredModule] = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise CheckpointError(f"checkpoint: {manifest_path} holds a module entry without an attribute path (was it edited?).")
        where = f" at '{entry['path']}'" if entry["path"] else ""
        try:
            description = TunedDescription.from_dict(entry.get("module"))
        except InvalidStateDictError as error:
            raise CheckpointError(
                f"checkpoint: {manifest_path} holds an invalid module description{where} (was it edited?): {error}"
            ) from None
        if any(entry["path"] == m.path or description.name == m.description.name for m in modules):
            raise CheckpointError(
                f"checkpoint: {manifest_path} holds two modules at path '{entry['path']}' or named "
                f"'{description.name}' (was it edited?)."
            )
        modules.append(StoredModule(entry["path"], description))
    return modules


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
