"""AsyncRemoteModule: RemoteModule for asyncio code, over tritonclient's aio clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Sequence

from aitune_triton.errors import RemoteInferenceError
from aitune_triton.served.routes import Routes
from aitune_triton.spec import ForwardSignature
from aitune_triton.triton.client_base import READY_PROBE_TIMEOUT_S, RemoteBase
from aitune_triton.triton.client_calls import RemoteRoutes, TritonRequest, routes_from_config
from aitune_triton.triton.client_transport import HTTP_HEADERS, grpc_channel_args, is_not_found, unknown_model_error
from aitune_triton.triton.replicas import CallAttempts
from aitune_triton.triton.io import ModelIO

__all__ = ["AsyncRemoteModule"]


class AsyncRemoteModule(RemoteBase):
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
        url: ``host:port`` of the server's gRPC or HTTP endpoint (a scheme prefix is accepted), or
            a list of them, one per replica (spread over and failed over as by :class:`~aitune_triton.RemoteModule`).
        model_name: The entry model name (the exported module's name).
        protocol: ``"grpc"`` or ``"http"``.
        timeout_s: The longest one call may take, in seconds, retries and split parts included.
        output_structure: ``"module"`` or ``"flat"`` (see :class:`~aitune_triton.RemoteModule`).
        retries: Retries of a request no replica could be reached for, each after a back-off (0: none).
        backoff_s: Wait before the first retry, in seconds; doubled each time, at most ``max_backoff_s``.
        max_backoff_s: Longest wait between two attempts, in seconds.

    Raises:
        InvalidArgumentError: as :class:`~aitune_triton.RemoteModule` (here on creation, the
            server errors on :meth:`connect`).
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
        if protocol == "grpc":
            import tritonclient.grpc.aio as aio_module
        else:
            import tritonclient.http.aio as aio_module
        self._aio = aio_module
        self._clients: dict[str, Any] = {}
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

    def _get_client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            if self.protocol == "grpc":
                client = self._aio.InferenceServerClient(url, channel_args=grpc_channel_args())
            else:
                client = self._aio.InferenceServerClient(url, conn_timeout=self.timeout_s)
            self._clients[url] = client
        return client

    async def _drop_clients(self) -> None:
        clients, self._clients = [*self._retired, *self._clients.values()], {}
        self._retired = []
        for old in clients:
            try:
                await old.close()
            except Exception:  # closing a broken connection may raise; the client is dropped anyway
                pass

    def _retire(self, url: str, client: Any) -> None:
        """Stop using ``client`` (UNAVAILABLE on it) unless another call already replaced it."""
        if self._clients.get(url) is client:
            del self._clients[url]
            self._retired.append(client)

    async def _with_retries(self, send: Callable[[Any, float, str], Awaitable[Any]], attempts: CallAttempts) -> Any:
        """``await send(client, seconds left, host:port)`` on the replicas ``attempts`` picks, until one answers."""
        while True:
            step = attempts.next()  # raises when no replica answered within the budget
            if not isinstance(step, tuple):
                await asyncio.sleep(step)
                continue
            replica, probe = step
            client = self._get_client(replica.url)
            try:
                if probe and not attempts.probed(replica, await self._ready(client, attempts.left_s())):
                    continue
                left_s = attempts.left_s()
                answer = await asyncio.wait_for(send(client, left_s, replica.url), left_s)
            except Exception as raw:  # tritonclient's, aiohttp's and asyncio's errors: see remote_error
                attempts.failed(replica, raw)  # raises unless another attempt may answer
                if self.protocol == "grpc":
                    self._retire(replica.url, client)  # a new channel connects at once; the old one may be in its reconnect backoff
                continue
            attempts.answered(replica)
            return answer

    async def _ready(self, client: Any, left_s: float) -> bool:
        """Whether the server says it is ready (``/v2/health/ready``): the probe of a replica taken out."""
        left_s = min(left_s, READY_PROBE_TIMEOUT_S)
        if self.protocol == "grpc":
            return bool(await asyncio.wait_for(client.is_server_ready(client_timeout=left_s), left_s))
        return bool(await asyncio.wait_for(client.is_server_ready(headers=HTTP_HEADERS), left_s))

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
                    await self._drop_clients()  # no session left open when 'async with' fails to enter
                    raise
        return self

    async def _read_routes(self) -> Routes:
        async def send(client: Any, left_s: float, url: str) -> Any:
            try:
                if self.protocol == "grpc":
                    return (await client.get_model_config(self.model_name, as_json=True, client_timeout=left_s))["config"]
                return await client.get_model_config(self.model_name, headers=HTTP_HEADERS)
            except Exception as error:
                if not is_not_found(error):
                    raise
                raise unknown_model_error(self.model_name, f"{self.protocol}://{url}", await self._index(client)) from error

        return routes_from_config(await self._with_retries(send, self._config_attempts()), self.model_name)

    async def _index(self, client: Any) -> list[dict[str, Any]] | None:
        """The models the server has (see ``RemoteModule._index``), or None."""
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
        deadline_s = time.monotonic() + self.timeout_s
        # One CallAttempts per part: the parts travel concurrently, each on its own way through the replicas.
        results = await asyncio.gather(
            *(self._with_retries(self._sender(r), self._attempts(prepared.io.model_name, deadline_s)) for r in prepared.requests)
        )
        return routes.rebuild(prepared, [result.as_numpy for result in results])

    def _sender(self, request: TritonRequest) -> Callable[[Any, float, str], Awaitable[Any]]:
        module = self._module

        async def send(client: Any, left_s: float, url: str) -> Any:
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
        """Close the client connections."""
        await self._drop_clients()

    async def __aenter__(self) -> "AsyncRemoteModule":
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
