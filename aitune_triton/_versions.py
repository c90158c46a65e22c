"""Versions of the libraries an artifact was made with, recorded next to every artifact."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["aitune_version", "build_environment", "library_versions", "sha256_file", "tensorrt_version"]

_PACKAGES = ("aitune-triton", "torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf", "tritonclient", "nvidia-pytriton", "numpy")


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


def tensorrt_version() -> str | None:
    """Installed ``tensorrt`` (or ``tensorrt-cu12``...) version, without importing it; None when absent."""
    for package in ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt_libs"):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None


def build_environment(device: str) -> dict[str, str | None]:
    """What an artifact built on ``device`` (``"cpu"``, ``"cuda:0"``) here is bound to.

    Returns:
        ``device``; ``torch`` (the version building it); and for a CUDA device ``gpu_name`` and
        ``compute_capability`` (``"9.0"``) from ``torch.cuda`` when CUDA is available (the
        device's index, else 0), ``cuda_version`` (``torch.version.cuda``) and
        ``tensorrt_version`` (the installed package); None where unknown.
    """
    import torch

    facts: dict[str, str | None] = {"device": device, "torch": str(torch.__version__), "gpu_name": None,
                                    "compute_capability": None, "cuda_version": None, "tensorrt_version": None}
    if device.startswith("cuda"):
        if torch.cuda.is_available():
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            index = index if index < torch.cuda.device_count() else 0
            major, minor = torch.cuda.get_device_capability(index)
            facts.update(gpu_name=torch.cuda.get_device_name(index), compute_capability=f"{major}.{minor}")
        facts.update(cuda_version=torch.version.cuda, tensorrt_version=tensorrt_version())
    return facts
