"""Deployment options in a real tritonserver: models load with warmup from recorded calls, and a new
version exported from a re-tuned module is loaded while the old one keeps answering; both answer
with their own eager outputs, leaf by leaf, and the stub watchdog takes the reload for no crash."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from nets import TwoInputNet, eager
from repo_helpers import fast_onnxruntime

import aitune_triton
from aitune_triton import Module, RemoteModule
from aitune_triton.triton.config import TritonModelOptions, read_model_config
from aitune_triton.triton.options import VersionPolicy
from triton_helpers import require_tritonserver

pytestmark = pytest.mark.triton

NAME = "served_deployment_net"
GRAPHS = [f"{NAME}.graph_0", f"{NAME}.graph_1"]
OPTIONS = TritonModelOptions(warmup=True, version_policy=VersionPolicy(all=True), intra_op_threads=1, entry_instance_count=2)


def _tuned(seed: int, root: Path) -> tuple[torch.nn.Module, Module]:
    """A TwoInputNet with weights from ``seed``, recorded with (x, y) and (x,) at batches 1, 3, 5 and tuned."""
    torch.manual_seed(seed)
    net = TwoInputNet().eval()
    module = Module(net, name=f"{NAME}_{seed}", strategy=fast_onnxruntime(), cache_dir=root / f"cache_{seed}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for batch in (1, 3, 5):
            module(torch.randn(batch, 8, generator=generator), torch.randn(batch, 4, generator=generator))
            module(torch.randn(batch, 8, generator=generator))
    module.tune()
    return eager(net), module


@dataclass
class Deployed:
    server: object
    repository: Path
    first: torch.nn.Module
    log_path: Path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from aitune_triton.triton.server import TritonServer

    require_tritonserver()
    root = tmp_path_factory.mktemp("deployment")
    first, module = _tuned(0, root)
    repository = root / "repo"
    aitune_triton.export(module, repository, name=NAME, options=OPTIONS, show_progress=False)
    log_path = root / "tritonserver.log"
    server = TritonServer(repository, log_path=log_path, show_progress=False, timeout_s=180, extra_args=["--log-verbose=1"])
    server.start()
    try:
        yield Deployed(server, repository, first, log_path)
    finally:
        server.stop()


def _infer(client, version: str, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, np.ndarray]:
    inputs = []
    for name, tensor in (("x", x), ("y", y)):
        if tensor is None:
            continue
        item = httpclient.InferInput(name, list(tensor.shape), "FP32")
        item.set_data_from_numpy(tensor.numpy())
        inputs.append(item)
    result = client.infer(NAME, inputs, model_version=version)
    return {name: result.as_numpy(name) for name in ("hidden.0", "hidden.1", "logits")}


def _expected(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net(x, y)
    return {"hidden.0": out["hidden"][0].numpy(), "hidden.1": out["hidden"][1].numpy(), "logits": out["logits"].numpy()}


def _assert_equal(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(served) == sorted(expected)
    for leaf, value in expected.items():
        np.testing.assert_allclose(served[leaf], value, rtol=1e-4, atol=1e-5, err_msg=leaf)


def test_models_load_with_warmup_from_recorded_calls_and_answer_as_eager(deployed):
    client = httpclient.InferenceServerClient(deployed.server.http_url)
    try:
        for model in GRAPHS:
            assert client.is_model_ready(model, "1")
            assert [w.batch_size for w in read_model_config(deployed.repository / model / "config.pbtxt").model_warmup] == [1, 5]
        log = deployed.log_path.read_text()
        for model in GRAPHS:  # Triton's own lines: the warmup requests ran on the instance before READY
            assert f"model '{model}' instance" in log or model in log
        warmed = [line for line in log.splitlines() if "warmup" in line.lower()]
        assert any("warmup_min" in line for line in warmed) and any("warmup_max" in line for line in warmed), warmed[:20]
        x, y = torch.randn(4, 8), torch.randn(4, 4)
        with RemoteModule(deployed.server.grpc_url, NAME) as remote:
            for args in ((x, y), (x,)):
                served = remote(*args)
                expected = deployed.first(*args)
                torch.testing.assert_close(served["logits"], expected["logits"], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(served["hidden"][0], expected["hidden"][0], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(served["hidden"][1], expected["hidden"][1], rtol=1e-4, atol=1e-5)
    finally:
        client.close()


def test_a_new_version_loads_while_the_old_one_answers_and_both_answer_with_their_own_outputs(deployed, tmp_path):
    server = deployed.server
    second, retuned = _tuned(1, tmp_path)
    x, y = torch.randn(3, 8), torch.randn(3, 4)
    assert not np.allclose(_expected(second, x, y)["logits"], _expected(deployed.first, x, y)["logits"])
    stop, failures, answered = threading.Event(), [], []

    def keep_asking_version_1() -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            while not stop.is_set():
                try:
                    _assert_equal(_infer(client, "1", x, y), _expected(deployed.first, x, y))
                    answered.append(time.monotonic())
                except Exception as error:  # a failed or wrong answer while the new version loads
                    failures.append(repr(error))
        finally:
            client.close()

    asking = threading.Thread(target=keep_asking_version_1, daemon=True)
    asking.start()
    try:
        result = aitune_triton.export(retuned, deployed.repository, name=NAME, options=OPTIONS, show_progress=False, version=2)
        assert set(result.versions.values()) == {2}
        control = httpclient.InferenceServerClient(server.http_url, network_timeout=300.0)
        try:
            for model in GRAPHS + [NAME]:  # graph models first: the entry model's version 2 routes to them
                control.load_model(model, headers=server.model_control_headers)
            for model in GRAPHS + [NAME]:
                assert control.is_model_ready(model, "1") and control.is_model_ready(model, "2")
            started = len(answered)
            time.sleep(1.0)  # the old version keeps answering after the reload too
            assert len(answered) > started
        finally:
            control.close()
    finally:
        stop.set()
        asking.join(timeout=60)

    assert failures == []
    assert len(answered) > 10
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for args in ((x, y), (x, None)):
            _assert_equal(_infer(client, "1", *args), _expected(deployed.first, *args))
            _assert_equal(_infer(client, "2", *args), _expected(second, *args))
    finally:
        client.close()
    assert server.watchdog is not None and server.watchdog.reloads == []
    log = deployed.log_path.read_text()
    assert "died; reloading the model" not in log
    # The reload replaced version 1's stubs too (its config changed); the watchdog saw them end as such.
    assert "ended with a reload of its version; not a crash" in log
