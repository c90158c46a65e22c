"""``StubWatchdog``: reloads a model whose Python-backend stub process died.

A stub's liveness is read from its own ``/proc`` entry and start time (:mod:`aitune_triton.triton.process`),
not from the server's per-thread children lists, which can miss a live child for a moment.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Sequence

from aitune_triton.triton import process

__all__ = ["StubWatchdog"]


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
        self._started: dict[int, int] = {}  # stub pid -> its start time (see process.start_ticks)
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
            if process.is_dead(self.pid):  # the server itself is gone: nothing to reload into
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
        # lists, which can miss a live child for a moment (see process.all_children).
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
        return not process.is_dead(pid) and process.start_ticks(pid) == self._started.get(pid)

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
        (read from every process's parent when ``every_child``, see :func:`process.all_children`)."""
        children = set(process.all_children(self.pid) if every_child else process.children(self.pid))
        for pid in sorted(children - self._handled - set(self._models)):
            started = process.start_ticks(pid)
            found = process.stub_model_version(pid)
            if found is not None and started is not None:
                self._started[pid] = started
                self._models[pid] = found[0]
                self._stub_versions[pid] = (found[1], self._seen)
                self._seen += 1
            elif process.is_dead(pid):
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
