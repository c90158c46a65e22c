"""Start and stop a real ``tritonserver`` process: :class:`TritonServer`.

The binary, its backend directory and environment, and the ``/proc`` readers are in
:mod:`aitune_triton.triton.process`; the stub watchdog a started server runs is in
:mod:`aitune_triton.triton.watchdog`. Both are re-exported here under their earlier names.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from aitune_triton._progress import console, progress
from aitune_triton.errors import InvalidArgumentError, TritonServerError
from aitune_triton.triton.process import (
    describe_exit,
    die_with_parent,
    find_tritonserver,
    free_port,
    is_dead,
    python_backend_dir,
    server_environment,
    terminate,
)
# The earlier import path of the process readers (tests and tools import them from here).
from aitune_triton.triton.process import children as _children  # noqa: F401
from aitune_triton.triton.process import is_dead as _is_dead  # noqa: F401
from aitune_triton.triton.process import stub_model as _stub_model  # noqa: F401
from aitune_triton.triton.watchdog import StubWatchdog

if TYPE_CHECKING:
    from aitune_triton.triton.container import ContainerSpec, TritonContainer

__all__ = ["StubWatchdog", "TritonServer", "find_tritonserver", "free_port"]

_ERROR_LINE = re.compile(r"^E\d{4} |UNAVAILABLE|failed to load|Traceback|Error:")
# Logged at every start on a host without a GPU (the NVML / DCGM / CUDA probes of Triton 2.51's
# embedded server); harmless there.
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
        container: Run the NGC ``tritonserver`` image through the docker SDK instead of a local
            binary (:mod:`aitune_triton.triton.container`): the repository mounted read-only, the
            three ports published on ``host``, the same readiness wait; no stub watchdog.
        image: With ``container``: the image; None: built from ``runtime_env``, else the NGC image
            of the server version the manifests record.
        runtime_env: With ``container``: a directory written by ``aitune-triton runtime-env``,
            built into the image the container runs.

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
        container: bool = False,
        image: str | None = None,
        runtime_env: str | os.PathLike | None = None,
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
        self.extra_args = list(extra_args)
        self._container_spec = self._container_spec_of(container, image, runtime_env)
        self._container: TritonContainer | None = None
        if self._container_spec is None:
            self._binary, self._root = find_tritonserver(tritonserver)
        else:
            self._binary, self._root = Path("tritonserver"), None
            restart_dead_stubs = False  # the watchdog reads the local process tree
        self._log_path = Path(log_path) if log_path else None
        self._own_log = log_path is None
        self.stream_log = stream_log
        self.timeout_s = timeout_s
        self.show_progress = show_progress
        self._process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._workdir: Path | None = None
        self._reader: threading.Thread | None = None
        self._control_token = secrets.token_urlsafe(24)
        self._watchdog_args = StubWatchdog.server_args(self.extra_args, self._control_token) if restart_dead_stubs else []
        self.watchdog: StubWatchdog | None = None
        self._exit_message: str | None = None

    def _container_spec_of(self, container: bool, image: str | None, runtime_env: str | os.PathLike | None):
        from aitune_triton.triton.container import container_spec

        if not container:
            if image is not None or runtime_env is not None:
                raise InvalidArgumentError("image, runtime_env: only with container=True (--container).")
            return None
        return container_spec(self.repository, http_port=self.http_port, grpc_port=self.grpc_port,
                              metrics_port=self.metrics_port, host=self.host, image=image,
                              runtime_env=Path(runtime_env) if runtime_env is not None else None,
                              extra_args=self.extra_args)

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
        if self._process is not None or self._container is not None:
            return self
        self._exit_message = None
        if self._container_spec is not None:
            return self._start_container(self._container_spec)
        self._workdir = Path(tempfile.mkdtemp(prefix="aitune_triton-server-"))
        if self._root is not None:
            try:
                python_backend_dir(self._root, self._workdir / "backends")
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
                env=server_environment(self._root),
                start_new_session=True,  # its own process group: stop() signals the Python-backend stubs too
                # Parent-death signal only from the main thread: Linux ties it to the starting thread.
                preexec_fn=die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
            # Stops the server if this object is dropped or the interpreter exits without stop().
            self._finalizer = weakref.finalize(self, terminate, self._process, 10.0)
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

    def _start_container(self, spec: "ContainerSpec") -> "TritonServer":
        from aitune_triton.triton.container import TritonContainer

        self._workdir = Path(tempfile.mkdtemp(prefix="aitune_triton-server-"))
        if self._own_log:
            self._log_path = self._workdir / "tritonserver.log"
        container = TritonContainer(spec, self.http_url, self.timeout_s)
        with progress(f"Starting Triton container on {self.repository}", enabled=self.show_progress) as log:
            container.start(log)
        self._container = container
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
                    f"{describe_exit(self._process.returncode)} before it was ready "  # type: ignore[union-attr]
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
        if self._container is not None:
            self.log_path.write_text("\n".join(self._container.logs()) + "\n")
            self._container.stop(timeout_s)
            self._container = None
        process, self._process = self._process, None
        if process is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
            if process.poll() is not None or is_dead(process.pid):
                # A non-blocking poll() answers None while another thread holds Popen's wait lock: wait for the zombie.
                self._exit_message = describe_exit(process.wait(timeout=5))
            terminate(process, timeout_s)
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

    @property
    def pid(self) -> int | None:
        """The ``tritonserver`` process id while it runs (its Python-backend stubs are its children); None otherwise."""
        return self._process.pid if self.is_running() and self._process is not None else None

    def is_running(self) -> bool:
        """Whether the server process (or container) is alive."""
        if self._container is not None:
            return self._container.is_running()
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
