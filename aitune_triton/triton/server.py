"""Start and stop a real ``tritonserver`` process.

By default the server is the one inside the ``nvidia-pytriton`` wheel (Triton 2.51 with the Python
backend; no other backends). Its Python-backend stub embeds libpython and takes ``sys.prefix``
from the ``python3`` it finds on PATH, ignoring PYTHONPATH; so the server gets this interpreter's
``bin/`` first on PATH and libpython's directory plus ``nvidia_pytriton.libs/`` on
LD_LIBRARY_PATH, and the stub then runs with this virtual environment's packages (facts measured
on the project machines, ``shared/design.md``).
"""

from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

from aitune_triton._progress import console, progress
from aitune_triton.errors import InvalidArgumentError, TritonServerError

__all__ = ["StubWatchdog", "TritonServer", "find_tritonserver", "free_port"]

_ERROR_LINE = re.compile(r"^E\d{4} |UNAVAILABLE|failed to load|Traceback|Error:")
# Logged at every start on a host without a GPU; harmless there (design notes).
_HARMLESS = re.compile(r"CudaDriverHelper|NVML|DCGM|GPU metrics|CUDA driver")
#: The address the server listens on unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"


def _check_host(host: str) -> str:
    """``host`` as an IPv4 address string (``localhost`` is 127.0.0.1).

    Raises:
        InvalidArgumentError: ``host`` is not an IPv4 address.
    """
    if host == "localhost":
        return DEFAULT_HOST
    try:
        if not isinstance(host, str):  # IPv4Address also takes an int
            raise TypeError
        return str(ipaddress.IPv4Address(host))
    except (ipaddress.AddressValueError, TypeError):
        raise InvalidArgumentError(
            f"host: expected an IPv4 address to listen on, such as 127.0.0.1 (this machine only, the default) or "
            f"0.0.0.0 (every interface), got {host!r}."
        ) from None


def _describe_exit(returncode: int) -> str:
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


def _python_backend_dir(root: Path, into: Path) -> Path:
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


def _server_environment(root: Path | None) -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    libraries = [sysconfig.get_config_var("LIBDIR") or ""]
    if root is not None:
        libraries.append(str(root.parent.parent / "nvidia_pytriton.libs"))
    environment["LD_LIBRARY_PATH"] = os.pathsep.join([*filter(None, libraries), environment.get("LD_LIBRARY_PATH", "")])
    return environment


def _die_with_parent() -> None:
    """In the server process before exec: ask Linux to SIGTERM it when the parent exits, so a
    Python process killed without cleanup (SIGTERM, SIGKILL) does not leave a server behind.

    Linux ties the parent-death signal to the thread that started the server, so it is only
    asked for when the main thread starts it.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the weakref finalizer still stops it at exit
        pass


def _group_members(pgid: int) -> list[int]:
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


def _terminate(process: subprocess.Popen, timeout_s: float) -> None:
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
        if not _group_members(process.pid):
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        while _group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _children(pid: int) -> list[int]:
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


def _stub_model(pid: int) -> str | None:
    """The model a Python-backend stub process runs (its ``model.py`` is ``<model>/<version>/model.py``), or None."""
    found = _stub_model_version(pid)
    return found[0] if found else None


def _stub_model_version(pid: int) -> tuple[str, str] | None:
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


def _is_dead(pid: int) -> bool:
    """Whether ``pid`` exited (gone, or a zombie its parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (``/proc/<pid>/stat`` field 22, clock ticks since boot), or None when it is gone.

    Together with the pid it names one process: a pid the kernel reused belongs to a process with another start.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _all_children(pid: int) -> list[int]:
    """Child process ids of ``pid`` found by reading every process's parent in ``/proc``: slower than
    :func:`_children`, but not subject to the per-thread ``children`` lists, which the kernel
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


class StubWatchdog:
    """Reloads a model whose Python-backend stub process died, so that it does not stay "ready" but dead.

    Triton 2.51's Python backend does not restart a stub that died (killed, or aborted by compiled
    code): the model keeps reporting ready while every request to it fails with ``Stub process
    ... is not healthy`` until the model is reloaded (measured with the embedded server: still
    failing two minutes after a SIGKILL; the dead stub stays an unreaped zombie). A reload in
    place (``load`` of a loaded model) does not replace it. The watchdog polls the server's child
    processes every ``interval_s`` seconds; when a stub is dead it unloads its model (from then on
    model and server readiness say false and requests are refused as an unknown model) and loads
    it again through the model-control API, which needs ``--model-control-mode=explicit`` (see
    :meth:`server_args`). Measured on the embedded server with an ONNX Runtime model: good
    requests succeed again about 0.2 s after the kill, and about 3-5 s after an AOTInductor
    package aborted its stub.

    A server that :class:`TritonServer` did not start (an NGC container, a ``tritonserver`` run by
    hand) has no watchdog: there a model whose stub died keeps reporting ready while failing every
    request, until it is reloaded (with ``--model-control-mode=explicit``: ``POST
    /v2/repository/models/<name>/unload``, then ``.../load``) or the server is restarted.

    Args:
        pid: The ``tritonserver`` process id.
        http_url: ``host:port`` of its HTTP endpoint.
        interval_s: Seconds between two looks at the stub processes.
        log: Receives one line per event (a death, a reload, a failed reload).

    Attributes:
        reloads: ``(model name, dead stub pid, seconds from noticing the death to the model being loaded again)``
            per reload done, in order.
    """

    #: Header that the model-repository API (load, unload) of a watched server requires: without it
    #: Triton refuses those calls, since loading a model means running its code.
    CONTROL_HEADER = "aitune-triton-model-control"

    def __init__(
        self,
        pid: int,
        http_url: str,
        interval_s: float = 0.2,
        log: Callable[[str], None] | None = None,
        control_token: str = "",
        max_attempts: int = 5,
    ):
        self.pid = pid
        self.http_url = http_url
        self.interval_s = interval_s
        self._headers = {self.CONTROL_HEADER: control_token} if control_token else {}
        self.max_attempts = max_attempts
        # model -> (dead stub pid, attempts so far, next try at, whether the unload went through)
        self._retry: dict[str, tuple[int, int, float, bool]] = {}
        self._versions: dict[str, list[int]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._log = log or (lambda line: None)
        self.reloads: list[tuple[str, int, float]] = []
        self._handled: set[int] = set()
        self._models: dict[int, str] = {}  # stub pid -> model, read while the stub is alive
        self._started: dict[int, int] = {}  # stub pid -> its start time (see _start_ticks)
        self._stub_versions: dict[int, tuple[str, int]] = {}  # stub pid -> (version, order it was seen in)
        self._seen = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def server_args(cls, extra_args: Sequence[str], control_token: str) -> list[str]:
        """The ``tritonserver`` arguments the watchdog needs: explicit model control, every model
        loaded at start, and the model-repository API (HTTP and gRPC) restricted to requests that
        carry :attr:`CONTROL_HEADER` with ``control_token`` (Triton's ``--http-restricted-api`` /
        ``--grpc-restricted-protocol``), so that a client cannot load or unload models (loading a
        model runs its code) unless it has the token: the server's own user, since the token is on
        its command line. Empty when ``extra_args`` choose a model-control mode or a restriction
        themselves (then there is no watchdog)."""
        own = ("--model-control-mode", "--load-model", "--http-restricted-api", "--grpc-restricted-protocol")
        if any(arg.startswith(own) for arg in extra_args):
            return []
        restricted = f"model-repository:{cls.CONTROL_HEADER}={control_token}"
        return [
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
        ]

    def start(self) -> "StubWatchdog":
        """Start watching in a daemon thread; the stubs alive now are the ones watched."""
        if self._thread is None:
            self._learn()  # every model is loaded: its stubs run now
            self._thread = threading.Thread(target=self._run, name="aitune-triton-stub-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the server is stopped, so that its exiting stubs are not reloaded)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    def _run(self) -> None:
        import tritonclient.http as http

        while not self._stopping.wait(self.interval_s):
            if _is_dead(self.pid):  # the server itself is gone: nothing to reload into
                return
            try:
                due = [(model, pid) for model, pid in self.dead_stubs()]
                now = time.monotonic()
                due += [(model, pid) for model, (pid, _, at, _) in self._retry.items() if at <= now and (model, pid) not in due]
                for model, pid in due:
                    if self._stopping.is_set():
                        return
                    client = http.InferenceServerClient(self.http_url, connection_timeout=60.0, network_timeout=60.0)
                    try:
                        self._reload(client, model, pid)
                    finally:
                        client.close()
            except Exception as error:  # one failed look must not end the watching
                self._log(f"watchdog: {type(error).__name__}: {error}")

    def dead_stubs(self) -> list[tuple[str, int]]:
        """``(model, pid)`` of stub processes that died and were not handled yet (each is returned once).

        A stub's model is read from its command line while it is alive (a zombie has none), so a
        stub that dies before the first look after its start is not seen.
        """
        found = []
        self._learn()
        # Dead: a zombie, gone, or its pid reused by another process. Not judged by the children
        # lists, which can miss a live child for a moment (see _all_children).
        ended = [pid for pid in self._models if pid not in self._handled and not self._alive(pid)]
        if ended:
            self._learn(every_child=True)  # a replacing stub the children lists missed must be known
        for pid in ended:
            model = self._models[pid]
            self._handled.add(pid)
            if self._replaced(pid, model):
                self._log(f"stub process {pid} of model {model!r} ended with a reload of its version; not a crash")
                continue
            found.append((model, pid))
        return found

    def _alive(self, pid: int) -> bool:
        """Whether the stub process learned as ``pid`` still runs (not a zombie, its pid not reused)."""
        return not _is_dead(pid) and _start_ticks(pid) == self._started.get(pid)

    def _replaced(self, pid: int, model: str) -> bool:
        """Whether a stub that ended was replaced by a reload: a live stub of the same model and
        version started after it. Triton 2.51 never restarts a crashed stub, so only a (version)
        reload starts such a stub; its old stubs exit once the new ones are loaded."""
        version, order = self._stub_versions.get(pid, ("", -1))
        if not version:
            return False
        return any(
            self._alive(other) and self._models.get(other) == model
            and self._stub_versions.get(other, ("", -1))[0] == version and self._stub_versions[other][1] > order
            for other in self._models
        )

    def _learn(self, every_child: bool = False) -> set[int]:
        """Record the model of every new stub process (while it is alive); return the server's children
        (read from every process's parent when ``every_child``, see :func:`_all_children`)."""
        children = set(_all_children(self.pid) if every_child else _children(self.pid))
        for pid in sorted(children - self._handled - set(self._models)):
            started = _start_ticks(pid)
            found = _stub_model_version(pid)
            if found is not None and started is not None:
                self._started[pid] = started
                self._models[pid] = found[0]
                self._stub_versions[pid] = (found[1], self._seen)
                self._seen += 1
            elif _is_dead(pid):
                self._handled.add(pid)
                self._log(f"process {pid} of the server died before it was seen; its model is unknown, none is reloaded")
        return children

    def _reload(self, client: Any, model: str, pid: int) -> None:
        """Unload ``model`` and load it again, with the versions it served; retried (with a growing
        pause) when a step fails, up to :attr:`max_attempts` times. Loading a loaded model does not
        replace its dead stub, so every attempt unloads first until an unload went through."""
        started = time.monotonic()
        _, attempts, _, unloaded = self._retry.pop(model, (pid, 0, 0.0, False))
        version = self._stub_versions.get(pid, ("", 0))[0]
        try:
            if not unloaded:
                # Not ready: unloaded on purpose (a version the policy no longer serves), or loading.
                if attempts == 0 and not (client.is_model_ready(model, version) if version.isdigit() else client.is_model_ready(model)):
                    return
                if attempts == 0:
                    self._log(f"stub process {pid} of model {model!r} died; reloading the model")
                self._versions[model] = self._ready_versions(client, model)
                self._configs[model] = client.get_model_config(model)
                client.unload_model(model, headers=self._headers)
                unloaded = True
                # The model's other stubs exit with the unload; they are not deaths to act on.
                self._handled.update(other for other, name in list(self._models.items()) if name == model)
            self._load(client, model)
            self._learn()  # the new stubs run now: learn them before a request can kill one
        except Exception as error:  # any failure is retried: a model must not stay dead or unloaded
            attempts += 1
            if attempts < self.max_attempts:
                pause_s = min(30.0, 0.5 * 2**attempts)
                self._retry[model] = (pid, attempts, time.monotonic() + pause_s, unloaded)
                self._log(f"reloading model {model!r} failed ({error}); trying again in {pause_s:.0f} s")
            else:
                state = "unloaded" if unloaded else "loaded with a dead stub"
                self._log(
                    f"reloading model {model!r} failed {attempts} times ({error}); it stays {state}: restart the "
                    "server (TritonServer.stop(), then start())"
                )
            return
        self.reloads.append((model, pid, time.monotonic() - started))
        self._log(f"model {model!r} reloaded in {time.monotonic() - started:.1f} s")

    def _ready_versions(self, client: Any, model: str) -> list[int]:
        index = client.get_model_repository_index(headers=self._headers)
        return sorted(int(entry["version"]) for entry in index if entry.get("name") == model and entry.get("state") == "READY" and entry.get("version"))

    def _load(self, client: Any, model: str) -> None:
        """Load ``model`` with the versions it served before (the repository may hold newer ones an
        export added meanwhile, which the entry model does not route to)."""
        versions, config = self._versions.get(model), self._configs.get(model)
        if versions and config:
            pinned = {**config, "version_policy": {"specific": {"versions": versions}}}
            try:
                client.load_model(model, config=json.dumps(pinned), headers=self._headers)
                return
            except Exception as error:  # the override refused: a plain load serves the latest version
                self._log(f"loading model {model!r} pinned to versions {versions} failed ({error}); loading it plainly")
        else:
            self._log(f"model {model!r}: its served versions are unknown; loading it plainly (the latest version)")
        client.load_model(model, headers=self._headers)


class TritonServer:
    """A ``tritonserver`` process serving a model repository; a context manager.

    Args:
        repository: Model repository directory.
        http_port: HTTP port; a free one when None.
        grpc_port: gRPC port; a free one when None.
        metrics_port: Metrics port; a free one when None.
        tritonserver: Path of a ``tritonserver`` binary; default the ``nvidia-pytriton`` one, else PATH.
        log_path: File that keeps the server log; a temporary file when None.
        stream_log: Also echo server log lines to stderr.
        timeout_s: Seconds to wait for the server (and every model) to be ready.
        extra_args: More ``tritonserver`` arguments.
        show_progress: Print progress lines to stderr while starting.
        restart_dead_stubs: Run a :class:`StubWatchdog`: a model whose Python-backend stub process
            dies is reloaded (not ready in between) instead of failing every request while
            reporting ready; a failed reload is retried, and the reload keeps the versions the
            model served. It starts the server with ``--model-control-mode=explicit --load-model=*``
            and restricts the model-repository API to requests with :attr:`model_control_headers`,
            unless ``extra_args`` pick a model-control mode or a restriction (then no watchdog).
        host: IPv4 address HTTP, gRPC and metrics listen on. The default, 127.0.0.1, accepts
            connections from this machine only; another address (``0.0.0.0``: every interface)
            opens the server, which has no authentication, to the network, with a warning.

    Raises:
        TritonServerError: ``repository`` is not a directory or holds no model, or no server binary
            was found.
        InvalidArgumentError: ``host`` is not an IPv4 address.

    The server runs with ``--disable-auto-complete-config`` (the written configs are exactly what
    runs) and ``--exit-on-error`` (a model that fails to load stops the start; its error lines are
    in the raised :class:`TritonServerError`). A server that ends on its own (a crash, a signal)
    is reported by :attr:`exit_message`, and its temporary log is kept.

    Example::

        with TritonServer("model_repository") as server:
            remote = RemoteModule(server.grpc_url, "minilm")
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        tritonserver: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        stream_log: bool = False,
        timeout_s: float = 180.0,
        extra_args: Sequence[str] = (),
        show_progress: bool = True,
        restart_dead_stubs: bool = True,
        host: str = DEFAULT_HOST,
    ):
        self.host = _check_host(host)
        if not ipaddress.IPv4Address(self.host).is_loopback:
            warnings.warn(
                f"host: tritonserver will listen on {self.host}"
                + (" (every interface)" if self.host == "0.0.0.0" else "")
                + "; anyone who can reach this machine can call its models (Triton has no authentication). "
                "Use the default 127.0.0.1 unless the network is trusted.",
                UserWarning,
                stacklevel=2,
            )
        self.repository = Path(repository).absolute()
        if not self.repository.is_dir():
            raise TritonServerError(f"repository: {self.repository} is not a directory. Export a model into it first.")
        if not any((entry / "config.pbtxt").is_file() for entry in self.repository.iterdir()):
            raise TritonServerError(
                f"repository: {self.repository} holds no model (no */config.pbtxt). Export one into it first: "
                "aitune-triton export CHECKPOINT -o REPOSITORY."
            )
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self._binary, self._root = find_tritonserver(tritonserver)
        self._log_path = Path(log_path) if log_path else None
        self._own_log = log_path is None
        self.stream_log = stream_log
        self.timeout_s = timeout_s
        self.extra_args = list(extra_args)
        self.show_progress = show_progress
        self._process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._workdir: Path | None = None
        self._reader: threading.Thread | None = None
        self._control_token = secrets.token_urlsafe(24)
        self._watchdog_args = StubWatchdog.server_args(self.extra_args, self._control_token) if restart_dead_stubs else []
        self.watchdog: StubWatchdog | None = None
        self._exit_message: str | None = None

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as tritonclient expects (the address it listens on)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as tritonclient expects (the address it listens on)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """``host:port`` of the Prometheus metrics endpoint (``/metrics``)."""
        return f"{self.host}:{self.metrics_port}"

    @property
    def exit_message(self) -> str | None:
        """How the server process ended on its own: ``"tritonserver was killed by signal SIGKILL"``
        or ``"tritonserver exited with code N"``; None while it runs, before it started, or when
        :meth:`stop` ended it. Set by :meth:`stop` (or by :meth:`start` when the start failed)."""
        return self._exit_message

    @property
    def log_path(self) -> Path:
        """The file holding the server log.

        Raises:
            TritonServerError: the server was never started and no ``log_path`` was given.
        """
        if self._log_path is None:
            raise TritonServerError("log_path: the server has not been started.")
        return self._log_path

    def command(self) -> list[str]:
        """The ``tritonserver`` command line."""
        command = [
            str(self._binary),
            f"--model-repository={self.repository}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
        ]
        if self._root is not None and self._workdir is not None:
            command.append(f"--backend-directory={self._workdir / 'backends'}")
        return command + self._watchdog_args + self.extra_args

    def start(self) -> "TritonServer":
        """Start the server and wait until it and its models are ready.

        Raises:
            TritonServerError: the server exited or was not ready within ``timeout_s``; the
                message holds the server's own error lines and the log path.
        """
        if self._process is not None:
            return self
        self._exit_message = None
        self._workdir = Path(tempfile.mkdtemp(prefix="aitune_triton-server-"))
        if self._root is not None:
            try:
                _python_backend_dir(self._root, self._workdir / "backends")
            except BaseException:
                shutil.rmtree(self._workdir, ignore_errors=True)
                raise
        if self._own_log:
            self._log_path = self._workdir / "tritonserver.log"
        with progress(f"Starting Triton server on {self.repository}", enabled=self.show_progress) as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=_server_environment(self._root),
                start_new_session=True,  # its own process group: stop() signals the Python-backend stubs too
                # Parent-death signal only from the main thread: Linux ties it to the starting thread.
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
            # Stops the server if this object is dropped or the interpreter exits without stop().
            self._finalizer = weakref.finalize(self, _terminate, self._process, 10.0)
            self._reader = threading.Thread(target=self._copy_log, daemon=True)
            self._reader.start()
            log(f"pid {self._process.pid}, http {self.http_url}, grpc {self.grpc_url}, log {self._log_path}")
            try:
                self._wait_ready(log)
            except BaseException:
                self.stop()
                raise
        self._start_watchdog()
        return self

    def _copy_log(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        with open(self.log_path, "ab") as sink:
            for line in process.stdout:
                sink.write(line)
                sink.flush()
                text = line.decode(errors="replace").rstrip()
                if self.stream_log and not _HARMLESS.search(text):
                    console.out(text, highlight=False)

    def _wait_ready(self, log) -> None:
        deadline = time.monotonic() + self.timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        last_note = time.monotonic()
        while time.monotonic() < deadline:
            if self._process.poll() is not None:  # type: ignore[union-attr]
                self._reader.join(timeout=5)  # type: ignore[union-attr]
                raise TritonServerError(
                    f"{_describe_exit(self._process.returncode)} before it was ready "  # type: ignore[union-attr]
                    f"(log: {self.log_path}).",
                    self.error_lines(),
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        log("server and models ready")
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() - last_note > 5:
                log("waiting for models to load")
                last_note = time.monotonic()
            time.sleep(0.2)
        raise TritonServerError(f"tritonserver was not ready after {self.timeout_s:g} s (log: {self.log_path}).", self.error_lines())

    def error_lines(self) -> list[str]:
        """The server's error lines so far (glog ``E`` lines, model load failures, tracebacks)."""
        if self._log_path is None or not self._log_path.exists():
            return []
        lines = self._log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if _ERROR_LINE.search(line) and not _HARMLESS.search(line)]

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server and its Python-backend stubs (SIGTERM to the process group, then SIGKILL
        after ``timeout_s``) and remove its temporary files.

        Also after the server died on its own: its stubs still running are ended, and
        :attr:`exit_message` says how it died. A temporary log (no ``log_path`` given) is kept only
        when it holds error lines or the server died on its own, for reading after a failure; a
        ``log_path`` given by the caller always stays.
        """
        self._stop_watchdog()
        process, self._process = self._process, None
        if process is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            if process.poll() is not None or _is_dead(process.pid):
                # A non-blocking poll() answers None while another thread holds Popen's wait lock: wait for the zombie.
                self._exit_message = _describe_exit(process.wait(timeout=5))
            _terminate(process, timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._workdir is not None:
            if self._own_log and (self.error_lines() or self._exit_message):  # keep the log of a failed run
                shutil.rmtree(self._workdir / "backends", ignore_errors=True)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    @property
    def model_control_headers(self) -> dict[str, str]:
        """Headers a model-repository request (load, unload, repository index) to this server needs
        while it runs a watchdog; empty without one."""
        return {StubWatchdog.CONTROL_HEADER: self._control_token} if self._watchdog_args else {}

    def _start_watchdog(self) -> None:
        if self._watchdog_args and self._process is not None:
            self.watchdog = StubWatchdog(
                self._process.pid, self.http_url, log=self._note, control_token=self._control_token
            ).start()

    def _stop_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()

    def _note(self, line: str) -> None:
        """Add a line of ours to the server log (and to stderr when streaming the log)."""
        try:
            with open(self.log_path, "a") as sink:
                sink.write(f"aitune_triton: {line}\n")
        except OSError:  # the log went with a stopped server's work directory
            pass
        if self.stream_log:
            console.out(f"aitune_triton: {line}", highlight=False)

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
