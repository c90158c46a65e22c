"""The replica set behind a multi-URL RemoteModule: round robin, take-out, back-off, probe and
put-back, giving up with every replica's last error; with a clock of the test's own, and real
refused connections where cheap (a port nothing listens on)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from tritonclient.utils import InferenceServerException

from aitune_triton import AsyncRemoteModule, RemoteModule
from aitune_triton.errors import InvalidArgumentError, RemoteConnectionClosedError, RemoteInferenceError, RemoteUnavailableError
from aitune_triton.triton.client_transport import RetryPolicy
from aitune_triton.triton.replicas import CallAttempts, ReplicaSet, parse_urls
from aitune_triton.triton.server import free_port


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _set(count: int = 3, retries: int = 4, clock: Clock | None = None) -> ReplicaSet:
    return ReplicaSet([f"h{i}:8001" for i in range(count)], RetryPolicy(retries, 0.25, 1.0), clock or Clock())


def _attempts(replicas: ReplicaSet, timeout_s: float = 60.0) -> CallAttempts:
    return CallAttempts(replicas, lambda url: f"m.graph_0 (grpc://{url})", "grpc", timeout_s, replicas.clock() + timeout_s)


def _unavailable() -> InferenceServerException:
    return InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")


def test_urls_are_parsed_and_bad_ones_refused_naming_the_argument():
    assert parse_urls("grpc://a:1") == ("a:1",)
    assert parse_urls(["http://a:1", "b:2"]) == ("a:1", "b:2")
    for bad in ([], "", [""], [1], None, ["a:1", "grpc://a:1"]):
        with pytest.raises(InvalidArgumentError, match=r"^url: "):
            parse_urls(bad)


@pytest.mark.parametrize("remote_class", [RemoteModule, AsyncRemoteModule])
def test_a_client_refuses_an_empty_url_list_before_connecting(remote_class):
    with pytest.raises(InvalidArgumentError, match=r"^url: expected 'host:port' .* a non-empty list of them .* got \[\]"):
        remote_class([], "any_model")


def test_calls_go_round_robin_over_the_replicas_in_service():
    replicas = _set(3)

    chosen = [replicas.choose(set()) for _ in range(6)]

    assert [(replica.url, probe) for replica, probe in chosen] == [(f"h{i % 3}:8001", False) for i in range(6)]


def test_a_failed_replica_is_skipped_until_its_back_off_ends_then_probed_and_put_back():
    clock = Clock()
    replicas = _set(2, clock=clock)
    first, second = replicas.replicas

    replicas.take_out(first, "refused")

    assert [replicas.choose(set())[0].url for _ in range(3)] == ["h1:8001"] * 3
    assert replicas.next_probe_s() == pytest.approx(0.25)
    clock.now_s += 0.25
    assert replicas.choose(set()) == (first, True)  # due: the next call probes it first
    assert replicas.choose(set()) == (second, False)  # the probe is claimed: no other call probes it too
    assert replicas.choose(set()) == (second, False)
    replicas.put_back(first)
    assert {replicas.choose(set())[0].url for _ in range(2)} == {"h0:8001", "h1:8001"}


def test_the_back_off_doubles_with_each_failure_in_a_row_up_to_its_maximum():
    clock = Clock()
    replicas = _set(1, clock=clock)
    (replica,) = replicas.replicas
    waits = []
    replicas.take_out(replica, "refused")
    for _ in range(4):
        waits.append(replicas.next_probe_s())
        clock.now_s += waits[-1]
        assert replicas.choose(set()) == (replica, True)
        replicas.take_out(replica, "refused again", probed=True)

    assert waits == [0.25, 0.5, 1.0, 1.0]
    assert replica.failures == 5 and replica.last_error == "refused again"


def test_a_late_failure_of_a_replica_another_call_took_out_does_not_lengthen_its_back_off():
    replicas = _set(2)
    first = replicas.replicas[0]

    replicas.take_out(first, "refused")
    replicas.take_out(first, "reset by the same crash")

    assert first.failures == 1 and first.last_error == "reset by the same crash"


def test_a_call_fails_over_to_the_next_replica_at_once_and_gives_up_naming_every_replica():
    replicas = _set(2, retries=1)
    attempts = _attempts(replicas)

    replica, probe = attempts.next()
    attempts.failed(replica, _unavailable())
    other, _ = attempts.next()
    attempts.failed(other, ConnectionResetError("reset"))  # closed mid-call: another replica may answer
    assert other is not replica and not probe
    wait_s = attempts.next()  # none in service: wait for the first back-off (a retry)
    assert wait_s == pytest.approx(0.25)
    replicas.clock.now_s += wait_s
    probed, probe = attempts.next()
    assert probed is replica and probe
    assert attempts.probed(probed, ready=False) is False
    assert attempts.next() == (other, True)  # due as well
    attempts.failed(other, ConnectionResetError("reset again"))

    with pytest.raises(RemoteUnavailableError) as raised:
        attempts.next()  # the one retry is spent

    message = str(raised.value)
    assert message.startswith("None of the 2 replicas answered within timeout_s=60 s (gave up after 4 attempts")
    assert "m.graph_0 (grpc://h0:8001): the server answers but is not ready" in message
    assert "m.graph_0 (grpc://h1:8001): the server closed the connection" in message
    assert replica.failures == other.failures == 2


def test_a_server_error_answer_is_raised_at_once_and_leaves_the_replica_in_service():
    replicas = _set(2)
    attempts = _attempts(replicas)
    replica, _ = attempts.next()

    with pytest.raises(RemoteInferenceError, match=r"^m.graph_0 \(grpc://h0:8001\): .*bad input") as raised:
        attempts.failed(replica, InferenceServerException("bad input", status="StatusCode.INVALID_ARGUMENT"))

    assert type(raised.value) is RemoteInferenceError and replica.in_service


def test_a_closed_connection_to_the_only_replica_is_raised_as_before():
    replicas = _set(1)
    attempts = _attempts(replicas)
    replica, _ = attempts.next()

    with pytest.raises(RemoteConnectionClosedError):
        attempts.failed(replica, ConnectionResetError("reset"))
    assert replica.in_service


def test_a_call_while_every_replica_is_out_waits_for_the_first_back_off_even_without_retries():
    replicas = _set(2, retries=0)
    for replica in replicas.replicas:
        replicas.take_out(replica, f"{replica.url} refused")
    attempts = _attempts(replicas, timeout_s=0.1)

    with pytest.raises(RemoteUnavailableError, match=r"None of the 2 replicas .* h0:8001 refused \| h1:8001 refused"):
        attempts.next()  # the back-off (0.25 s) ends after the deadline: given up without a request

    attempts = _attempts(replicas)
    assert attempts.next() == pytest.approx(0.25)  # within the deadline: one wait, not counted as a retry


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_remote_module_on_replicas_that_all_refuse_names_every_url_and_its_error(protocol):
    urls = [_closed_port(), _closed_port()]
    start = time.monotonic()

    with pytest.raises(RemoteUnavailableError) as raised:
        RemoteModule(urls, "any_model", protocol=protocol, timeout_s=10, retries=1, backoff_s=0.05, max_backoff_s=0.05)

    message = str(raised.value)
    assert message.startswith("None of the 2 replicas answered")
    for url in urls:
        assert f"{protocol}://{url}: cannot read the configuration of model 'any_model': the server cannot be reached" in message
    assert time.monotonic() - start < 5


def test_an_async_remote_module_on_replicas_that_all_refuse_names_every_url():
    urls = [_closed_port(), _closed_port()]

    async def connect() -> None:
        await AsyncRemoteModule(urls, "any_model", timeout_s=10, retries=1, backoff_s=0.05).connect()

    with pytest.raises(RemoteUnavailableError, match=rf"None of the 2 replicas answered.*grpc://{urls[0]}.*grpc://{urls[1]}"):
        asyncio.run(connect())


def test_a_refused_replica_is_skipped_for_one_that_accepts():
    listener = socket.socket()  # accepts but never answers: the call times out there, after the refused one
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    silent = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(RemoteInferenceError, match=rf"no answer within timeout_s=1 s") as raised:
            RemoteModule([_closed_port(), silent], "any_model", timeout_s=1)
        assert silent in str(raised.value)
    finally:
        listener.close()
