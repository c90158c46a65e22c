"""The ``tritonserver`` binary and its processes: where the binary is, the backend directory and
environment it runs with, and what ``/proc`` says about the server and its Python-backend stubs.

By default the server is the one inside the ``nvidia-pytriton`` wheel (Triton 2.51 with the Python
backend; no other backends). Its Python-backend stub embeds libpython and takes ``sys.prefix``
from the ``python3`` it finds on PATH, ignoring PYTHONPATH; so the server gets this interpreter's
``bin/`` first on PATH and libpython's directory plus ``nvidia_pytriton.libs/`` on
LD_LIBRARY_PATH (:func:`server_environment`), and the stub then runs with this virtual
environment's packages (measured with the embedded server on the project's machines).

The ``/proc`` readers are Linux only; elsewhere they answer "no children" and "dead".
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from aitune_triton.errors import TritonServerError

__all__ = [
    "all_children",
    "children",
    "describe_exit",
    "die_with_parent",
    "find_tritonserver",
    "free_port",
    "group_members",
    "is_dead",
    "python_backend_dir",
    "server_environment",
    "start_ticks",
    "stub_model",
    "stub_model_version",
    "terminate",
]


def describe_exit(returncode: int) -> str:
    """``"tritonserver was killed by signal SIGKILL"`` or ``"tritonserver exited with code N"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"tritonserver was killed by signal {name}"
    return f"tritonserver exited with code {returncode}"


def free_port() -> int:
    """A TCP port on localhost that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_tritonserver(path: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Locate the server binary.

    Args:
        path: An explicit ``tritonserver`` binary.

    Returns:
        ``(binary, pytriton_root)``; ``pytriton_root`` is the wheel's ``tritonserver`` directory when
        the binary comes from ``nvidia-pytriton`` (its backends must then be set up), else None.

    Raises:
        TritonServerError: ``path`` is not an executable file, or no server was found (neither
            the ``nvidia-pytriton`` wheel nor ``tritonserver`` on PATH).
    """
    if path is not None:
        binary = Path(path)
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise TritonServerError(f"tritonserver: {binary} is not an executable file.")
        return binary, None
    root = _pytriton_root()
    if root is not None:
        return root / "bin" / "tritonserver", root
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path), None
    raise TritonServerError(
        "tritonserver: not found. Install the serve extra (pip install 'aitune-triton[serve]', which brings the "
        "nvidia-pytriton wheel with an embedded server), put tritonserver on PATH, or pass its path."
    )


def python_backend_dir(root: Path, into: Path) -> Path:
    """Lay out ``into/python/`` with the wheel's Python backend and the stub for this Python."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonServerError(f"tritonserver: the nvidia-pytriton wheel has no Python-backend stub for Python {version}.")
    backend = into / "python"
    backend.mkdir(parents=True)
    for source in (root / "backends" / "python" / "libtriton_python.so", root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        (backend / source.name).symlink_to(source)
    return into


def server_environment(root: Path | None) -> dict[str, str]:
    """The environment ``tritonserver`` runs with: this one, with this Python's ``bin`` first on
    ``PATH`` (the Python backend's stub finds this interpreter) and the shared-library directories
    of this Python and of the nvidia-pytriton wheel (``root``: its tritonserver directory; None:
    not known) on ``LD_LIBRARY_PATH``."""
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    libraries = [sysconfig.get_config_var("LIBDIR") or ""]
    if root is not None:
        libraries.append(str(root.parent.parent / "nvidia_pytriton.libs"))
    environment["LD_LIBRARY_PATH"] = os.pathsep.join([*filter(None, libraries), environment.get("LD_LIBRARY_PATH", "")])
    return environment


def die_with_parent() -> None:
    """In the server process before exec: ask Linux to SIGTERM it when the parent exits, so a
    Python process killed without cleanup (SIGTERM, SIGKILL) does not leave a server behind.

    Linux ties the parent-death signal to the thread that started the server, so it is only
    asked for when the main thread starts it.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the weakref finalizer still stops it at exit
        pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``; ``[pgid]`` as a stand-in where there
    is no /proc but the group still has a member."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:  # fields: state, ppid, pgrp, session...
            members.append(int(entry.name))
    return members


def terminate(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the server's process group (server and stubs), then SIGKILL after ``timeout_s``.

    Python-backend stubs outlive a server that was killed (they keep its process group), so the
    group's remaining members are ended too, also when the server itself is already gone. The
    group id cannot be reused while any member is alive.
    """
    if process.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, None)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    for sig, wait_s in ((signal.SIGTERM, min(timeout_s, 5.0)), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait_s
        if not group_members(process.pid):
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def stub_model(pid: int) -> str | None:
    """The model a Python-backend stub process runs (its ``model.py`` is ``<model>/<version>/model.py``), or None."""
    found = stub_model_version(pid)
    return found[0] if found else None


def stub_model_version(pid: int) -> tuple[str, str] | None:
    """``(model, version)`` a Python-backend stub process runs, read from its command line, or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            arguments = handle.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    if len(arguments) < 2 or not arguments[0].endswith("triton_python_backend_stub"):
        return None
    version_dir = Path(arguments[1]).parent
    return version_dir.parent.name, version_dir.name


def is_dead(pid: int) -> bool:
    """Whether ``pid`` exited (gone, or a zombie its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (``/proc/<pid>/stat`` field 22, clock ticks since boot), or None when it is gone.

    Together with the pid it names one process: a pid the kernel reused belongs to a process with another start.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def all_children(pid: int) -> list[int]:
    """Child process ids of ``pid`` found by reading every process's parent in ``/proc``: slower than
    :func:`children`, but not subject to the per-thread ``children`` lists, which the kernel
    documents as unreliable while the parent's threads fork or exit (a child moves to another
    thread's list when the thread that started it exits)."""
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found

