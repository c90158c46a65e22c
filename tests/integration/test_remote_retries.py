"""RemoteModule across a server's death and restart: retries within the budget, a new gRPC channel
per retry (so it answers once the restarted server is ready), and no HTTP connection left open
that holds a stopping server. One small server of its own, started twice on the same ports."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest
import torch
from conftest import CENTERED_MODEL

from aitune_triton import RemoteModule
from aitune_triton.errors import RemoteUnavailableError
from aitune_triton.triton.client_transport import RetryPolicy
from aitune_triton.triton.server import TritonServer

pytestmark = pytest.mark.triton


def test_a_remote_module_answers_after_a_killed_server_restarts_and_gives_up_clearly_when_none_does(served, tmp_path):
    repository = tmp_path / "repository"
    for model in (CENTERED_MODEL, f"{CENTERED_MODEL}.graph_0"):
        shutil.copytree(served.repository / model, repository / model)
    eager = served.extra[CENTERED_MODEL][0]
    x = torch.randn(4, 3)
    expected = eager(x)
    first = TritonServer(repository, log_path=tmp_path / "first.log", show_progress=False, timeout_s=180)
    first.start()
    ports = {"http_port": first.http_port, "grpc_port": first.grpc_port, "metrics_port": first.metrics_port}
    second = TritonServer(repository, log_path=tmp_path / "second.log", show_progress=False, timeout_s=180, **ports)
    grpc_remote = http_remote = None
    try:
        grpc_remote = RemoteModule(first.grpc_url, CENTERED_MODEL, timeout_s=180, retries=1000, max_backoff_s=0.5)
        http_remote = RemoteModule(first.http_url, CENTERED_MODEL, protocol="http")  # left open on purpose
        torch.testing.assert_close(grpc_remote(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(http_remote(x), expected, atol=1e-5, rtol=0)
        assert first._process is not None
        os.kill(first._process.pid, signal.SIGKILL)
        ready = threading.Event()

        def restart() -> None:
            first.stop()  # reaps the killed server and ends its stubs
            second.start()
            ready.set()

        restarting = threading.Thread(target=restart)
        restarting.start()
        answer = grpc_remote(x)  # UNAVAILABLE until the second server is ready, then retried on a new channel
        restarting.join()

        assert ready.is_set()
        torch.testing.assert_close(answer, expected, atol=1e-5, rtol=0)
        with RemoteModule(second.grpc_url, CENTERED_MODEL, retries=0) as created_after:  # no shared reconnect backoff
            torch.testing.assert_close(created_after(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(http_remote(x), expected, atol=1e-5, rtol=0)

        stopping = time.monotonic()
        second.stop()  # http_remote is still open: it must not hold the server for Triton's 30 s exit timeout
        assert time.monotonic() - stopping < 20

        grpc_remote.retry = RetryPolicy(retries=2, backoff_s=0.1, max_backoff_s=0.2)
        with pytest.raises(RemoteUnavailableError, match=r"the server cannot be reached .* Gave up after 3 attempts"):
            grpc_remote(x)
        grpc_remote.timeout_s, grpc_remote.retry = 2.0, RetryPolicy(retries=1000, backoff_s=0.1, max_backoff_s=0.2)
        calling = time.monotonic()
        with pytest.raises(RemoteUnavailableError, match="Gave up after"):
            grpc_remote(x)
        assert time.monotonic() - calling < 2.0 + 1.0
    finally:
        first.stop()
        second.stop()
        for remote in (http_remote, grpc_remote):
            if remote is not None:
                remote.close()
