"""What ``check --load`` measured about a model repository, kept beside its models.

A successful ``aitune-triton check --load`` (every model READY) writes
:data:`VALIDATION_FILE` into the repository: the Triton server version that loaded it, the wall
time from the server start until the last model was ready (``load_time_s``) and the peak resident
memory of the server and its Python-backend stub processes (``peak_memory_bytes``: the sum of each
process's ``VmHWM`` from ``/proc/<pid>/status``; each process's own peak, so the sum is an upper
bound of their peak together). The file is hidden (its name starts with a dot): Triton reads only
the repository's directories, and ``repository_layout`` accepts hidden files. The deployment
targets (:mod:`aitune_triton.deployment.facts`) size probes, memory and the image tag from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

__all__ = [
    "VALIDATION_FILE", "Validation", "process_tree_peak_rss_bytes", "read_validation", "repository_fingerprint",
    "write_validation",
]

VALIDATION_FILE = ".aitune_triton-validation.json"
_FORMAT = "aitune_triton.validation"


@dataclasses.dataclass(frozen=True)
class Validation:
    """One ``check --load`` run that loaded every model of a repository.

    Attributes:
        server_version: The Triton server version that loaded it (``"2.51.0"``).
        load_time_s: Seconds from the server start until every model was ready.
        peak_memory_bytes: Peak resident memory of the server plus its stub processes, in bytes,
            or None where ``/proc`` is not readable.
        models: Names of the models loaded, sorted.
        fingerprint: :func:`repository_fingerprint` of the repository loaded ("" where unknown).
    """

    server_version: str
    load_time_s: float
    peak_memory_bytes: int | None
    models: tuple[str, ...]
    fingerprint: str = ""


def repository_fingerprint(repository: Path) -> str:
    """SHA-256 over each model's name, ``config.pbtxt``, version directory names and their
    ``manifest.json`` (which holds the SHA-256 of every file of the version): an export, a removed
    version or an edited config changes it. Hidden entries do not count."""
    digest = hashlib.sha256()
    for model_dir in sorted(p for p in Path(repository).iterdir() if p.is_dir() and not p.name.startswith(".")):
        digest.update(f"model {model_dir.name}\n".encode())
        for path in sorted(model_dir.glob("config.pbtxt")) + sorted(model_dir.glob("*/manifest.json")):
            digest.update(f"{path.relative_to(model_dir)}\n".encode() + path.read_bytes())
        digest.update(" ".join(sorted(p.name for p in model_dir.iterdir() if p.is_dir())).encode())
    return digest.hexdigest()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _peak_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_tree_peak_rss_bytes(pid: int) -> int | None:
    """Sum of the peak resident memory (``VmHWM``, bytes) of process ``pid`` and all its descendants.

    Returns:
        The sum in bytes, or None when ``/proc/<pid>/status`` cannot be read (not Linux, the
        process is gone).
    """
    total = _peak_rss_bytes(pid)
    if total is None:
        return None
    pending = _children(pid)
    seen = {pid}
    while pending:
        child = pending.pop()
        if child in seen:
            continue
        seen.add(child)
        total += _peak_rss_bytes(child) or 0
        pending.extend(_children(child))
    return total


def write_validation(repository: Path, validation: Validation) -> Path:
    """Write ``validation`` as ``repository/.aitune_triton-validation.json`` (a temporary file renamed
    into place, so a reader never sees half a file). Returns the file's path."""
    path = Path(repository) / VALIDATION_FILE
    payload = {"format": _FORMAT, **dataclasses.asdict(validation), "models": list(validation.models)}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)
    return path


def read_validation(repository: Path) -> Validation | None:
    """The validation recorded in ``repository``, or None when there is none.

    A file that does not parse, or that names other models than the repository holds now (models
    exported or removed after the check), counts as none, with a ``UserWarning`` saying to run
    ``aitune-triton check --load`` again.
    """
    path = Path(repository) / VALIDATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {_FORMAT!r}")
        peak = data["peak_memory_bytes"]
        validation = Validation(str(data["server_version"]), float(data["load_time_s"]),
                                None if peak is None else int(peak), tuple(str(m) for m in data["models"]),
                                str(data.get("fingerprint", "")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        warnings.warn(f"{path}: not a validation record ({error}); ignored. Run aitune-triton check --load "
                      f"{repository} again.", UserWarning, stacklevel=2)
        return None
    present = tuple(sorted(p.name for p in Path(repository).iterdir() if p.is_dir() and not p.name.startswith(".")))
    if validation.models != present:
        warnings.warn(f"{path}: recorded for models {list(validation.models)}, the repository now holds "
                      f"{list(present)}; ignored. Run aitune-triton check --load {repository} again.",
                      UserWarning, stacklevel=2)
        return None
    if validation.fingerprint != repository_fingerprint(Path(repository)):
        warnings.warn(f"{path}: the repository changed since it was recorded (a new export, an edited config); "
                      f"ignored. Run aitune-triton check --load {repository} again.", UserWarning, stacklevel=2)
        return None
    return validation
