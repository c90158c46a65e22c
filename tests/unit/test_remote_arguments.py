"""RemoteModule and AsyncRemoteModule refuse bad arguments before they connect, naming the argument."""

from __future__ import annotations

import pytest

from aitune_triton import AsyncRemoteModule, RemoteModule
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.triton.client_transport import RetryPolicy


@pytest.mark.parametrize("remote_class", [RemoteModule, AsyncRemoteModule])
@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"protocol": "tcp"}, r"^protocol: expected 'grpc' or 'http', got 'tcp'"),
        ({"output_structure": "tree"}, r"^output_structure: expected 'module' .* got 'tree'"),
        ({"timeout_s": 0}, r"^timeout_s: expected a number of seconds > 0 .* got 0"),
        ({"timeout_s": float("inf")}, r"^timeout_s: .* got inf"),
        ({"retries": -1}, r"^retries: expected an int >= 0 .* got -1"),
        ({"retries": 1.5}, r"^retries: expected an int >= 0 .* got 1.5"),
        ({"backoff_s": -0.1}, r"^backoff_s: expected a number of seconds >= 0, got -0.1"),
        ({"max_backoff_s": "1"}, r"^max_backoff_s: expected a number of seconds >= 0, got '1'"),
    ],
)
def test_a_bad_argument_is_refused_before_connecting(remote_class, arguments, message):
    # Port 9 (discard) has no Triton: an argument error must come before any connection attempt.
    with pytest.raises(InvalidArgumentError, match=message):
        remote_class("127.0.0.1:9", "any_model", **arguments)


def test_the_retry_backoff_doubles_up_to_its_maximum():
    policy = RetryPolicy(retries=5, backoff_s=0.25, max_backoff_s=1.0)

    assert [policy.wait_s(attempt) for attempt in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
