"""RemoteModule and AsyncRemoteModule as a new user meets them: concurrent asyncio calls, a wrong
model name, a call that matches no graph spec. All against the session's served modules."""

from __future__ import annotations

import asyncio

import pytest
import torch
from conftest import SCALED_MODEL

from aitune_triton import AsyncRemoteModule, RemoteModule
from aitune_triton.errors import GraphSpecMismatchError, RemoteInferenceError

pytestmark = pytest.mark.triton


def _url(served, protocol: str) -> str:
    return served.server.grpc_url if protocol == "grpc" else served.server.http_url


def _calls() -> list[tuple[torch.Tensor, ...]]:
    """Both graph specs, recorded and unrecorded batch sizes, and one batch above max_batch_size (5)."""
    generator = torch.Generator().manual_seed(21)
    calls: list[tuple[torch.Tensor, ...]] = []
    for batch, with_y in ((1, True), (2, False), (4, True), (5, False), (7, True), (3, False)):
        x = torch.randn(batch, 8, generator=generator)
        calls.append((x, torch.randn(batch, 4, generator=generator)) if with_y else (x,))
    return calls


def _assert_equal_eager(actual, expected) -> None:
    assert sorted(actual) == ["hidden", "logits"] and isinstance(actual["hidden"], list)
    for got, want in zip([actual["logits"], *actual["hidden"]], [expected["logits"], *expected["hidden"]]):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrent_async_calls_equal_eager_each_in_its_place(served, protocol):
    calls = _calls()

    async def run():
        async with AsyncRemoteModule(_url(served, protocol), served.entry_model, protocol=protocol) as remote:
            return await asyncio.gather(*(remote(*call) for call in calls))

    outputs = asyncio.run(run())

    assert len(outputs) == len(calls)
    with torch.no_grad():
        for output, call in zip(outputs, calls):
            _assert_equal_eager(output, served.net(*call))


def test_an_async_call_raises_the_errors_the_sync_module_raises(served):
    async def run():
        async with AsyncRemoteModule(served.server.grpc_url, served.entry_model) as remote:
            with pytest.raises(GraphSpecMismatchError, match="extra argument scale"):
                await remote(torch.randn(2, 8), scale=2.0)
            with pytest.raises(TypeError):
                await remote(torch.randn(2, 8), torch.randn(2, 4), torch.randn(1), torch.randn(1))

    asyncio.run(run())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_wrong_model_name_lists_the_models_the_server_has(served, protocol):
    with pytest.raises(RemoteInferenceError) as raised:
        RemoteModule(_url(served, protocol), "served_two_input_nett", protocol=protocol)

    message = str(raised.value)
    assert "the server has no model 'served_two_input_nett'" in message
    listed = message.split("Models on the server: ", 1)[1].split(". Pass", 1)[0].split(", ")
    assert served.entry_model in listed and SCALED_MODEL in listed
    assert not [name for name in listed if ".graph_" in name]  # graph models are not what a caller passes

    async def run():
        with pytest.raises(RemoteInferenceError, match=f"Models on the server: .*{served.entry_model}"):
            await AsyncRemoteModule(_url(served, protocol), "nope", protocol=protocol).connect()

    asyncio.run(run())


def test_a_remote_call_matching_no_graph_spec_names_what_differs_from_the_closest_one(served):
    with RemoteModule(served.server.grpc_url, served.entry_model) as remote:
        with pytest.raises(GraphSpecMismatchError) as raised:
            remote(torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 4))

    lines = str(raised.value).splitlines()
    assert lines[0] == f"{served.entry_model}: the call matches no exported graph spec."
    assert lines[2:4] == ["  differences from graph_0 (closest):", "    - x: dtype float64, expected float32"]
