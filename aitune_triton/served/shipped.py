"""The SHA-256 check of the files shipped beside a generated ``model.py``, and the loader of the
served package's copy.

``model.py`` verifies this file alone (its own few lines), imports it, and calls
:func:`load_package`, which verifies every other file of the package copy against
``manifest.json`` before importing any of it. Standard library only, no relative imports: this
module is also imported on its own.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from types import ModuleType

__all__ = ["ShippedFileError", "file_sha256", "load_package", "private_name", "verify_file", "verify_package"]

MANIFEST_FILE = "manifest.json"


class ShippedFileError(RuntimeError):
    """A shipped file is missing, unlisted, or differs from the SHA-256 in ``manifest.json``."""


def file_sha256(path: str) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected(version_dir: str) -> dict[str, str]:
    manifest_path = os.path.join(version_dir, MANIFEST_FILE)
    try:
        with open(manifest_path) as handle:
            sha256 = json.load(handle)["sha256"]
        if not isinstance(sha256, dict):
            raise TypeError(f"'sha256' is a {type(sha256).__name__}")
        return {str(name): str(digest) for name, digest in sha256.items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ShippedFileError(
            f"{manifest_path}: cannot read the expected SHA-256 of the shipped files ({type(error).__name__}: {error}); "
            "export the model again."
        ) from None


def verify_file(version_dir: str, name: str) -> str:
    """Path of ``version_dir/name`` after checking its SHA-256 against ``manifest.json``.

    Args:
        version_dir: A model version directory holding ``manifest.json``.
        name: The file's path relative to ``version_dir`` (``/``-separated), as the manifest lists it.

    Raises:
        ShippedFileError: the manifest is unreadable or does not list ``name``, or the digest differs.
    """
    path = os.path.join(version_dir, *name.split("/"))
    expected = _expected(version_dir).get(name)
    if expected is None:
        raise ShippedFileError(f"{path}: not listed in {MANIFEST_FILE}; export the model again.")
    actual = file_sha256(path)
    if actual != expected:
        raise ShippedFileError(
            f"{path}: SHA-256 mismatch, expected {expected} (manifest.json), actual {actual}; "
            "the file was modified or corrupted after export. Export the model again."
        )
    return path


def verify_package(version_dir: str, package_dir: str) -> list[str]:
    """Check every file of ``version_dir/package_dir`` against ``manifest.json``; return their names.

    A file the manifest lists but is missing, a file present but not listed (a module dropped in
    after export would be imported) and a digest mismatch are refused. ``__pycache__`` directories
    are ignored (Python writes them on import).

    Raises:
        ShippedFileError: as above, or the package directory does not exist.
    """
    root = os.path.join(version_dir, package_dir)
    if not os.path.isdir(root):
        raise ShippedFileError(f"{root}: missing; export the model again.")
    expected = _expected(version_dir)
    listed = {name for name in expected if name.startswith(package_dir + "/")}
    present: set[str] = set()
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        relative = os.path.relpath(directory, version_dir).replace(os.sep, "/")
        present.update(f"{relative}/{name}" for name in files)
    for name in sorted(present - listed):
        raise ShippedFileError(f"{os.path.join(version_dir, name)}: not listed in {MANIFEST_FILE} (added after export?); "
                               "export the model again.")
    for name in sorted(listed):
        if name not in present:
            raise ShippedFileError(f"{os.path.join(version_dir, name)}: listed in {MANIFEST_FILE} but missing; export the model again.")
        verify_file(version_dir, name)
    return sorted(listed)


def private_name(root: str) -> str:
    """The module name the copy at ``root`` is imported under: unique per directory, never ``aitune_triton``'s."""
    return "_aitune_triton_served_" + hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]


def load_package(version_dir: str, package_dir: str, submodule: str) -> ModuleType:
    """Verify the package copy ``version_dir/package_dir`` and import its ``submodule``.

    The copy is imported as a package under :func:`private_name` (with
    ``submodule_search_locations``), so its relative imports resolve inside the copy, never in an
    installed aitune_triton. A second call for the same directory reuses the imported copy.

    Args:
        version_dir: The model version directory.
        package_dir: The copy's directory name in it (``aitune_triton_served``).
        submodule: The module to return (``graph_model``, ``router``, ``step_model``).

    Raises:
        ShippedFileError: a file of the copy fails :func:`verify_package`.
    """
    root = os.path.join(version_dir, package_dir)
    name = private_name(root)
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ written into the model repository
    try:
        if name not in sys.modules:
            verify_package(version_dir, package_dir)
            spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"), submodule_search_locations=[root])
            if spec is None or spec.loader is None:
                raise ShippedFileError(f"{root}: cannot be imported as a package")
            package = importlib.util.module_from_spec(spec)
            sys.modules[name] = package  # relative imports and dataclasses look the package up by name
            try:
                spec.loader.exec_module(package)
            except BaseException:
                del sys.modules[name]
                raise
        return importlib.import_module(f"{name}.{submodule}")
    finally:
        sys.dont_write_bytecode = writes_bytecode
