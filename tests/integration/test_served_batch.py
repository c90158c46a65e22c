"""A module recorded at one batch size is served at other batch sizes.

The fixture records two modules at batch size 4 only: ``Net`` (independent samples, AOTInductor)
and ``Centered`` (samples mix through the batch mean, ONNX Runtime), exports both and serves them
with one real tritonserver of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import Centered
from nets import IndependentNet as Net
from nets import eager as eager_copy
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import aitune_triton
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from aitune_triton.errors import GraphSpecMismatchError
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.server import TritonServer

pytestmark = pytest.mark.triton

NET_MODEL = "served_batch4_net"
CENTERED_MODEL = "served_batch4_centered"


@dataclass
class BatchServed:
    net: torch.nn.Module
    repository: Path
    server: TritonServer
    max_batch_size: int  # NET_MODEL's, measured by the default batch size sweep
    preferred_batch_size: int | None


@pytest.fixture(scope="module")
def batch_served(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_served")
    torch.manual_seed(0)
    net = Net().eval()
    repository = root / "model_repository"
    modules = []
    generator = torch.Generator().manual_seed(4)
    for name, eager, backend, features in ((NET_MODEL, net, "aoti", 8), (CENTERED_MODEL, Centered().eval(), "onnxruntime", 3)):
        # The default batch size sweep, bounded at 16 to keep the tune short.
        module = Module(eager, name=name, strategy=OneBackendStrategy(backend, max_batch_size_limit=16), cache_dir=root / "cache")
        with torch.no_grad():
            for _ in range(3):
                module(torch.randn(4, features, generator=generator))
        module.tune()
        aitune_triton.export(module, repository, show_progress=False, router=True)  # the tests name its graph model
        modules.append(module)
    spec = modules[0].tuned_graphs[0].spec
    server = TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=180)
    server.start()
    try:
        yield BatchServed(eager_copy(net), repository, server, spec.dims["batch"].max, spec.preferred_batch_size)
    finally:
        server.stop()
        del modules


def _url(server: TritonServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_module_recorded_only_at_batch_4_is_served_at_batch_1_3_and_its_swept_max_equal_to_eager(batch_served, protocol):
    with RemoteModule(_url(batch_served.server, protocol), NET_MODEL, protocol=protocol) as remote:
        for batch in sorted({1, 3, 4, batch_served.max_batch_size}):
            x = torch.randn(batch, 8, generator=torch.Generator().manual_seed(batch))
            output, expected = remote(x), batch_served.net(x)
            torch.testing.assert_close(output["hidden"], expected["hidden"].detach(), atol=1e-5, rtol=0)
            torch.testing.assert_close(output["total"], expected["total"].detach(), atol=1e-5, rtol=0)


def test_the_graph_model_of_a_module_recorded_only_at_batch_4_batches_up_to_its_swept_max(batch_served):
    config = read_model_config(batch_served.repository / f"{NET_MODEL}.graph_0" / "config.pbtxt")

    assert config.max_batch_size == batch_served.max_batch_size >= 4  # never below what was recorded
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [batch_served.preferred_batch_size]
    assert [list(tensor.dims) for tensor in config.input] == [[8]]


def test_a_module_mixing_samples_recorded_at_batch_4_is_served_at_batch_4_only(batch_served):
    config = read_model_config(batch_served.repository / f"{CENTERED_MODEL}.graph_0" / "config.pbtxt")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))

    with RemoteModule(batch_served.server.grpc_url, CENTERED_MODEL) as remote:
        torch.testing.assert_close(remote(x), Centered()(x), atol=1e-5, rtol=0)
        with pytest.raises(GraphSpecMismatchError, match="x axis 0: size 3 outside 4..4"):
            remote(x[:3])
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(tensor.dims) for tensor in config.input] == [[4, 3]]


def test_the_graph_model_refuses_a_raw_batch_above_its_max_naming_the_batch_size(batch_served):
    high = batch_served.max_batch_size
    client = httpclient.InferenceServerClient(batch_served.server.http_url)
    tensor = httpclient.InferInput("x", [high + 1, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((high + 1, 8), dtype=np.float32))

    with pytest.raises(InferenceServerException) as raised:
        client.infer(NET_MODEL, [tensor])  # through the entry model
    client.close()

    assert raised.value.status() == "400"
    assert f"x axis 0: size {high + 1} outside 1..{high} (the batch axis: max_batch_size {high})" in raised.value.message()
