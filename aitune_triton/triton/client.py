"""RemoteModule: call a served module with the original module's arguments, get the same outputs."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import torch

from aitune_triton._warnings import warn
from aitune_triton.contract import INDEX_HINT
from aitune_triton.errors import (
    ArgumentTypeError,
    GraphSpecMismatchError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    OutputStructureError,
    RemoteConnectionClosedError,
    RemoteInferenceError,
    RemoteTimeoutError,
    RemoteUnavailableError,
    UnknownOutputTypeError,
)
from aitune_triton.spec import (
    ForwardSignature,
    flat_output,
    flatten_call,
    rebuild_output,
    treespec_from_json,
)
from aitune_triton.triton.config import ROUTES_PARAMETER
from aitune_triton.triton.io import ModelIO

__all__ = ["RemoteModule"]


def _strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def _remote_error(error: Exception, where: str, timeout_s: float) -> RemoteInferenceError:
    """The library error for a failed request, named for its cause where the transport tells it.

    gRPC failures carry a status code (``StatusCode.DEADLINE_EXCEEDED``, ``StatusCode.UNAVAILABLE``);
    the HTTP client raises socket errors (``TimeoutError``, ``ConnectionRefusedError``...) and
    geventhttpclient's ``HTTPConnectionClosed`` (an ``http.client.HTTPException``) as they are.
    Anything else (the server's own error answer, say) is a plain :class:`RemoteInferenceError`.
    """
    import http.client

    from tritonclient.utils import InferenceServerException

    status = str(error.status() or "") if isinstance(error, InferenceServerException) else ""
    detail = f"{type(error).__name__}: {error}" if not isinstance(error, InferenceServerException) else str(error)
    if status == "StatusCode.DEADLINE_EXCEEDED" or isinstance(error, TimeoutError):
        return RemoteTimeoutError(
            f"{where}: no answer within timeout_s={timeout_s:g} s ({detail}). Pass a larger timeout_s to RemoteModule "
            "or check that the server is not overloaded."
        )
    if isinstance(error, (http.client.HTTPException, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return RemoteConnectionClosedError(
            f"{where}: the server closed the connection before answering ({detail}). It may have stopped or crashed; "
            "check that it is running (its health endpoint) and retry."
        )
    if status == "StatusCode.UNAVAILABLE" or isinstance(error, OSError):
        return RemoteUnavailableError(
            f"{where}: the server cannot be reached ({detail}). Check that it is running and that the URL and "
            "protocol (grpc or http port) are right."
        )
    return RemoteInferenceError(f"{where}: {detail}")


def _wire_array(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as the numpy array tritonclient sends: bfloat16 as ``ml_dtypes.bfloat16`` (the
    dtype tritonclient maps to "BF16"; numpy has none), the same 16-bit values, no rounding."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return np.ascontiguousarray(tensor.numpy())


def _torch_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A received array as a torch tensor; a "BF16" output (``ml_dtypes.bfloat16``) back to ``torch.bfloat16``."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


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

    A RemoteModule may be called from several threads at once: each thread gets its own
    tritonclient client (the HTTP client is built on gevent and cannot be shared across threads).

    Args:
        url: ``host:port`` of the server's gRPC or HTTP endpoint (a ``grpc://``/``http://`` prefix
            is accepted).
        model_name: The entry model name (the exported module's name).
        protocol: ``"grpc"`` or ``"http"``.
        timeout_s: Network timeout per request, in seconds.
        output_structure: ``"module"`` (default) returns the module's own output structure; when
            a container type it names cannot be found or rebuilt here (its package is not
            installed, say), that graph spec's outputs come back as with ``"flat"``, with one warning. ``"flat"`` always
            returns a plain dict ``{leaf path: tensor or constant}`` in flattening order
            (``{"logits": ..., "cache.0": ...}``), without importing anything.

    Raises:
        InvalidArgumentError: (a ValueError) ``protocol`` is neither ``"grpc"`` nor ``"http"``, or
            ``output_structure`` is neither ``"module"`` nor ``"flat"``.
        RemoteInferenceError: (a RuntimeError) ``model_name`` is not an entry model exported by
            aitune_triton, or the server answered with an error; the subclasses
            :class:`~aitune_triton.errors.RemoteUnavailableError` (nothing answers at ``url``),
            :class:`~aitune_triton.errors.RemoteTimeoutError` (no answer within ``timeout_s``) and
            :class:`~aitune_triton.errors.RemoteConnectionClosedError` (the server closed the
            connection) name transport failures.
    """

    def __init__(
        self, url: str, model_name: str, protocol: str = "grpc", timeout_s: float = 60.0, output_structure: str = "module"
    ):
        if protocol not in ("grpc", "http"):
            raise InvalidArgumentError(f"protocol: expected 'grpc' or 'http', got {protocol!r}")
        if output_structure not in ("module", "flat"):
            raise InvalidArgumentError(
                f"output_structure: expected 'module' (the module's own output containers) or 'flat' (a dict keyed "
                f"by leaf path), got {output_structure!r}"
            )
        self.output_structure = output_structure
        self.url = _strip_scheme(url)
        self.model_name = model_name
        self.protocol = protocol
        self.timeout_s = timeout_s
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        routes = self._read_routes()
        self.signature = ForwardSignature.from_dict(routes["signature"])
        self.strict = routes.get("strict", True)
        self.graphs = [ModelIO.from_dict(graph) for graph in routes["graphs"]]
        self._by_key = {io.key: io for io in self.graphs}
        self._treespecs: dict[str, Any] = {}

    @property
    def _client(self) -> Any:
        """This thread's tritonclient client (created on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(self.url)
            else:
                client = self._module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _read_routes(self) -> dict[str, Any]:
        try:
            if self.protocol == "grpc":
                config = self._client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout_s)["config"]
            else:
                config = self._client.get_model_config(self.model_name)
        except Exception as error:  # tritonclient's, socket and geventhttpclient errors: see _remote_error
            raise _remote_error(
                error, f"{self.protocol}://{self.url}: cannot read the configuration of model {self.model_name!r}", self.timeout_s
            ) from error
        parameter = config.get("parameters", {}).get(ROUTES_PARAMETER)
        if parameter is None:
            raise RemoteInferenceError(
                f"model {self.model_name!r} has no {ROUTES_PARAMETER!r} parameter: it is not an entry model exported "
                "by aitune_triton. Pass the module's name, not a graph model's."
            )
        return json.loads(parameter["string_value"])

    def _treespec(self, io: ModelIO) -> Any:
        """The graph spec's output structure, or None when its outputs come back flat."""
        if io.graph not in self._treespecs:
            treespec = None
            if self.output_structure == "module":
                try:
                    treespec = treespec_from_json(io.output_treespec)
                except UnknownOutputTypeError as error:
                    self._fall_back(io, str(error))
            self._treespecs[io.graph] = treespec
        return self._treespecs[io.graph]

    def _fall_back(self, io: ModelIO, reason: str) -> None:
        """Return ``io``'s outputs flat from now on, with one warning that says why."""
        warn(
            f"RemoteModule {self.model_name!r} {io.graph}: {reason} Its outputs are returned as a dict {{leaf path: "
            "tensor} instead (pass output_structure='flat' to ask for that and silence this)."
        )
        self._treespecs[io.graph] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the served module on the call's tensors.

        Returns:
            The module's output structure with CPU tensors in place of its output tensors (a dict
            ``{leaf path: value}`` with ``output_structure="flat"``, see the class).

        Raises:
            TypeError: the arguments do not fit the module's forward signature, or a numpy array
                is passed where the module takes a tensor (``ArgumentTypeError``).
            GraphSpecMismatchError: the call matches none of the exported graph specs, its shapes
                are outside the exported ranges (a batch above max_batch_size, say), or (non-strict
                modules) it passes other constant arguments than the artifact was built with.
            IndexOutOfRangeError: (an IndexError, as eager raises) an index-valued input (token
                ids, say) holds a value outside the range its indexing op accepts; nothing is sent.
            RemoteInferenceError: the server answered with an error (a bad request, a failed model).
            RemoteUnavailableError: (a RemoteInferenceError) the server cannot be reached (stopped,
                wrong port).
            RemoteTimeoutError: (a RemoteInferenceError) no answer within ``timeout_s``.
            RemoteConnectionClosedError: (a RemoteInferenceError) the server closed the connection
                before answering.
        """
        call = flatten_call(self.signature, args, kwargs, self.strict)
        if any(isinstance(leaf, np.ndarray) for leaf in call.flat.leaves):
            raise ArgumentTypeError("RemoteModule: pass torch tensors, as to the module itself; got a numpy array.")
        io = self._by_key.get(call.key)
        if io is None:
            known = "\n".join(f"  {g.graph}: {g.description}" for g in self.graphs)
            raise GraphSpecMismatchError(
                f"{self.model_name}: the call ({call.describe()}) matches no exported graph spec. Exported graph specs:\n{known}"
            )
        if call.flat.constants != io.constants:  # non-strict modules only: strict keys include constants
            raise GraphSpecMismatchError(
                f"{io.model_name}: the call passes constant arguments {call.flat.constants}, but the served artifact was "
                f"built with {io.constants} and a served model cannot run the module eagerly. Record such calls with "
                "strict=True (the default) so that they get their own graph spec."
            )
        self._check_shapes(io, call.flat.tensors)
        inputs = []
        for tensor_io, tensor in zip(io.inputs, call.flat.tensors):
            array = _wire_array(tensor)
            array = array.reshape(io.wire_shape(tensor_io, array.shape))
            # A graph model served by a Triton backend of its own names tensors as its artifact does.
            name = io.served_names.get(tensor_io.name, tensor_io.name)
            infer_input = self._module.InferInput(name, list(array.shape), tensor_io.client_datatype)
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        outputs = [self._module.InferRequestedOutput(io.served_names.get(t.name, t.name)) for t in io.outputs]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(
                    io.model_name, inputs, model_version=str(io.version), outputs=outputs, client_timeout=self.timeout_s
                )
            else:
                result = self._client.infer(io.model_name, inputs, model_version=str(io.version), outputs=outputs)
        except Exception as error:  # tritonclient's, socket and geventhttpclient errors: see _remote_error
            raise _remote_error(error, f"{io.model_name} ({self.protocol}://{self.url})", self.timeout_s) from error
        tensors = []
        for tensor_io in io.outputs:
            array = np.array(result.as_numpy(io.served_names.get(tensor_io.name, tensor_io.name)), copy=True)
            if tensor_io.carried_as_column:  # the trailing axis of size 1 exists on the wire only
                array = array.reshape(array.shape[:-1])
            tensors.append(_torch_tensor(array, tensor_io.dtype))
        treespec = self._treespec(io)
        if treespec is not None:
            try:
                return rebuild_output(treespec, io.output_template, tensors)
            except OutputStructureError:
                raise
            except Exception as error:  # the container type's own unflatten failed (another package version, say)
                self._fall_back(io, f"Cannot rebuild the module's output structure here ({type(error).__name__}: {error}).")
        paths = io.output_paths  # ModelIO.from_dict derives them for descriptions written without them
        return flat_output(paths, io.output_template, tensors)

    @staticmethod
    def _check_shapes(io: ModelIO, tensors: list[torch.Tensor]) -> None:
        """Refuse a call that breaks the artifact's input contract before it travels, with a hint."""
        violations = io.contract.shape_violations([tuple(t.shape) for t in tensors])
        if violations:
            batch = f" (max_batch_size {io.max_batch_size})" if io.max_batch_size else ""
            raise GraphSpecMismatchError(
                f"{io.model_name}: the call does not fit the exported shapes{batch}: {'; '.join(violations)}. Split "
                "the call, or record calls of this size (or declare DynamicDim/BatchDim ranges), tune and export again."
            )
        bad_values = io.contract.value_violations(tensors)
        if bad_values:
            raise IndexOutOfRangeError(f"{io.model_name}: {'; '.join(bad_values)}.{INDEX_HINT}")

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
