"""RemoteModule raises library errors named for the cause when the transport fails, over HTTP and gRPC.

Never a bare tritonclient, socket or geventhttpclient exception: a stopped server, a port nothing
listens on, a socket that accepts and never answers, one that hangs up without an answer.
"""

from __future__ import annotations

import shutil
import socket
import threading

import pytest
import torch
from conftest import CENTERED_MODEL

from aitune_triton import RemoteModule
from aitune_triton.errors import (
    RemoteConnectionClosedError,
    RemoteInferenceError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from aitune_triton.triton.server import TritonServer, free_port

pytestmark = pytest.mark.triton


def _url(server: TritonServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_call_after_the_server_stopped_raises_remote_unavailable_error(served, tmp_path, protocol):
    repository = tmp_path / "repository"  # a server of its own (this one is stopped), serving one small module
    for model in (CENTERED_MODEL, f"{CENTERED_MODEL}.graph_0"):
        shutil.copytree(served.repository / model, repository / model)
    server = TritonServer(repository, log_path=tmp_path / "server.log", show_progress=False, timeout_s=180)
    server.start()
    try:
        remote = RemoteModule(_url(server, protocol), CENTERED_MODEL, protocol=protocol, timeout_s=20)
        x = torch.randn(4, 3)
        torch.testing.assert_close(remote(x), served.extra[CENTERED_MODEL][0](x), atol=1e-5, rtol=0)
    finally:
        server.stop()

    with pytest.raises(RemoteUnavailableError) as raised:
        remote(x)

    assert isinstance(raised.value, RemoteInferenceError) and isinstance(raised.value, ConnectionError)
    assert f"{CENTERED_MODEL}.graph_0 ({protocol}://{_url(server, protocol)})" in str(raised.value)
    assert "check that it is running" in str(raised.value).lower()
    remote.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_remote_module_on_a_port_nothing_listens_on_raises_remote_unavailable_error(protocol):
    with pytest.raises(RemoteUnavailableError, match="the server cannot be reached"):
        RemoteModule(f"127.0.0.1:{free_port()}", "any_model", protocol=protocol, timeout_s=5)


def _socket_server(answer_by_closing: bool):
    """``host:port`` of a plain socket server on 127.0.0.1 that never answers a request: it keeps
    each connection open, or reads what arrives and closes the connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection = listener.accept()[0]
            except OSError:
                continue
            if answer_by_closing:
                connection.settimeout(1)
                try:
                    connection.recv(65536)
                except OSError:
                    pass
                connection.close()
            else:
                accepted.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.fixture
def silent_server():
    """A socket that accepts connections and never answers."""
    yield from _socket_server(answer_by_closing=False)


@pytest.fixture
def closing_server():
    """A socket that reads each request and closes the connection without an answer."""
    yield from _socket_server(answer_by_closing=True)


@pytest.mark.parametrize("protocol, error", [("http", RemoteConnectionClosedError), ("grpc", RemoteUnavailableError)])
def test_a_server_closing_the_connection_without_an_answer_raises_a_library_error(served, closing_server, protocol, error):
    remote = RemoteModule(_url(served.server, protocol), served.entry_model, protocol=protocol, timeout_s=5)
    remote.close()
    remote.url = closing_server  # the same routes, now behind a socket that hangs up

    with pytest.raises(error, match=f"{served.graph_models[1]} "):
        remote(torch.randn(2, 8))
    remote.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_never_answers_raises_remote_timeout_error_after_timeout_s(silent_server, protocol):
    with pytest.raises(RemoteTimeoutError, match=r"no answer within timeout_s=1 s") as raised:
        RemoteModule(silent_server, "any_model", protocol=protocol, timeout_s=1)

    assert isinstance(raised.value, TimeoutError)
    assert "cannot read the configuration of model" in str(raised.value)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_call_to_a_server_that_stopped_answering_raises_remote_timeout_error(served, silent_server, protocol):
    remote = RemoteModule(_url(served.server, protocol), served.entry_model, protocol=protocol, timeout_s=1)
    remote.close()
    remote.url = silent_server  # the same routes, now behind a socket that never answers

    with pytest.raises(RemoteTimeoutError, match=f"{served.graph_models[1]} .*no answer within timeout_s=1 s"):
        remote(torch.randn(2, 8))
    remote.close()
