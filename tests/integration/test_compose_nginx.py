"""The compose target's load balancer for real: two embedded Triton servers on one small repository,
nginx (the binary the compose file runs, configured by the same generator) in front of them on free
local ports. HTTP and gRPC calls through nginx answer eager's result, reach both replicas, and keep
answering while and after one server is killed with SIGKILL (nginx's passive failover, no client retry)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import CENTERED_MODEL

from aitune_triton import RemoteModule
from aitune_triton.deployment.nginx import nginx_binary, nginx_config
from aitune_triton.triton.server import TritonServer

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed here (Debian: apt-get install nginx-light)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_nginx(config_path, runtime_dir, http_port: int) -> subprocess.Popen:
    """nginx in the foreground with its pid, temporary files and log under ``runtime_dir``; ready when it answers."""
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")  # workers as the current user
    process = subprocess.Popen(
        [nginx_binary(), "-p", str(runtime_dir), "-c", str(config_path), "-e", str(runtime_dir / "error.log"), "-g", directives],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited ({process.returncode}): {(runtime_dir / 'error.log').read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("nginx did not answer within 30 s")


def settled(read, done, timeout_s: float = 10.0):
    """``read()`` once ``done(value)`` holds, or its last value after ``timeout_s``: Triton updates its
    request counters when a request is released, which can come after the client got its answer."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def successes(server: TritonServer) -> float:
    """The server's count of successful inference requests of the centered model's graph model (Triton's
    metrics; its entry model does not count the requests it routes, and warmup requests count)."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and f'model="{CENTERED_MODEL}.graph_0"' in line
    )


def test_nginx_balances_http_and_grpc_over_two_servers_and_fails_over_when_one_is_killed(served, tmp_path):
    repository = tmp_path / "repository"
    for model in (CENTERED_MODEL, f"{CENTERED_MODEL}.graph_0"):
        shutil.copytree(served.repository / model, repository / model)
    eager = served.extra[CENTERED_MODEL][0]
    servers = [TritonServer(repository, log_path=tmp_path / f"server{i}.log", show_progress=False, timeout_s=180) for i in (1, 2)]
    runtime_dir = tmp_path / "nginx"
    runtime_dir.mkdir()
    http_port, grpc_port = free_port(), free_port()
    nginx = None
    try:
        for server in servers:
            server.start()
        config = nginx_config(
            [server.http_url for server in servers],
            [server.grpc_url for server in servers],
            http_port=http_port, grpc_port=grpc_port, listen_address="127.0.0.1",
            runtime_dir=str(runtime_dir), error_log=str(runtime_dir / "error.log"), fail_timeout_s=30,
        )
        (runtime_dir / "nginx.conf").write_text(config)
        nginx = start_nginx(runtime_dir / "nginx.conf", runtime_dir, http_port)
        remotes = [
            RemoteModule(f"127.0.0.1:{http_port}", CENTERED_MODEL, protocol="http", retries=0, timeout_s=60),
            RemoteModule(f"127.0.0.1:{grpc_port}", CENTERED_MODEL, protocol="grpc", retries=0, timeout_s=60),
        ]
        generator = torch.Generator().manual_seed(3)
        inputs = [torch.randn(batch, 3, generator=generator) for batch in (2, 3, 4, 2, 3, 4)]

        def call(remote: RemoteModule, x: torch.Tensor) -> None:
            torch.testing.assert_close(remote(x), eager(x), atol=1e-5, rtol=0)

        at_start = [successes(server) for server in servers]
        for remote in remotes:
            for x in inputs:
                call(remote, x)
        served_counts = settled(lambda: [successes(server) - start for server, start in zip(servers, at_start)],
                                lambda counts: sum(counts) >= 2 * len(inputs))
        assert sum(served_counts) == 2 * len(inputs) and min(served_counts) > 0, served_counts  # both replicas served

        # Kill the first server while calls are in flight, then call again: nginx passes each request that
        # meets the dead replica (connection refused or reset) to the live one.
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(call, remotes[i % 2], inputs[i % len(inputs)]) for i in range(40)]
            time.sleep(0.05)
            assert servers[0]._process is not None
            os.kill(servers[0]._process.pid, signal.SIGKILL)
            for future in futures:
                future.result()
        time.sleep(0.5)  # the in-flight calls' counts land before the baseline is read
        before = successes(servers[1])
        for remote in remotes:
            for x in inputs:
                call(remote, x)
        after = settled(lambda: successes(servers[1]), lambda count: count >= before + 2 * len(inputs))
        assert after >= before + 2 * len(inputs)  # every call after the kill went to the live one
        log = (runtime_dir / "error.log").read_text()
        assert "while connecting to upstream" in log or "upstream prematurely closed" in log, log  # failover happened
        for remote in remotes:
            remote.close()
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        for server in servers:
            server.stop()
