"""RemoteModule: call a served module with the original module's arguments, get the same outputs."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from aitune_triton.served.routes import Routes
from aitune_triton.triton.client_base import READY_PROBE_TIMEOUT_S, RemoteBase
from aitune_triton.triton.client_calls import RemoteRoutes, TritonRequest, routes_from_config
from aitune_triton.triton.client_transport import HTTP_HEADERS, grpc_channel_args, is_not_found, unknown_model_error
from aitune_triton.triton.replicas import CallAttempts

__all__ = ["RemoteModule"]


class RemoteModule(RemoteBase):
    """A module served by Triton, called like the original module.

    On creation it reads the entry model's configuration (parameter ``aitune_triton.routes``:
    the forward signature and each graph model's version and IO mapping). Each call is bound and
    flattened exactly as in-process, matched to its graph spec, and sent straight to that version
    of that graph model (one hop, no router; for a module with one graph spec exported without a
    router, the entry model is that graph model). bfloat16 tensors travel as
    ``ml_dtypes.bfloat16`` arrays (tritonclient's "BF16"), bool as numpy bool; the answer is rebuilt into the module's output
    structure of CPU tensors: tuples, lists, dicts, and the containers the module returned
    (``transformers`` ModelOutputs and caches, dataclasses). The caller need not import the
    module's packages: the module that defines each container type named in the IO mapping is
    imported when it is installed here (nothing is unpickled).

    A call whose batch is larger than the graph model's ``max_batch_size`` is sent as several
    requests of near-equal batch sizes, one after the other, and their outputs are joined in order.
    ``url`` may list several servers of the same repository (replicas): requests go round robin
    over the replicas in service. A request that cannot reach a replica (connection refused, gRPC
    ``UNAVAILABLE``), or whose connection closes before the answer while other replicas exist (the
    server died mid-call), takes that replica out and goes to the next one at once (inference is
    idempotent). A replica taken out is probed for readiness (``/v2/health/ready``) by the first
    request after its back-off (``backoff_s``, doubled with each failure in a row, at most
    ``max_backoff_s``) and put back when it answers ready. When no replica is in service the call
    waits for the first back-off to end; such a wait is a retry (``retries`` per request), always
    within ``timeout_s``. With one URL this is the plain retry with backoff of one server. A gRPC
    client makes a new channel after each failure, so it answers as soon as a restarted server is
    ready. HTTP requests ask the server to close the connection after each answer (a connection
    left open kept a stopping server waiting 30 s).

    A RemoteModule may be called from several threads at once: each thread gets its own
    tritonclient client (the HTTP client is built on gevent and cannot be shared across threads).
    Use it as a context manager (``with RemoteModule(...) as remote:``) or call :meth:`close`.
    :class:`~aitune_triton.triton.aio_client.AsyncRemoteModule` is the asyncio twin.

    Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint (a ``grpc://``/``http://`` prefix
            is accepted), or a list of them, one per replica serving the same repository.
        model_name: The entry model name (the exported module's name).
        protocol: ``"grpc"`` or ``"http"``.
        timeout_s: The longest one call may take, in seconds, retries and every request of a
            split batch included (the configuration read on creation gets as long).
        output_structure: ``"module"`` (default) returns the module's own output structure; when
            a container type it names cannot be found or rebuilt here (its package is not
            installed, say), that graph spec's outputs come back as with ``"flat"``, with one warning. ``"flat"`` always
            returns a plain dict ``{leaf path: tensor or constant}`` in flattening order
            (``{"logits": ..., "cache.0": ...}``), without importing anything.
        retries: Retries of a request no replica could be reached for, each after a back-off (0:
            none; moving on to another replica in service is no retry).
        backoff_s: Wait before the first retry, in seconds; doubled for each next one, at most
            ``max_backoff_s``.
        max_backoff_s: Longest wait between two attempts, in seconds.

    Raises:
        InvalidArgumentError: (a ValueError) ``url`` is empty or lists a replica twice, ``protocol`` is neither ``"grpc"`` nor ``"http"``,
            ``output_structure`` is neither ``"module"`` nor ``"flat"``, ``timeout_s`` is not > 0, or
            ``retries``/``backoff_s``/``max_backoff_s`` are negative.
        RemoteInferenceError: (a RuntimeError) the server has no model ``model_name`` (the message
            lists the models it has), ``model_name`` is not an entry model exported by
            aitune_triton, or the server answered with an error; the subclasses
            :class:`~aitune_triton.errors.RemoteUnavailableError` (nothing answers at ``url``; with
            several replicas: none did, and the message names each one's last error),
            :class:`~aitune_triton.errors.RemoteTimeoutError` (no answer within ``timeout_s``) and
            :class:`~aitune_triton.errors.RemoteConnectionClosedError` (the server closed the
            connection) name transport failures.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        model_name: str,
        protocol: str = "grpc",
        timeout_s: float = 60.0,
        output_structure: str = "module",
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 2.0,
    ):
        super().__init__(url, model_name, protocol, timeout_s, output_structure, retries, backoff_s, max_backoff_s)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        try:
            self._routes = RemoteRoutes(model_name, self._read_routes(), output_structure)
        except BaseException:
            self.close()
            raise
        self.signature = self._routes.signature
        self.strict = self._routes.strict
        self.graphs = self._routes.graphs

    def _client(self, url: str) -> Any:
        """This thread's tritonclient client of replica ``url`` (created on first use)."""
        clients = self._local.__dict__.setdefault("clients", {})
        client = clients.get(url)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(url, channel_args=grpc_channel_args())
            else:
                client = self._module.InferenceServerClient(url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            clients[url] = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self, url: str) -> None:
        """Close this thread's client of ``url``; the next request makes a new one (a new gRPC channel)."""
        client = self._local.__dict__.get("clients", {}).pop(url, None)
        if client is not None:
            with self._clients_lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:  # closing a broken connection may raise; the client is dropped anyway
                pass

    def _with_retries(self, send: Callable[[Any, float, str], Any], attempts: CallAttempts) -> Any:
        """``send(client, seconds left, host:port)`` on the replicas ``attempts`` picks, until one answers."""
        while True:
            step = attempts.next()  # raises when no replica answered within the budget
            if not isinstance(step, tuple):
                time.sleep(step)
                continue
            replica, probe = step
            try:
                client = self._client(replica.url)
                if probe and not attempts.probed(replica, self._ready(client, attempts.left_s())):
                    continue
                answer = send(client, attempts.left_s(), replica.url)
            except Exception as raw:  # tritonclient's, socket and geventhttpclient errors: see remote_error
                attempts.failed(replica, raw)  # raises unless another attempt may answer
                self._drop_client(replica.url)  # the next request (a retry or the next call) on a new channel
                continue
            attempts.answered(replica)
            return answer

    def _ready(self, client: Any, left_s: float) -> bool:
        """Whether the server says it is ready (``/v2/health/ready``): the probe of a replica taken out."""
        if self.protocol == "grpc":
            return bool(client.is_server_ready(client_timeout=min(left_s, READY_PROBE_TIMEOUT_S)))
        return bool(client.is_server_ready(headers=HTTP_HEADERS))

    def _read_routes(self) -> Routes:
        def send(client: Any, left_s: float, url: str) -> Any:
            try:
                if self.protocol == "grpc":
                    return client.get_model_config(self.model_name, as_json=True, client_timeout=left_s)["config"]
                return client.get_model_config(self.model_name, headers=HTTP_HEADERS)
            except Exception as error:
                if not is_not_found(error):
                    raise
                raise unknown_model_error(self.model_name, f"{self.protocol}://{url}", self._index(client)) from error

        return routes_from_config(self._with_retries(send, self._config_attempts()), self.model_name)

    def _index(self, client: Any) -> list[dict[str, Any]] | None:
        """The models the server has: its repository index (name, state), or where that API is
        restricted (a TritonServer with its stub watchdog) the loaded models of its statistics;
        None if neither can be read."""
        try:
            if self.protocol == "grpc":
                return client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s).get("models", [])
            return list(client.get_model_repository_index(headers=HTTP_HEADERS))
        except Exception:  # restricted or failed: the statistics name the loaded models
            pass
        try:
            if self.protocol == "grpc":
                stats = client.get_inference_statistics(as_json=True, client_timeout=self.timeout_s)
            else:
                stats = client.get_inference_statistics(headers=HTTP_HEADERS)
        except Exception:  # the list only improves the message
            return None
        return [{"name": entry.get("name"), "state": "READY"} for entry in stats.get("model_stats", [])]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the served module on the call's tensors.

        Returns:
            The module's output structure with CPU tensors in place of its output tensors (a dict
            ``{leaf path: value}`` with ``output_structure="flat"``, see the class).

        Raises:
            TypeError: the arguments do not fit the module's forward signature, or a numpy array
                is passed where the module takes a tensor (``ArgumentTypeError``).
            GraphSpecMismatchError: the call matches none of the exported graph specs (the message
                names the missing or extra arguments, dtypes, ranks and constants that differ from
                the closest graph spec), its shapes are outside the exported ranges, or (non-strict
                modules) it passes other constant arguments than the artifact was built with.
            IndexOutOfRangeError: (an IndexError, as eager raises) an index-valued input (token
                ids, say) holds a value outside the range its indexing op accepts; nothing is sent.
            RemoteInferenceError: the server answered with an error (a bad request, a failed model).
            RemoteUnavailableError: (a RemoteInferenceError) the server cannot be reached (stopped,
                wrong port), after the retries; with several replicas, none can (the message names
                each replica and its last error).
            RemoteTimeoutError: (a RemoteInferenceError) no answer within ``timeout_s``.
            RemoteConnectionClosedError: (a RemoteInferenceError) the server closed the connection
                before answering (with several replicas: the last one tried did, and none answered).
        """
        prepared = self._routes.prepare(args, kwargs)
        deadline_s = time.monotonic() + self.timeout_s
        answers = [
            self._with_retries(self._sender(request), self._attempts(prepared.io.model_name, deadline_s)).as_numpy
            for request in prepared.requests
        ]
        return self._routes.rebuild(prepared, answers)

    def _sender(self, request: TritonRequest) -> Callable[[Any, float, str], Any]:
        module = self._module

        def send(client: Any, left_s: float, url: str) -> Any:
            inputs = []
            for name, array, datatype in request.inputs:
                infer_input = module.InferInput(name, list(array.shape), datatype)
                infer_input.set_data_from_numpy(array)
                inputs.append(infer_input)
            outputs = [module.InferRequestedOutput(name) for name in request.outputs]
            if self.protocol == "grpc":
                return client.infer(request.model_name, inputs, model_version=request.version, outputs=outputs, client_timeout=left_s)
            return client.infer(request.model_name, inputs, model_version=request.version, outputs=outputs, headers=HTTP_HEADERS)

        return send

    def close(self) -> None:
        """Close every client connection this RemoteModule opened."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def __enter__(self) -> "RemoteModule":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
