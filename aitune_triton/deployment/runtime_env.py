"""The runtime environment a model repository's Python-backend models need, read from their manifests.

Every exported version records the library versions that built it (``manifest.json``'s
``versions``). A Python-backend model runs its ``model.py`` and the files shipped beside it in the
server's Python: it needs numpy (the Python backend's own utilities import it) and each of
:data:`RUNTIME_PACKAGES` that its code imports (``model.py``, a step's source, and for a graph model
the shipped runtime module of its backend), at the version that built the artifact (an AOTInductor
package, say, loads only in the torch that compiled it). A model served by one of
Triton's own backends (``platform``/``backend`` other than ``python``) needs no Python package.

:func:`runtime_environment` gathers those pins over a repository's models (the latest version of
each) and refuses two models that need different versions of one package;
:func:`write_runtime_environment` writes them as ``requirements.txt``, a ``Dockerfile`` on the NGC
``tritonserver`` image of the server version the repository was exported with
(:mod:`aitune_triton.deployment.images`), a ``.dockerignore`` and ``runtime.json``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from google.protobuf import text_format

from aitune_triton._atomic import make_staging_dir
from aitune_triton.deployment.images import embedded_server_version, ngc_image
from aitune_triton.errors import AITuneTritonError, InvalidArgumentError
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.manifest import latest_version, read_manifest
from aitune_triton.deployment.step_requirements import step_requirements

__all__ = [
    "RUNTIME_PACKAGES",
    "RuntimeEnvironment",
    "RuntimeEnvironmentError",
    "RuntimeRequirement",
    "environment_mismatches",
    "installed_versions",
    "versions_script",
    "runtime_environment",
    "write_runtime_environment",
]

#: Packages a served model's Python code may import whose version the manifests record.
RUNTIME_PACKAGES = ("torch", "onnxruntime", "openvino", "numpy")
#: Where pip finds torch builds with a local version label (``2.13.0+cpu``: the CPU-only build).
TORCH_INDEX = "https://download.pytorch.org/whl/{label}"
#: Files :func:`write_runtime_environment` writes.
FILES = ("requirements.txt", "Dockerfile", ".dockerignore", "runtime.json")


class RuntimeEnvironmentError(AITuneTritonError, ValueError):
    """The models of a repository need conflicting package versions, or a version is unknown."""


@dataclass(frozen=True)
class RuntimeRequirement:
    """One pinned package.

    Attributes:
        package: Distribution name (``torch``).
        version: The exact version that built the artifacts (``2.13.0+cpu``).
        models: The models that need it, sorted.
        installed_here: The version is the one installed where the environment was written: a
            step's own imports (a step model's manifest records no version of them).
    """

    package: str
    version: str
    models: tuple[str, ...]
    installed_here: bool = False

    @property
    def index_url(self) -> str | None:
        """The extra index holding this build: PyTorch's for a torch local version (``+cpu``), else None."""
        if self.package == "torch" and "+" in self.version:
            return TORCH_INDEX.format(label=self.version.split("+", 1)[1])
        return None

    def line(self) -> str:
        """The requirements line: ``torch==2.13.0+cpu``."""
        return f"{self.package}=={self.version}"


@dataclass
class RuntimeEnvironment:
    """What a repository's served models need.

    Attributes:
        repository: The model repository.
        requirements: Pinned packages, sorted by name.
        python_versions: Python version at export -> models exported with it.
        server_version: The Triton server version (``2.51.0``); None when unknown.
        image: The NGC image of that server version; None when unknown.
    """

    repository: Path
    requirements: list[RuntimeRequirement]
    python_versions: dict[str, list[str]] = field(default_factory=dict)
    server_version: str | None = None
    image: str | None = None

    def pins(self) -> dict[str, str]:
        """Package -> pinned version."""
        return {r.package: r.version for r in self.requirements}

    def requirements_txt(self) -> str:
        """``requirements.txt``: an ``--extra-index-url`` line per build index, then one pin a line."""
        indexes = sorted({r.index_url for r in self.requirements if r.index_url})
        lines = [f"# The Python packages the models of {self.repository.name} need, at the versions that built them."]
        lines += [f"--extra-index-url {url}" for url in indexes]
        lines += [f"{r.line()}  # {', '.join(r.models)}" + ("; the version installed here (a step's import)" if r.installed_here else "")
                  for r in self.requirements]
        return "\n".join(lines) + "\n"

    def dockerfile(self) -> str:
        """A ``Dockerfile`` on :attr:`image` installing :meth:`requirements_txt`; the repository is mounted at /models."""
        if self.image is None:
            raise RuntimeEnvironmentError("image: the Triton server version is unknown; pass server_version.")
        pythons = ", ".join(f"{v} ({', '.join(m)})" for v, m in sorted(self.python_versions.items())) or "none"
        return (
            f"# Triton {self.server_version} with the Python packages the models of {self.repository.name} need.\n"
            "#   docker build -t aitune-triton-runtime .\n"
            "#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v /abs/repository:/models:ro "
            "aitune-triton-runtime\n"
            f"# Exported with Python {pythons}; the image's Python backend stub uses the image's own Python.\n"
            f"FROM {self.image}\n"
            "COPY requirements.txt /opt/aitune_triton/requirements.txt\n"
            "# Images on Ubuntu 24.04 mark the system Python externally managed (PEP 668); it is this image's own.\n"
            "RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -r /opt/aitune_triton/requirements.txt\n"
            "# Triton's chart and KServe run the server as uid 1000.\n"
            "USER 1000\n"
            "EXPOSE 8000 8001 8002\n"
            "HEALTHCHECK --interval=10s --timeout=3s --start-period=120s "
            "CMD curl -fsS localhost:8000/v2/health/ready || exit 1\n"
            'CMD ["tritonserver", "--model-repository=/models", "--disable-auto-complete-config", '
            '"--strict-readiness=true"]\n'
        )

    def to_dict(self) -> dict[str, Any]:
        """``runtime.json``'s content."""
        return {
            "repository": str(self.repository),
            "server_version": self.server_version,
            "image": self.image,
            "python_versions": self.python_versions,
            "requirements": [{"package": r.package, "version": r.version, "models": list(r.models),
                              "index_url": r.index_url} for r in self.requirements],
        }


def _is_python_backend(model_dir: Path) -> bool:
    try:
        config = read_model_config(model_dir / "config.pbtxt")
    except (OSError, text_format.ParseError) as error:
        raise RuntimeEnvironmentError(f"{model_dir / 'config.pbtxt'}: cannot be read ({error}); export again.") from None
    return config.backend == "python" or (not config.backend and not config.platform)


def _runtime_name(backend: str | None) -> str | None:
    """The served runtime module a backend's graph model runs (the backend class's ``triton_runtime``)."""
    from aitune_triton.backends import get_backend_class
    from aitune_triton.errors import UnknownBackendError

    if not backend:
        return None
    try:
        return get_backend_class(backend).triton_runtime
    except UnknownBackendError:
        raise RuntimeEnvironmentError(
            f"backend: the manifests name backend {backend!r}, which this aitune_triton does not know; "
            "use the aitune_triton version that exported the repository.") from None


def _imported(version_dir: Path, backend: str | None) -> set[str]:
    """Which of :data:`RUNTIME_PACKAGES` a version's code imports: its own files (``model.py``, a step's
    source) and, for a graph model, the shipped runtime module its backend runs (the shipped package
    holds every runtime; only that one is imported)."""
    from aitune_triton.served import PACKAGE_DIR

    pattern = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(RUNTIME_PACKAGES) + r")\b", re.MULTILINE)
    files = [p for p in version_dir.rglob("*.py") if PACKAGE_DIR not in p.relative_to(version_dir).parts]
    runtime = _runtime_name(backend)
    if runtime is not None:
        files.append(version_dir / PACKAGE_DIR / "runtimes" / f"{runtime}.py")
    found = {"numpy"}  # triton_python_backend_utils and the shipped package import numpy
    for path in files:
        if path.is_file():
            found.update(pattern.findall(path.read_text(errors="replace")))
    return found


def runtime_environment(repository: str | Path, server_version: str | None = None) -> RuntimeEnvironment:
    """The packages the Python-backend models of ``repository`` need (latest version of each).

    Args:
        repository: An exported model repository.
        server_version: The Triton server version to run it with; None: the one embedded in the
            ``nvidia-pytriton`` the manifests record (None when unknown).

    Returns:
        The :class:`RuntimeEnvironment`.

    Raises:
        InvalidArgumentError: ``repository`` is not a directory or holds no model.
        RuntimeEnvironmentError: two models need different versions of one package (the message
            names both models and versions), a needed package is absent from a manifest, or a
            config cannot be read.
        ManifestError: a model's latest version has an unreadable manifest.
    """
    root = Path(repository).absolute()
    if not root.is_dir():
        raise InvalidArgumentError(f"repository: {root} is not a directory; pass an exported model repository.")
    model_dirs = sorted(p for p in root.iterdir() if (p / "config.pbtxt").is_file())
    if not model_dirs:
        raise InvalidArgumentError(f"repository: {root} holds no model (no */config.pbtxt); export a model into it.")
    pins: dict[str, tuple[str, list[str]]] = {}
    pythons: dict[str, list[str]] = {}
    pytritons: set[str] = set()
    for model_dir in model_dirs:
        version = latest_version(model_dir)
        if version is None:
            continue
        manifest = read_manifest(model_dir / str(version))
        if manifest.versions.get("nvidia-pytriton"):  # native models too: the server they were checked with
            pytritons.add(str(manifest.versions["nvidia-pytriton"]))
        if not _is_python_backend(model_dir):
            continue
        name = model_dir.name
        pythons.setdefault(str(manifest.versions.get("python")), []).append(name)
        for package in sorted(_imported(model_dir / str(version), manifest.backend)):
            built = manifest.versions.get(package)
            if not built:
                raise RuntimeEnvironmentError(
                    f"{name}: its code imports {package}, but its manifest records no {package} version; "
                    "export it again with the package installed.")
            if package in pins and pins[package][0] != built:
                other_version, others = pins[package]
                raise RuntimeEnvironmentError(
                    f"{package}: model {others[0]!r} was built with {package} {other_version}, model {name!r} with "
                    f"{built}; one Python environment cannot serve both. Export them again with one {package} "
                    "version, or serve them from separate repositories.")
            pins.setdefault(package, (built, []))[1].append(name)
    if server_version is None and len(pytritons) == 1:
        server_version = embedded_server_version(pytritons.pop())
    requirements = [RuntimeRequirement(p, v, tuple(sorted(m))) for p, (v, m) in sorted(pins.items())]
    steps = [RuntimeRequirement(package, version, models, True) for package, version, models in step_requirements(model_dirs, set(pins))]
    requirements = sorted(requirements + steps, key=lambda r: r.package)
    return RuntimeEnvironment(root, requirements, pythons, server_version,
                              ngc_image(server_version) if server_version else None)


def write_runtime_environment(
    repository: str | Path, output_dir: str | Path, server_version: str | None = None
) -> list[Path]:
    """Write the runtime environment of ``repository`` into the new directory ``output_dir``.

    Writes ``requirements.txt`` (exact pins, PyTorch's index for a local torch build such as
    ``+cpu``), a ``Dockerfile`` FROM the NGC ``tritonserver`` image of the server version that
    installs them (the repository is mounted at ``/models`` when it runs), a ``.dockerignore``
    that sends only ``requirements.txt`` to the build, and ``runtime.json`` (the same facts as
    JSON). The directory is built beside ``output_dir`` and renamed into place: it is complete or absent.

    Args:
        repository: An exported model repository.
        output_dir: The directory to create; must not exist.
        server_version: As :func:`runtime_environment`.

    Returns:
        The files written, sorted.

    Raises:
        InvalidArgumentError: ``output_dir`` exists, or ``repository`` is not a model repository.
        RuntimeEnvironmentError: as :func:`runtime_environment`, or the server version is unknown
            (pass ``server_version``).
    """
    target = Path(output_dir).absolute()
    if target.exists():
        raise InvalidArgumentError(
            f"output_dir: {target} exists; pass a new directory (or remove it first) so no old file is left beside the new ones.")
    environment = runtime_environment(repository, server_version)
    if environment.image is None:
        raise RuntimeEnvironmentError(
            "server_version: the manifests do not say which Triton server the repository was exported with; "
            "pass one (--server-version 2.51.0).")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(target.parent)
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from another uid (a build or a server as uid 1000)
        (staging / "requirements.txt").write_text(environment.requirements_txt())
        (staging / "Dockerfile").write_text(environment.dockerfile())
        (staging / ".dockerignore").write_text("# The build needs only the requirements; the repository is mounted.\n*\n!requirements.txt\n")
        (staging / "runtime.json").write_text(json.dumps(environment.to_dict(), indent=2) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(target / name for name in FILES)



_VERSIONS_SCRIPT = """
import json
from importlib import metadata
def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
print(json.dumps({name: version(name) for name in %r}))
"""


def installed_versions(python: str | Path | None = None, packages: Sequence[str] = RUNTIME_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (distribution names; None: absent), read from their
    metadata without importing them.

    Args:
        python: A Python interpreter to ask (another virtual environment's ``bin/python``, an
            image's ``python3`` reached through a wrapper); None: this process's environment.
        packages: The distributions to read; default :data:`RUNTIME_PACKAGES`.

    Raises:
        InvalidArgumentError: ``python`` cannot be run or does not answer with the versions.
    """
    script = versions_script(packages)
    if python is None:
        from importlib import metadata

        found: dict[str, str | None] = {}
        for name in packages:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = None
        return found
    try:
        done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as error:
        raise InvalidArgumentError(
            f"environment: expected a Python interpreter that runs and reports its packages, got {str(python)!r} "
            f"({error}). Pass the path of the environment's python (for example .venv/bin/python).") from None


def versions_script(packages: Sequence[str] = RUNTIME_PACKAGES) -> str:
    """A Python program that prints the installed versions of ``packages`` as one JSON line."""
    return _VERSIONS_SCRIPT % (tuple(packages),)


def environment_mismatches(
    repository: str | Path,
    python: str | Path | None = None,
    environment: RuntimeEnvironment | None = None,
    installed: dict[str, str | None] | None = None,
    where: str | None = None,
) -> list[str]:
    """Each package the served models need whose installed version in ``python`` differs, one line each.

    Args:
        repository: An exported model repository.
        python: The interpreter of the environment to compare (:func:`installed_versions`); None: this one.
        environment: The repository's :class:`RuntimeEnvironment`, when already read.
        installed: Package -> installed version, already read elsewhere (an image:
            :func:`aitune_triton.triton.container.image_versions`); then ``python`` is not asked.
        where: How the lines name that environment (``"in image X"``).

    Returns:
        Lines such as ``"torch: 2.12.0 installed, models m.graph_0, m built with 2.13.0"``; empty when all match.

    Raises:
        As :func:`runtime_environment` and :func:`installed_versions`.
    """
    environment = environment or runtime_environment(repository)
    if installed is None:
        installed = installed_versions(python, [requirement.package for requirement in environment.requirements])
    where = where or (f"in {python}" if python is not None else "here")
    lines = []
    for requirement in environment.requirements:
        have = installed.get(requirement.package)
        if have != requirement.version:
            lines.append(f"{requirement.package}: {have or 'not installed'} {where}, models {', '.join(requirement.models)} "
                         f"built with {requirement.version}; install {requirement.line()} "
                         "(aitune-triton runtime-env writes the requirements).")
    return lines
