"""A served model faces clients we do not control: bad token ids are refused, a dead stub is reloaded.

One AOTInductor module, served by its own TritonServer (with the stub watchdog, the default): its
``ids`` reach an embedding directly (covered by the input contract), its ``shifted`` ids only
through ``+ 1`` (not covered: an out-of-range value there aborts the compiled code and kills the
graph model's stub).
"""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import aitune_triton
from nets import eager
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from aitune_triton.errors import IndexOutOfRangeError
from aitune_triton.triton.server import TritonServer, _children, _stub_model
from triton_helpers import require_tritonserver

pytestmark = pytest.mark.triton

MODEL = "served_index_net"
GRAPH_MODEL = f"{MODEL}.graph_0"


class IndexNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(50, 8)

    def forward(self, ids: torch.Tensor, shifted: torch.Tensor):
        return self.embedding(ids) + self.embedding(shifted + 1)


@pytest.fixture(scope="module")
def index_server(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("index_server")
    previous_cache = os.environ.get("AITUNE_TRITON_CACHE_DIR")
    os.environ["AITUNE_TRITON_CACHE_DIR"] = str(root / "cache")
    net = IndexNet().eval()
    module = Module(net, name=MODEL, strategy=OneBackendStrategy("aoti"))
    try:
        with torch.no_grad():
            for batch, length in ((1, 4), (8, 256)):
                module(torch.randint(0, 50, (batch, length)), torch.randint(0, 49, (batch, length)))
        module.tune()
        aitune_triton.export(module, root / "repository", show_progress=False, router=True)  # the tests name its graph model
        with TritonServer(root / "repository", log_path=root / "tritonserver.log", show_progress=False, timeout_s=180) as server:
            yield eager(net), server
    finally:
        if previous_cache is None:
            os.environ.pop("AITUNE_TRITON_CACHE_DIR", None)
        else:
            os.environ["AITUNE_TRITON_CACHE_DIR"] = previous_cache


def _ready(server, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _honest_readiness(server) -> tuple[bool, bool]:
    return _ready(server, f"/v2/models/{GRAPH_MODEL}/ready"), _ready(server, "/v2/health/ready")


def _good_call(net, server):
    """A good request through RemoteModule, compared with eager."""
    ids, shifted = torch.randint(0, 50, (2, 6)), torch.randint(0, 49, (2, 6))
    with RemoteModule(server.grpc_url, MODEL) as remote:
        torch.testing.assert_close(remote(ids, shifted), net(ids, shifted), atol=1e-5, rtol=0)


def _wait_for(condition, timeout_s: float, step_s: float = 0.05) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not reached within {timeout_s} s"
        time.sleep(step_s)
    return time.monotonic() - started


def _raw_inputs(module, ids: np.ndarray, shifted: np.ndarray):
    inputs = []
    for name, array in (("ids", ids), ("shifted", shifted)):
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_raw_out_of_range_token_id_is_answered_invalid_argument_by_graph_and_entry_model_and_good_requests_match_eager(index_server, protocol):
    net, server = index_server
    reloads = len(server.watchdog.reloads)
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    shifted = np.zeros((8, 256), dtype=np.int64)
    try:
        for bad, model in ((10**6, GRAPH_MODEL), (-5, GRAPH_MODEL), (50, MODEL)):  # MODEL: the entry model checks first
            ids = np.zeros((8, 256), dtype=np.int64)
            ids[3, 200] = bad
            with pytest.raises(InferenceServerException) as raised:
                client.infer(model, _raw_inputs(module, ids, shifted))
            assert raised.value.message().startswith(f"{GRAPH_MODEL}: ids: ")
            assert raised.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
            assert f"ids: values must be in 0..49 (it indexes a dimension of size 50 in aten.embedding), got {bad}" in (
                raised.value.message()
            )
    finally:
        client.close()

    _good_call(net, server)
    assert _honest_readiness(server) == (True, True)
    assert len(server.watchdog.reloads) == reloads  # the stub never died


def test_remote_module_refuses_an_out_of_range_token_id_before_it_travels(index_server):
    _, server = index_server

    with RemoteModule(server.http_url, MODEL, protocol="http") as remote, pytest.raises(IndexOutOfRangeError) as raised:
        remote(torch.tensor([[1, 50, 2, 3]]), torch.zeros(1, 4, dtype=torch.long))

    assert isinstance(raised.value, IndexError)
    assert str(raised.value) == (
        f"{GRAPH_MODEL}: ids: values must be in 0..49 (it indexes a dimension of size 50 in aten.embedding), got 50. Pass indices inside that range (token ids: ids of this model's own vocabulary), as eager PyTorch would also refuse these."
    )


def test_a_stub_killed_with_sigkill_makes_its_model_not_ready_until_the_watchdog_reloads_it(index_server):
    net, server = index_server
    (stub,) = [pid for pid in _children(server._process.pid) if _stub_model(pid) == GRAPH_MODEL]
    reloads = len(server.watchdog.reloads)

    os.kill(stub, signal.SIGKILL)

    noticed_s = _wait_for(lambda: _honest_readiness(server) == (False, False), timeout_s=5)
    back_s = _wait_for(lambda: _honest_readiness(server) == (True, True), timeout_s=60)
    _good_call(net, server)
    assert [(model, pid) for model, pid, _ in server.watchdog.reloads[reloads:]] == [(GRAPH_MODEL, stub)]
    print(f"not ready {noticed_s:.2f} s after the kill, ready again {back_s:.2f} s later")


def test_a_request_that_aborts_the_compiled_code_fails_and_the_model_serves_again_after_its_reload(index_server):
    net, server = index_server
    reloads = len(server.watchdog.reloads)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    ids = np.zeros((8, 256), dtype=np.int64)
    shifted = np.full((8, 256), 49, dtype=np.int64)  # + 1 = 50: past the table, where the contract cannot see

    started = time.monotonic()
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(GRAPH_MODEL, _raw_inputs(httpclient, ids, shifted))
        print("aborting request answered:", raised.value)
    finally:
        client.close()

    _wait_for(lambda: len(server.watchdog.reloads) > reloads, timeout_s=60)
    assert _honest_readiness(server) == (True, True)
    _good_call(net, server)
    assert server.watchdog.reloads[reloads][0] == GRAPH_MODEL
    print(f"serving again {time.monotonic() - started:.1f} s after the aborting request")


def test_a_model_unloaded_on_purpose_through_the_model_control_api_is_not_reloaded_by_the_watchdog(index_server):
    net, server = index_server
    reloads = len(server.watchdog.reloads)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    control = server.model_control_headers  # what the server was started to require
    try:
        client.unload_model(GRAPH_MODEL, headers=control)
        time.sleep(2)  # ten looks of the watchdog
        assert _honest_readiness(server)[0] is False
        assert len(server.watchdog.reloads) == reloads
        client.load_model(GRAPH_MODEL, headers=control)
    finally:
        client.close()
    _good_call(net, server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_client_without_the_control_header_cannot_load_or_unload_models_of_a_watched_server(index_server, protocol):
    net, server = index_server
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    try:
        for call in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException) as raised:
                call(GRAPH_MODEL)
            assert "restricted" in raised.value.message().lower() or "header" in raised.value.message().lower()
    finally:
        client.close()
    assert _honest_readiness(server) == (True, True)
    _good_call(net, server)
