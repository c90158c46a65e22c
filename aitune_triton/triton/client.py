"""RemoteModule: call a served module with the original module's arguments, get the same outputs."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from aitune_triton.errors import RemoteInferenceError, RemoteUnavailableError
from aitune_triton.served.routes import Routes
from aitune_triton.triton.client_calls import RemoteRoutes, TritonRequest, check_arguments, routes_from_config
from aitune_triton.triton.client_transport import (
    HTTP_HEADERS,
    RetryPolicy,
    check_timeout,
    given_up,
    grpc_channel_args,
    is_not_found,
    remote_error,
    strip_scheme,
    unknown_model_error,
)

__all__ = ["RemoteModule"]


class RemoteModule:
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
    A request that cannot reach the server (connection refused, gRPC ``UNAVAILABLE``) is retried
    with backoff (``retries``, ``backoff_s``; inference is idempotent), within ``timeout_s``; a gRPC
    client makes a new channel before each retry, so it answers as soon as a restarted server is
    ready. HTTP requests ask the server to close the connection after each answer (a connection
    left open kept a stopping server waiting 30 s).

    A RemoteModule may be called from several threads at once: each thread gets its own
    tritonclient client (the HTTP client is built on gevent and cannot be shared across threads).
    Use it as a context manager (``with RemoteModule(...) as remote:``) or call :meth:`close`.
    :class:`~aitune_triton.triton.aio_client.AsyncRemoteModule` is the asyncio twin.

    Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint (a ``grpc://``/``http://`` prefix
            is accepted).
        model_name: The entry model name (the exported module's name).
        protocol: ``"grpc"`` or ``"http"``.
        timeout_s: The longest one call may take, in seconds, retries and every request of a
            split batch included (the configuration read on creation gets as long).
        output_structure: ``"module"`` (default) returns the module's own output structure; when
            a container type it names cannot be found or rebuilt here (its package is not
            installed, say), that graph spec's outputs come back as with ``"flat"``, with one warning. ``"flat"`` always
            returns a plain dict ``{leaf path: tensor or constant}`` in flattening order
            (``{"logits": ..., "cache.0": ...}``), without importing anything.
        retries: Retries of a request the server could not be reached for (0: none).
        backoff_s: Wait before the first retry, in seconds; doubled for each next one, at most
            ``max_backoff_s``.
        max_backoff_s: Longest wait between two attempts, in seconds.

    Raises:
        InvalidArgumentError: (a ValueError) ``protocol`` is neither ``"grpc"`` nor ``"http"``,
            ``output_structure`` is neither ``"module"`` nor ``"flat"``, ``timeout_s`` is not > 0, or
            ``retries``/``backoff_s``/``max_backoff_s`` are negative.
        RemoteInferenceError: (a RuntimeError) the server has no model ``model_name`` (the message
            lists the models it has), ``model_name`` is not an entry model exported by
            aitune_triton, or the server answered with an error; the subclasses
            :class:`~aitune_triton.errors.RemoteUnavailableError` (nothing answers at ``url``),
            :class:`~aitune_triton.errors.RemoteTimeoutError` (no answer within ``timeout_s``) and
            :class:`~aitune_triton.errors.RemoteConnectionClosedError` (the server closed the
            connection) name transport failures.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        protocol: str = "grpc",
        timeout_s: float = 60.0,
        output_structure: str = "module",
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 2.0,
    ):
        check_arguments(protocol, output_structure)
        self.timeout_s = check_timeout(timeout_s)
        self.retry = RetryPolicy(retries, backoff_s, max_backoff_s)
        self.output_structure = output_structure
        self.url = strip_scheme(url)
        self.model_name = model_name
        self.protocol = protocol
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
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

    @property
    def _client(self) -> Any:
        """This thread's tritonclient client (created on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url, channel_args=grpc_channel_args())
            else:
                client = self._module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """Close this thread's client; the next request makes a new one (a new gRPC channel)."""
        client = getattr(self._local, "client", None)
        if client is not None:
            self._local.client = None
            with self._clients_lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:  # closing a broken connection may raise; the client is dropped anyway
                pass

    def _with_retries(self, send: Callable[[Any, float], Any], where: str, deadline: float) -> Any:
        """``send(client, seconds left)``, retried with backoff while the server cannot be reached."""
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return send(self._client, max(deadline - time.monotonic(), 0.001))
            except Exception as raw:  # tritonclient's, socket and geventhttpclient errors: see remote_error
                error = remote_error(raw, where, self.timeout_s)
                if isinstance(error, RemoteUnavailableError):  # the next request (a retry or the next call) on a new channel
                    self._drop_client()
                wait_s = self.retry.wait_s(attempt)
                if not isinstance(error, RemoteUnavailableError) or attempt >= self.retry.retries or (
                    time.monotonic() + wait_s >= deadline
                ):
                    raise given_up(error, attempt + 1, time.monotonic() - start) from raw
            time.sleep(wait_s)
            attempt += 1

    def _read_routes(self) -> Routes:
        where = f"{self.protocol}://{self.url}: cannot read the configuration of model {self.model_name!r}"

        def send(client: Any, left_s: float) -> Any:
            if self.protocol == "grpc":
                return client.get_model_config(self.model_name, as_json=True, client_timeout=left_s)["config"]
            return client.get_model_config(self.model_name, headers=HTTP_HEADERS)

        try:
            config = self._with_retries(send, where, time.monotonic() + self.timeout_s)
        except RemoteInferenceError as error:
            if not is_not_found(error.__cause__ or error):
                raise
            raise unknown_model_error(self.model_name, f"{self.protocol}://{self.url}", self._index()) from error
        return routes_from_config(config, self.model_name)

    def _index(self) -> list[dict[str, Any]] | None:
        """The models the server has: its repository index (name, state), or where that API is
        restricted (a TritonServer with its stub watchdog) the loaded models of its statistics;
        None if neither can be read."""
        client = self._client
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
                wrong port), after the retries.
            RemoteTimeoutError: (a RemoteInferenceError) no answer within ``timeout_s``.
            RemoteConnectionClosedError: (a RemoteInferenceError) the server closed the connection
                before answering.
        """
        prepared = self._routes.prepare(args, kwargs)
        deadline = time.monotonic() + self.timeout_s
        where = f"{prepared.io.model_name} ({self.protocol}://{self.url})"
        answers = [self._with_retries(self._sender(request), where, deadline).as_numpy for request in prepared.requests]
        return self._routes.rebuild(prepared, answers)

    def _sender(self, request: TritonRequest) -> Callable[[Any, float], Any]:
        module = self._module

        def send(client: Any, left_s: float) -> Any:
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
