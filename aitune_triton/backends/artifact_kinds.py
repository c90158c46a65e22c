"""Is an artifact file of the kind its backend builds? Judged from its structure alone.

A checkpoint's hashes say a file is the one the manifest lists, not that it is what its backend
wrote: a ``torch.save`` pickle put in place of an AOTInductor package (hashes updated) would
otherwise fail deep inside torch at load, or be exported into a repository that cannot start.
Each backend declares what its artifacts look like (``Backend.artifact_problem``, built on the
helpers here); ``Backend.check_artifacts`` asks it for every artifact of a stored backend. Nothing here runs,
loads or unpickles an artifact: zip archives are read by their directory, ONNX files parsed as
protobuf messages.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Mapping


__all__ = ["RECORDED_CALLS_KIND", "describe_file", "torch_save_problem", "zip_entries", "zip_problem"]

#: What the artifacts tuning adds beside a backend's own hold (the recorded warmup calls).
RECORDED_CALLS_KIND = "recorded call tensors written by torch.save (a zip archive holding data.pkl)"


def zip_entries(path: Path) -> list[str] | None:
    """The entry names of the zip archive at ``path``, or None when it is not one (or unreadable)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None


def describe_file(path: Path) -> str:
    """What ``path`` looks like, for messages: an empty file, a ``torch.save`` pickle, a zip archive
    (its first entries), or the first bytes of anything else."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        return f"an unreadable file ({error})"
    if size == 0:
        return "an empty file"
    entries = zip_entries(path)
    if entries is None:
        return f"a file of {size} bytes that is not a zip archive (it starts with {head!r})"
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in entries):
        return "a torch.save pickle (a zip archive holding data.pkl)"
    listed = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    return f"a zip archive holding {listed or 'nothing'}"


def zip_problem(path: Path, required: Mapping[str, str]) -> str | None:
    """None when ``path`` is a zip archive with, for every ``required`` entry pattern, an entry whose
    name contains it; else what was found instead.

    Args:
        path: The file.
        required: Substring of an entry name -> what it stands for (for the message).
    """
    entries = zip_entries(path)
    missing = [meaning for part, meaning in required.items() if not any(part in f"/{name}" for name in entries or [])]
    if entries is not None and not missing:
        return None
    return describe_file(path) + (f", without {' or '.join(missing)}" if entries is not None else "")


def torch_save_problem(path: Path) -> str | None:
    """None when ``path`` is a ``torch.save`` file (a zip archive holding ``data.pkl``; its tensors are
    read later with ``torch.load(weights_only=True)``), else what was found instead."""
    return zip_problem(path, {"/data.pkl": "a data.pkl entry"})
