"""What RemoteModule and AsyncRemoteModule share about the wire: URLs, tritonclient clients,
error classification, retries, and tensors to/from the arrays tritonclient sends."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aitune_triton.errors import (
    InvalidArgumentError,
    RemoteConnectionClosedError,
    RemoteInferenceError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)

__all__ = ["RetryPolicy", "grpc_channel_args", "remote_error", "strip_scheme", "torch_tensor", "wire_array"]

#: Sent with every HTTP request: the server closes the connection after answering, so no idle
#: keep-alive connection of an open client holds a stopping server (tritonserver waits up to its
#: exit timeout, 30 s, for open HTTP connections; about 3 s without one, measured here).
HTTP_HEADERS = {"Connection": "close"}


def strip_scheme(url: str) -> str:
    """``url`` without a ``http://``, ``https://`` or ``grpc://`` prefix (tritonclient wants ``host:port``)."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url


def grpc_channel_args() -> list[tuple[str, Any]]:
    """Channel arguments of each gRPC client: tritonclient's defaults plus a subchannel pool of
    the channel's own. gRPC otherwise shares subchannels (and their reconnect backoff, up to
    minutes) across every channel to the same address in the process, so a client created after
    a server restart kept failing with UNAVAILABLE while the server was ready."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried when the server cannot be reached.

    Only :class:`~aitune_triton.errors.RemoteUnavailableError` (connection refused, gRPC
    ``UNAVAILABLE``: the request never reached a model) is retried; inference is idempotent.
    Attempt ``n`` (from 0) waits ``min(backoff_s * 2**n, max_backoff_s)`` seconds first, and
    never past the call's ``timeout_s``.

    Attributes:
        retries: Retries after the first attempt (0: none).
        backoff_s: Wait before the first retry, in seconds.
        max_backoff_s: Longest wait between two attempts, in seconds.
    """

    retries: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InvalidArgumentError(f"retries: expected an int >= 0 (retries after the first attempt), got {self.retries!r}")
        for name in ("backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidArgumentError(f"{name}: expected a number of seconds >= 0, got {value!r}")

    def wait_s(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` as a positive float, or an :class:`InvalidArgumentError` naming it."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0 or not math.isfinite(timeout_s):
        raise InvalidArgumentError(f"timeout_s: expected a number of seconds > 0 (the longest a call may take), got {timeout_s!r}")
    return float(timeout_s)


def remote_error(error: BaseException, where: str, timeout_s: float) -> RemoteInferenceError:
    """The library error for a failed request, named for its cause where the transport tells it.

    gRPC failures carry a status code (``StatusCode.DEADLINE_EXCEEDED``, ``StatusCode.UNAVAILABLE``);
    the HTTP clients raise socket errors (``TimeoutError``, ``ConnectionRefusedError``, aiohttp's
    ``ClientConnectorError``...) and geventhttpclient's ``HTTPConnectionClosed`` (an
    ``http.client.HTTPException``) as they are. Anything else (the server's own error answer, say)
    is a plain :class:`RemoteInferenceError`.
    """
    import http.client

    from tritonclient.utils import InferenceServerException

    if isinstance(error, RemoteInferenceError):
        return error
    status = str(error.status() or "") if isinstance(error, InferenceServerException) else ""
    detail = f"{type(error).__name__}: {error}" if not isinstance(error, InferenceServerException) else str(error)
    closed: tuple[type, ...] = (http.client.HTTPException, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
    try:
        import aiohttp

        closed += (aiohttp.ServerDisconnectedError,)
        refused: tuple[type, ...] = (OSError, aiohttp.ClientConnectorError)
    except ImportError:  # only the async HTTP client needs aiohttp
        refused = (OSError,)
    if status == "StatusCode.DEADLINE_EXCEEDED" or isinstance(error, TimeoutError):
        return RemoteTimeoutError(
            f"{where}: no answer within timeout_s={timeout_s:g} s ({detail}). Pass a larger timeout_s to RemoteModule "
            "or check that the server is not overloaded."
        )
    if isinstance(error, closed):
        return RemoteConnectionClosedError(
            f"{where}: the server closed the connection before answering ({detail}). It may have stopped or crashed; "
            "check that it is running (its health endpoint) and retry."
        )
    if status == "StatusCode.UNAVAILABLE" or isinstance(error, refused):
        return RemoteUnavailableError(
            f"{where}: the server cannot be reached ({detail}). Check that it is running and that the URL and "
            "protocol (grpc or http port) are right."
        )
    return RemoteInferenceError(f"{where}: {detail}")


def given_up(error: RemoteInferenceError, attempts: int, elapsed_s: float) -> RemoteInferenceError:
    """``error`` (the last attempt's) with how many attempts were made, when there were retries."""
    if attempts <= 1:
        return error
    return type(error)(f"{error} Gave up after {attempts} attempts in {elapsed_s:.1f} s (retries=, timeout_s= set the budget).")


def is_not_found(error: BaseException) -> bool:
    """Whether a tritonclient error says the server has no such model."""
    from tritonclient.utils import InferenceServerException

    if not isinstance(error, InferenceServerException):
        return False
    text = f"{error.status()} {error.message()}".lower()
    return "not found" in text or "unknown model" in text or "not_found" in text


def unknown_model_error(model_name: str, where: str, index: list[dict[str, Any]] | None) -> RemoteInferenceError:
    """The error for a model name the server does not know, listing the models it has."""
    if index is None:
        have = "(the repository index could not be read)"
    else:
        names = sorted({entry.get("name", "") for entry in index if entry.get("name")})
        ready = {entry.get("name") for entry in index if str(entry.get("state", "")).upper() == "READY"}
        # A graph model "module.graph_0" is listed under its module: callers pass the module's name.
        steps = {name for name in names if "." in name and name.rsplit(".", 1)[0] in names}
        have = ", ".join(f"{name}{'' if name in ready else ' (not ready)'}" for name in names if name not in steps) or "none"
    return RemoteInferenceError(
        f"{where}: the server has no model {model_name!r}. Models on the server: {have}. Pass the exported "
        "module's name (the entry model, what export printed)."
    )


def wire_array(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as the numpy array tritonclient sends: bfloat16 as ``ml_dtypes.bfloat16`` (the
    dtype tritonclient maps to "BF16"; numpy has none), the same 16-bit values, no rounding."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return np.ascontiguousarray(tensor.numpy())


def torch_tensor(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A received array as a torch tensor; a "BF16" output (``ml_dtypes.bfloat16``) back to ``torch.bfloat16``."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)
