"""A multi-URL RemoteModule over two real servers, one killed with SIGKILL under load: every call is
answered with eager's result, over gRPC and HTTP at once, and calls went to both servers first; the
async client answers with one replica dead, and the killed replica, restarted, is put back.

The two replicas are the session's server and one small server of this test's own serving a copy
of the same exported module (one server start, not two: the session's server cannot be killed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time

import pytest
import torch
from conftest import CENTERED_MODEL

from aitune_triton import AsyncRemoteModule, RemoteModule
from aitune_triton.triton.server import TritonServer

pytestmark = pytest.mark.triton

GRAPH_MODEL = f"{CENTERED_MODEL}.graph_0"


def _successes(server: TritonServer) -> int:
    """How many requests ``server``'s graph model answered (its inference statistics)."""
    import tritonclient.grpc as grpc_client

    with grpc_client.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(GRAPH_MODEL, as_json=True)
    return sum(int(entry["inference_stats"]["success"].get("count", 0)) for entry in stats["model_stats"])


def test_calls_spread_over_two_replicas_and_all_are_answered_when_one_is_killed_mid_load(served, tmp_path):
    repository = tmp_path / "repository"
    for model in (CENTERED_MODEL, GRAPH_MODEL):
        shutil.copytree(served.repository / model, repository / model)
    eager = served.extra[CENTERED_MODEL][0]
    survivor = served.server
    doomed = TritonServer(repository, log_path=tmp_path / "doomed.log", show_progress=False, timeout_s=180)
    doomed.start()
    remotes: list[RemoteModule] = []
    reborn = None
    try:
        for protocol in ("grpc", "http"):
            urls = [getattr(server, f"{protocol}_url") for server in (survivor, doomed)]
            remotes.append(RemoteModule(urls, CENTERED_MODEL, protocol=protocol, timeout_s=60))
        before = {"survivor": _successes(survivor), "doomed": _successes(doomed)}  # a start's warmup requests count too
        # 4 gRPC threads x 50 calls and 2 HTTP threads x 30; each pauses halfway until the kill, so
        # that the kill lands with both loads running and half of each still to come.
        plan = [("grpc", 50)] * 4 + [("http", 30)] * 2
        answered = {"grpc": 0, "http": 0}
        lock = threading.Lock()
        killed = threading.Event()
        results: list[tuple[torch.Tensor, torch.Tensor]] = []
        errors: list[BaseException] = []
        served_before_kill: dict[str, int] = {}

        def load(thread: int, protocol: str, calls: int) -> None:
            remote = remotes[0 if protocol == "grpc" else 1]
            generator = torch.Generator().manual_seed(thread)
            try:
                for index in range(calls):
                    if index == calls // 2:
                        killed.wait(timeout=60)
                    x = torch.randn(2 + index % 3, 3, generator=generator)
                    answer = remote(x)
                    with lock:
                        results.append((x, answer))
                        answered[protocol] += 1
            except BaseException as error:  # reported below with the call that failed
                errors.append(error)

        def kill() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (answered["grpc"] >= 40 and answered["http"] >= 10):
                time.sleep(0.005)
            served_before_kill["doomed"] = _successes(doomed) - before["doomed"]
            served_before_kill["survivor"] = _successes(survivor) - before["survivor"]
            assert doomed._process is not None
            os.kill(doomed._process.pid, signal.SIGKILL)
            killed.set()

        threads = [threading.Thread(target=load, args=(i, protocol, calls)) for i, (protocol, calls) in enumerate(plan)]
        threads.append(threading.Thread(target=kill))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)

        assert not errors, errors
        assert killed.is_set()
        assert len(results) == sum(calls for _, calls in plan)
        for x, answer in results:
            torch.testing.assert_close(answer, eager(x), atol=1e-5, rtol=0)
        assert served_before_kill["doomed"] > 0 and served_before_kill["survivor"] > 0
        assert _successes(survivor) - before["survivor"] > served_before_kill["survivor"]  # it took over the rest
        assert doomed.is_running() is False

        # The async client over the same two URLs, one dead: every gathered call answered.
        async def gathered() -> list[torch.Tensor]:
            async with AsyncRemoteModule([doomed.grpc_url, survivor.grpc_url], CENTERED_MODEL, timeout_s=60) as remote:
                return await asyncio.gather(*(remote(x) for x, _ in results[:12]))

        for (x, _), answer in zip(results[:12], asyncio.run(gathered())):
            torch.testing.assert_close(answer, eager(x), atol=1e-5, rtol=0)

        # Restarted on the same ports, the replica is probed after its back-off and put back.
        doomed.stop()
        ports = {"http_port": doomed.http_port, "grpc_port": doomed.grpc_port, "metrics_port": doomed.metrics_port}
        reborn = TritonServer(repository, log_path=tmp_path / "reborn.log", show_progress=False, timeout_s=180, **ports)
        reborn.start()
        warmup = _successes(reborn)
        deadline = time.monotonic() + 30
        while _successes(reborn) == warmup and time.monotonic() < deadline:
            x, expected = results[0][0], eager(results[0][0])
            torch.testing.assert_close(remotes[0](x), expected, atol=1e-5, rtol=0)
            time.sleep(0.1)
        assert _successes(reborn) > warmup
        assert all(replica.in_service for replica in remotes[0]._replicas.replicas)
    finally:
        for remote in remotes:
            remote.close()
        doomed.stop()
        if reborn is not None:
            reborn.stop()
