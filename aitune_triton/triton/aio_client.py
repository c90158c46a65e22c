"""AsyncRemoteModule: RemoteModule for asyncio code, over tritonclient's aio clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from aitune_triton.errors import RemoteInferenceError, RemoteUnavailableError
from aitune_triton.spec import ForwardSignature
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
from aitune_triton.triton.io import ModelIO

__all__ = ["AsyncRemoteModule"]


class AsyncRemoteModule:
    """A module served by Triton, awaited like the original module: ``await remote(*args, **kwargs)``.

    The asyncio twin of :class:`~aitune_triton.RemoteModule`: the same arguments, outputs, errors,
    splitting of batches above ``max_batch_size`` (here the parts travel concurrently), retries
    and timeouts, over ``tritonclient.grpc.aio`` or ``tritonclient.http.aio`` (aiohttp). The entry
    model's configuration is read on ``async with`` (or :meth:`connect`, or the first call). Many
    calls may be awaited at once from one event loop (``asyncio.gather``); the clients belong to
    the loop that made them, so use one AsyncRemoteModule per event loop.

    Example::

        async with AsyncRemoteModule(server.grpc_url, "minilm") as remote:
            outputs = await asyncio.gather(*(remote(ids, mask) for ids, mask in batches))

    Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint (a scheme prefix is accepted).
        model_name: The entry model name (the exported module's name).
        protocol: ``"grpc"`` or ``"http"``.
        timeout_s: The longest one call may take, in seconds, retries and split parts included.
        output_structure: ``"module"`` or ``"flat"`` (see :class:`~aitune_triton.RemoteModule`).
        retries: Retries of a request the server could not be reached for (0: none).
        backoff_s: Wait before the first retry, in seconds; doubled each time, at most ``max_backoff_s``.
        max_backoff_s: Longest wait between two attempts, in seconds.

    Raises:
        InvalidArgumentError: as :class:`~aitune_triton.RemoteModule` (here on creation, the
            server errors on :meth:`connect`).
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
        self.url = strip_scheme(url)
        self.model_name = model_name
        self.protocol = protocol
        self.output_structure = output_structure
        if protocol == "grpc":
            import tritonclient.grpc as client_module
            import tritonclient.grpc.aio as aio_module
        else:
            import tritonclient.http as client_module
            import tritonclient.http.aio as aio_module
        self._module = client_module
        self._aio = aio_module
        self._client: Any = None
        # Clients replaced after UNAVAILABLE, closed by close(): closing one at once would cancel
        # the other calls still in flight on it (split parts, concurrent calls), which then fail
        # as cancelled instead of being retried.
        self._retired: list[Any] = []
        self._routes: RemoteRoutes | None = None
        self._connecting: asyncio.Lock | None = None

    @property
    def signature(self) -> ForwardSignature:
        """The module's forward signature (after :meth:`connect`)."""
        return self._connected().signature

    @property
    def graphs(self) -> list[ModelIO]:
        """The IO mapping of every exported graph model (after :meth:`connect`)."""
        return self._connected().graphs

    def _connected(self) -> RemoteRoutes:
        if self._routes is None:
            raise RemoteInferenceError(
                f"AsyncRemoteModule {self.model_name!r}: not connected yet; use 'async with' or await connect() first."
            )
        return self._routes

    def _get_client(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                self._client = self._aio.InferenceServerClient(self.url, channel_args=grpc_channel_args())
            else:
                self._client = self._aio.InferenceServerClient(self.url, conn_timeout=self.timeout_s)
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        for old in [*self._retired, client]:
            if old is not None:
                try:
                    await old.close()
                except Exception:  # closing a broken connection may raise; the client is dropped anyway
                    pass
        self._retired = []

    def _retire(self, client: Any) -> None:
        """Stop using ``client`` (UNAVAILABLE on it) unless another call already replaced it."""
        if self._client is client:
            self._client = None
            self._retired.append(client)

    async def _with_retries(self, send: Callable[[Any, float], Awaitable[Any]], where: str, deadline: float) -> Any:
        """``await send(client, seconds left)``, retried with backoff while the server cannot be reached."""
        start = time.monotonic()
        attempt = 0
        while True:
            left_s = max(deadline - time.monotonic(), 0.001)
            client = self._get_client()
            try:
                return await asyncio.wait_for(send(client, left_s), left_s)
            except Exception as raw:  # tritonclient's, aiohttp's and asyncio's errors: see remote_error
                error = remote_error(raw, where, self.timeout_s)
                if isinstance(error, RemoteUnavailableError) and self.protocol == "grpc":
                    self._retire(client)  # a new channel connects at once; the old one may be in its reconnect backoff
                wait_s = self.retry.wait_s(attempt)
                if not isinstance(error, RemoteUnavailableError) or attempt >= self.retry.retries or (
                    time.monotonic() + wait_s >= deadline
                ):
                    raise given_up(error, attempt + 1, time.monotonic() - start) from raw
            await asyncio.sleep(wait_s)
            attempt += 1

    async def connect(self) -> "AsyncRemoteModule":
        """Read the entry model's routes (once).

        Raises:
            RemoteInferenceError: as :class:`~aitune_triton.RemoteModule`'s creation: no such
                model (listing the server's models), not an entry model, or a transport error.
        """
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._routes is None:
                try:
                    self._routes = RemoteRoutes(self.model_name, await self._read_routes(), self.output_structure)
                except BaseException:
                    await self._drop_client()  # no session left open when 'async with' fails to enter
                    raise
        return self

    async def _read_routes(self) -> Routes:
        where = f"{self.protocol}://{self.url}: cannot read the configuration of model {self.model_name!r}"

        async def send(client: Any, left_s: float) -> Any:
            if self.protocol == "grpc":
                return (await client.get_model_config(self.model_name, as_json=True, client_timeout=left_s))["config"]
            return await client.get_model_config(self.model_name, headers=HTTP_HEADERS)

        try:
            config = await self._with_retries(send, where, time.monotonic() + self.timeout_s)
        except RemoteInferenceError as error:
            if not is_not_found(error.__cause__ or error):
                raise
            raise unknown_model_error(self.model_name, f"{self.protocol}://{self.url}", await self._index()) from error
        return routes_from_config(config, self.model_name)

    async def _index(self) -> list[dict[str, Any]] | None:
        """The models the server has (see ``RemoteModule._index``), or None."""
        client = self._get_client()
        grpc = self.protocol == "grpc"
        try:
            if grpc:
                return (await client.get_model_repository_index(as_json=True)).get("models", [])
            return list(await client.get_model_repository_index(headers=HTTP_HEADERS))
        except Exception:  # restricted or failed: the statistics name the loaded models
            pass
        try:
            stats = await (client.get_inference_statistics(as_json=True) if grpc else client.get_inference_statistics(headers=HTTP_HEADERS))
        except Exception:  # the list only improves the message
            return None
        return [{"name": entry.get("name"), "state": "READY"} for entry in stats.get("model_stats", [])]

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the served module on the call's tensors; see :meth:`aitune_triton.RemoteModule.__call__`
        for what it returns and raises."""
        routes = self._routes or (await self.connect())._connected()
        prepared = routes.prepare(args, kwargs)
        deadline = time.monotonic() + self.timeout_s
        where = f"{prepared.io.model_name} ({self.protocol}://{self.url})"
        results = await asyncio.gather(*(self._with_retries(self._sender(r), where, deadline) for r in prepared.requests))
        return routes.rebuild(prepared, [result.as_numpy for result in results])

    def _sender(self, request: TritonRequest) -> Callable[[Any, float], Awaitable[Any]]:
        module = self._module

        async def send(client: Any, left_s: float) -> Any:
            inputs = []
            for name, array, datatype in request.inputs:
                infer_input = module.InferInput(name, list(array.shape), datatype)
                infer_input.set_data_from_numpy(array)
                inputs.append(infer_input)
            outputs = [module.InferRequestedOutput(name) for name in request.outputs]
            if self.protocol == "grpc":
                return await client.infer(
                    request.model_name, inputs, model_version=request.version, outputs=outputs, client_timeout=left_s
                )
            return await client.infer(request.model_name, inputs, model_version=request.version, outputs=outputs, headers=HTTP_HEADERS)

        return send

    async def close(self) -> None:
        """Close the client connection."""
        await self._drop_client()

    async def __aenter__(self) -> "AsyncRemoteModule":
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
