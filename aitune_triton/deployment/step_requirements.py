"""The Python packages a served step needs beyond what the manifests pin: the third-party modules
its source imports (anywhere in it: a tokenizer is often imported inside the function that loads
it) and everything those require, at the versions installed where the runtime environment is
written (a step model's manifest records no version of them). Used by
:mod:`aitune_triton.deployment.runtime_env`.
"""

from __future__ import annotations

from pathlib import Path

from aitune_triton._warnings import warn
from aitune_triton.triton.manifest import latest_version
from aitune_triton.triton.models.step import STEP_MODULE_FILE

__all__ = ["step_requirements"]

#: Modules a served step imports that are not Python packages to install: Triton's own module and
#: this package (the served copy runs without it installed).
_PROVIDED = {"triton_python_backend_utils", "aitune_triton", "aitune_triton_served"}


def _step_imports(source: Path) -> set[str]:
    """Top-level names of the modules a step's source imports anywhere (a tokenizer is often
    imported inside the function that loads it), less the standard library and :data:`_PROVIDED`."""
    import ast
    import sys

    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(errors="replace"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in _PROVIDED and name != "__future__"}


def step_requirements(model_dirs: list[Path], pinned: set[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(package, version, models)`` pins for the third-party packages step models import (beyond
    ``pinned``, the packages pinned from the manifests) and every package those require, at the
    versions installed here; a package not installed here is left out with a warning naming it."""
    import importlib.metadata as metadata

    distributions = metadata.packages_distributions()
    found: dict[str, list[str]] = {}
    for model_dir in model_dirs:
        version = latest_version(model_dir)
        source = model_dir / str(version) / STEP_MODULE_FILE if version is not None else None
        if source is None or not source.is_file():
            continue
        for module in sorted(_step_imports(source)):
            for package in distributions.get(module, [module]):
                if package.lower() not in pinned:
                    found.setdefault(package, []).append(model_dir.name)
    missing = [package for package in found if not _installed_version(package)]
    for package in sorted(missing):
        warn(f"{', '.join(found.pop(package))}: the step imports {package!r}, which is not installed here, so its "
             "version is unknown; add it to requirements.txt yourself.")
    for package, models in list(found.items()):  # what they pull in: pinned too, or pip would pick versions
        for dependency in _dependency_closure(package):
            if dependency.lower() not in pinned and dependency not in found:
                found[dependency] = [f"{name} (through {package})" for name in models]
    return [(package, str(_installed_version(package)), tuple(sorted(models))) for package, models in sorted(found.items())]


def _installed_version(package: str) -> str | None:
    import importlib.metadata as metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _dependency_closure(package: str) -> list[str]:
    """The installed distributions ``package`` requires, directly or not (markers evaluated for this
    Python, no extras), by their installed names."""
    import importlib.metadata as metadata

    from packaging.requirements import InvalidRequirement, Requirement

    seen: dict[str, str] = {}
    pending = [package]
    while pending:
        for text in metadata.requires(pending.pop()) or []:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                name = metadata.metadata(requirement.name)["Name"]
            except metadata.PackageNotFoundError:
                continue
            if name.lower() not in seen and name.lower() != package.lower():
                seen[name.lower()] = name
                pending.append(name)
    return sorted(seen.values())
