"""What a model repository directory may hold, and what a checkpoint directory looks like.

Triton takes every directory of a model repository for a model and fails to start on one that is
not (``photos/``, ``src/``); the tools here refuse such a directory before writing or checking:

* a model directory: a directory holding ``config.pbtxt`` (what Triton loads), or one of ours
  being written (an aitune_triton ``manifest.json`` in a version directory);
* ``README`` files (``README.md``, as the project's ``model_repository/README.md``) and hidden
  files (``.gitignore``), which Triton ignores.

Anything else (another file, a directory that is not a model, a hidden directory) is named in the
error, with what to do. An empty or missing directory is a repository to be.
"""

from __future__ import annotations

import json
from pathlib import Path

from aitune_triton.errors import ExportError, InvalidArgumentError

__all__ = ["checkpoint_error", "is_checkpoint", "is_model_dir", "non_model_entries", "refuse_non_repository"]

_CHECKPOINT_FORMAT = "aitune_triton.checkpoint"  # aitune_triton.checkpoint.CHECKPOINT_FORMAT, without importing torch
_SHOWN = 8


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds ``config.pbtxt`` or a version directory with an aitune_triton manifest."""
    if (path / "config.pbtxt").is_file():
        return True
    return any(version.is_dir() and version.name.isdigit() and (version / "manifest.json").is_file() for version in path.iterdir())


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint directory written by :func:`aitune_triton.save`."""
    manifest = Path(path) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("format") == _CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def non_model_entries(repository: str | Path) -> list[str]:
    """Names of the entries of ``repository`` a model repository may not hold (``photos/``,
    ``notes.txt``), sorted; empty for a repository, an empty or a missing directory."""
    root = Path(repository)
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            if entry.name.startswith(".") or not is_model_dir(entry):
                found.append(f"{entry.name}/")
        elif not (entry.name.startswith(".") or entry.name.upper().startswith("README")):
            found.append(entry.name)
    return found


def checkpoint_error(path: Path, argument: str, error_type: type[Exception] = InvalidArgumentError) -> Exception:
    """The error for a checkpoint given where a model repository is expected."""
    return error_type(
        f"{argument}: {path} is an aitune_triton checkpoint (aitune_triton.save), not a model repository. Export it "
        f"first: aitune-triton export {path} -o model_repository/ (or aitune_triton.export), then pass that repository."
    )


def refuse_non_repository(repository: Path, argument: str = "repository") -> None:
    """Refuse to export into a directory that holds other things than models.

    Raises:
        ExportError: ``repository`` is a checkpoint, or holds entries a model repository may not
            (named, up to 8, with what to do). Nothing has been written.
    """
    if is_checkpoint(repository):
        raise checkpoint_error(repository, argument, ExportError)
    found = non_model_entries(repository)
    if found:
        shown = ", ".join(found[:_SHOWN]) + (f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
        raise ExportError(
            f"{argument}: {repository} is not a model repository: it holds {shown}, which Triton would take for "
            "broken models (a model repository holds only model directories with a config.pbtxt, README files and "
            "hidden files). Export into an empty or new directory (aitune-triton export CHECKPOINT -o "
            "model_repository/), or move those entries out."
        )
