"""Versions of the libraries an artifact was made with, recorded next to every artifact."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["aitune_version", "library_versions", "sha256_file"]

_PACKAGES = ("aitune-triton", "torch", "onnx", "onnxscript", "onnxruntime", "tritonclient", "nvidia-pytriton", "numpy")


def aitune_version() -> str:
    """Installed version of aitune-triton ("unknown" when running from an uninstalled tree)."""
    try:
        return metadata.version("aitune-triton")
    except metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str | None]:
    """Installed versions of Python and the libraries that shape artifacts (None when absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
