"""Served layout and dtypes, in a real tritonserver of its own.

* ``served_bf16_net`` (Bf16BoolNet, AOTInductor) and ``served_bf16_inductor`` (the same net,
  torch.compile): bfloat16 and bool inputs and outputs, exported with one graph spec and no router.
* ``served_per_sample`` (PerSampleNet, ONNX Runtime): ``(B,)`` inputs and outputs, no router;
  ``served_per_sample_routed``: the same module behind a router (``router=True``).

Served outputs are compared with eager per output leaf, over HTTP and gRPC, through RemoteModule
and through raw tritonclient requests.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from nets import Bf16BoolNet, PerSampleNet
from nets import eager as eager_copy
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

import aitune_triton
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from aitune_triton.triton import TritonModelOptions
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.server import TritonServer

pytestmark = pytest.mark.triton

BF16_MODEL = "served_bf16_net"
BF16_INDUCTOR_MODEL = "served_bf16_inductor"
PER_SAMPLE_MODEL = "served_per_sample"
ROUTED_MODEL = "served_per_sample_routed"


@dataclass
class LayoutServed:
    bf16_net: torch.nn.Module
    per_sample_net: torch.nn.Module
    repository: Path
    server: TritonServer


@pytest.fixture(scope="module")
def layout_served(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout_served")
    repository = root / "model_repository"
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    bf16_net, per_sample_net = Bf16BoolNet().eval(), PerSampleNet().eval()
    bf16 = Module(bf16_net, name=BF16_MODEL, strategy=OneBackendStrategy("aoti"), cache_dir=root / "cache")
    # The recorded batch range 1..8 (no sweep): a test checks the refusal of batch 9.
    per_sample = Module(per_sample_net, name=PER_SAMPLE_MODEL, strategy=OneBackendStrategy("onnxruntime", find_max_batch_size=False),
                        cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 3, 8):
            bf16(torch.randn(batch, 4, generator=generator).to(torch.bfloat16), torch.rand(batch, 3, generator=generator) > 0.5)
            per_sample(torch.randn(batch, 4, generator=generator), torch.randint(1, 9, (batch,), generator=generator),
                       torch.rand(batch, generator=generator) + 0.5)
    bf16.tune()
    per_sample.tune()
    inductor = Module(copy.deepcopy(bf16_net), name=BF16_INDUCTOR_MODEL, strategy=OneBackendStrategy("inductor"), cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 3, 8):
            inductor(torch.randn(batch, 4, generator=generator).to(torch.bfloat16), torch.rand(batch, 3, generator=generator) > 0.5)
    inductor.tune()
    aitune_triton.export(inductor, repository, show_progress=False)
    aitune_triton.export(bf16, repository, show_progress=False, options=TritonModelOptions(warmup=True))  # bf16 + bool warmup
    aitune_triton.export(per_sample, repository, show_progress=False)
    aitune_triton.export(per_sample, repository, name=ROUTED_MODEL, show_progress=False, router=True)
    server = TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=180)
    server.start()
    try:
        yield LayoutServed(eager_copy(bf16_net), eager_copy(per_sample_net), repository, server)
    finally:
        server.stop()
        del bf16, per_sample, inductor


def _url(server: TritonServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def _client(server: TritonServer, protocol: str):
    return grpcclient.InferenceServerClient(server.grpc_url) if protocol == "grpc" else httpclient.InferenceServerClient(server.http_url)


def _input(protocol: str, name: str, array: np.ndarray, datatype: str):
    module = grpcclient if protocol == "grpc" else httpclient
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_one_graph_spec_is_exported_as_one_model_and_the_router_only_on_request(layout_served):
    names = sorted(p.name for p in layout_served.repository.iterdir())
    assert names == [BF16_INDUCTOR_MODEL, BF16_MODEL, PER_SAMPLE_MODEL, ROUTED_MODEL, f"{ROUTED_MODEL}.graph_0"]
    config = read_model_config(layout_served.repository / PER_SAMPLE_MODEL / "config.pbtxt")
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    for tensor in [*config.input, *config.output]:
        if tensor.name != "x":  # (B,) tensors: dims [1] reshaped to []
            assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == []


def test_a_bf16_and_bool_model_warms_up_from_its_recorded_calls_before_it_is_ready(layout_served):
    config = read_model_config(layout_served.repository / BF16_MODEL / "config.pbtxt")
    warmup_types = {mc.DataType.Name(t.data_type) for w in config.model_warmup for t in w.inputs.values()}
    recorded = [w for w in config.model_warmup if not w.name.startswith("warmup_opt_batch")]
    assert len(recorded) == 2 and warmup_types == {"TYPE_BF16", "TYPE_BOOL"}
    # and at most one more, at the preferred batch size the dynamic batcher aims for
    extra = [w.batch_size for w in config.model_warmup if w.name.startswith("warmup_opt_batch")]
    assert len(extra) <= 1 and set(extra) <= set(config.dynamic_batching.preferred_batch_size)
    for warmup in config.model_warmup:
        for tensor in warmup.inputs.values():
            size = (layout_served.repository / BF16_MODEL / "warmup" / tensor.input_data_file).stat().st_size
            assert size == (2 if tensor.data_type == mc.TYPE_BF16 else 1) * int(np.prod(list(tensor.dims)))
    with httpclient.InferenceServerClient(layout_served.server.http_url) as client:
        assert client.is_model_ready(BF16_MODEL)  # Triton ran the warmup requests while loading it


@pytest.mark.parametrize("model", [BF16_MODEL, BF16_INDUCTOR_MODEL])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bf16_and_bool_outputs_through_remote_module_match_eager_per_leaf(layout_served, protocol, model):
    with RemoteModule(_url(layout_served.server, protocol), model, protocol=protocol) as remote:
        for batch in (1, 5, 8):
            generator = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 4, generator=generator).to(torch.bfloat16)
            keep = torch.rand(batch, 3, generator=generator) > 0.5
            served = remote(x, keep)
            with torch.no_grad():
                expected = layout_served.bf16_net(x, keep)
            assert served["y"].dtype == torch.bfloat16 and served["positive"].dtype == torch.bool
            torch.testing.assert_close(served["y"], expected["y"], atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(served["kept"], expected["kept"], atol=1e-2, rtol=1e-2)
            assert torch.equal(served["positive"], expected["positive"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_raw_client_sends_bf16_as_ml_dtypes_and_gets_bf16_back(layout_served, protocol):
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    keep = np.array([[True, False, True], [False, True, True]])
    wire = x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    client = _client(layout_served.server, protocol)

    result = client.infer(BF16_MODEL, [_input(protocol, "x", wire, "BF16"), _input(protocol, "keep", keep, "BOOL")])

    client.close()
    with torch.no_grad():
        expected = layout_served.bf16_net(x, torch.from_numpy(keep))
    y = result.as_numpy("y")
    assert y.dtype == ml_dtypes.bfloat16 and result.as_numpy("positive").dtype == np.bool_
    torch.testing.assert_close(torch.from_numpy(np.ascontiguousarray(y).view(np.int16)).view(torch.bfloat16), expected["y"],
                               atol=1e-2, rtol=1e-2)
    np.testing.assert_array_equal(result.as_numpy("positive"), expected["positive"].numpy())


@pytest.mark.parametrize("model", [PER_SAMPLE_MODEL, ROUTED_MODEL])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_per_sample_vectors_through_remote_module_match_eager(layout_served, protocol, model):
    with RemoteModule(_url(layout_served.server, protocol), model, protocol=protocol) as remote:
        for batch in (1, 4, 8):
            generator = torch.Generator().manual_seed(batch)
            args = (torch.randn(batch, 4, generator=generator), torch.randint(1, 9, (batch,), generator=generator),
                    torch.rand(batch, generator=generator) + 0.5)
            served = remote(*args)
            with torch.no_grad():
                expected = layout_served.per_sample_net(*args)
            assert served["total"].shape == (batch,) and served["doubled"].shape == (batch,)
            torch.testing.assert_close(served["total"], expected["total"], atol=1e-5, rtol=0)
            torch.testing.assert_close(served["doubled"], expected["doubled"])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_raw_client_sends_per_sample_vectors_as_b_by_1_to_the_direct_model(layout_served, protocol):
    rng = np.random.default_rng(5)
    x, lengths, scale = rng.standard_normal((3, 4), dtype=np.float32), rng.integers(1, 9, (3, 1)), rng.random((3, 1), dtype=np.float32)
    client = _client(layout_served.server, protocol)

    result = client.infer(PER_SAMPLE_MODEL, [_input(protocol, "x", x, "FP32"), _input(protocol, "lengths", lengths, "INT64"),
                                             _input(protocol, "scale", scale, "FP32")])
    with pytest.raises(InferenceServerException) as raised:  # outside the exported batch range: refused, model stays up
        client.infer(PER_SAMPLE_MODEL, [_input(protocol, "x", np.zeros((9, 4), np.float32), "FP32"),
                                        _input(protocol, "lengths", np.ones((9, 1), np.int64), "INT64"),
                                        _input(protocol, "scale", np.ones((9, 1), np.float32), "FP32")])
    ready = client.is_model_ready(PER_SAMPLE_MODEL)
    client.close()

    with torch.no_grad():
        expected = layout_served.per_sample_net(torch.from_numpy(x), torch.from_numpy(lengths[:, 0]), torch.from_numpy(scale[:, 0]))
    assert result.as_numpy("total").shape == (3, 1) and result.as_numpy("doubled").shape == (3, 1)
    np.testing.assert_allclose(result.as_numpy("total")[:, 0], expected["total"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(result.as_numpy("doubled")[:, 0], expected["doubled"].numpy())
    assert "batch-size must be <= 8" in raised.value.message() or "max_batch_size" in raised.value.message()
    assert ready


def test_the_dynamic_batcher_joins_concurrent_requests_to_the_direct_model(layout_served):
    client = grpcclient.InferenceServerClient(layout_served.server.grpc_url)
    before = client.get_inference_statistics(PER_SAMPLE_MODEL, as_json=True)["model_stats"][0]
    errors: list[Exception] = []

    def call(seed: int) -> None:
        local = grpcclient.InferenceServerClient(layout_served.server.grpc_url)
        rng = np.random.default_rng(seed)
        try:
            for _ in range(8):
                x, lengths, scale = rng.standard_normal((1, 4), dtype=np.float32), rng.integers(1, 9, (1, 1)), np.ones((1, 1), np.float32)
                result = local.infer(PER_SAMPLE_MODEL, [_input("grpc", "x", x, "FP32"), _input("grpc", "lengths", lengths, "INT64"),
                                                        _input("grpc", "scale", scale, "FP32")])
                np.testing.assert_array_equal(result.as_numpy("doubled"), lengths * 2)
        except Exception as error:  # collected and asserted below
            errors.append(error)
        finally:
            local.close()

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = client.get_inference_statistics(PER_SAMPLE_MODEL, as_json=True)["model_stats"][0]
    client.close()

    assert errors == []
    requests = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert requests == 48
    assert executions < requests  # requests were joined into batches


def test_remote_module_reads_the_routes_from_the_direct_model(layout_served):
    client = grpcclient.InferenceServerClient(layout_served.server.grpc_url)
    config = client.get_model_config(PER_SAMPLE_MODEL, as_json=True)["config"]
    client.close()
    routes = json.loads(config["parameters"]["aitune_triton.routes"]["string_value"])
    assert [graph["model_name"] for graph in routes["graphs"]] == [PER_SAMPLE_MODEL]
