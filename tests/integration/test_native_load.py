"""A native export served by the real embedded tritonserver, which has the python backend only.

TwoInputNet is tuned with ONNX Runtime for ``(x, y)`` and AOTInductor for ``(x,)`` and exported by
the real command line with ``--target native``; ScalarNet (a 0-d output in a model that does not
batch, which stays a Python-backend model) is exported into the same repository. The server is
started without ``--exit-on-error`` so that it reports each model's own load result: a native
model may fail only because its backend (onnxruntime, pytorch) is not installed on this server,
and every Python-backend model loads READY and answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from nets import TwoInputNet, record_two_input_calls
from nets import eager as eager_copy
from tritonclient.utils import InferenceServerException

import aitune_triton
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from aitune_triton.backends import OnnxRuntimeBackend
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.server import TritonServer
from triton_helpers import require_tritonserver

NATIVE_MODULE = "native_served_two_input_net"
SCALAR_MODULE = "native_served_scalar_net"
GRAPH_MODELS = [f"{NATIVE_MODULE}.graph_0", f"{NATIVE_MODULE}.graph_1"]


class ScalarNet(torch.nn.Module):
    """Never batched (the first axis is always 2); returns a 0-d tensor among its outputs."""

    def forward(self, x: torch.Tensor):
        return {"total": x.sum(), "doubled": x * 2}


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The repository, the running server, its HTTP client and the eager ScalarNet with its tuned Module."""
    require_tritonserver()
    root = tmp_path_factory.mktemp("native_served")
    ort = OnnxRuntimeBackend(graph_optimization_level="all", intra_op_num_threads=1)
    torch.manual_seed(0)
    module = Module(
        # The recorded batch range 1..5 (no sweep): a test checks the entry model's refusal of batch 7.
        TwoInputNet().eval(), name=NATIVE_MODULE,
        strategies=[OneBackendStrategy(ort, find_max_batch_size=False), OneBackendStrategy("aoti", find_max_batch_size=False)],
        cache_dir=root / "cache",
    )
    generator = torch.Generator().manual_seed(1)
    record_two_input_calls(module, generator)
    module.tune()
    assert [g.backend.name for g in module.tuned_graphs] == ["onnxruntime", "aoti"]
    checkpoint = aitune_triton.save(module, root / "checkpoint")
    repository = root / "model_repository"
    exported = subprocess.run(
        [sys.executable, "-m", "aitune_triton", "export", str(checkpoint), "-o", str(repository), "--target", "native", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert exported.returncode == 0, f"export failed:\n{exported.stdout}\n{exported.stderr}"
    scalar_net = ScalarNet().eval()
    scalar = Module(scalar_net, name=SCALAR_MODULE, strategy=OneBackendStrategy(ort.clone()), cache_dir=root / "cache")
    for columns in (3, 5, 4):
        scalar(torch.randn(2, columns, generator=generator))
    scalar.tune()
    aitune_triton.export(scalar, repository, target="native", show_progress=False)
    # Without --exit-on-error the server starts although models fail to load, and reports each
    # model's own load result; without strict readiness it answers ready with models unavailable.
    server = TritonServer(
        repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=180, restart_dead_stubs=False,
        extra_args=["--exit-on-error=false", "--strict-readiness=false"],
    )
    server.start()
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        yield repository, server, client, (eager_copy(scalar_net), scalar)
    finally:
        client.close()
        server.stop()


def _index(client) -> dict[str, dict]:
    return {entry["name"]: entry for entry in client.get_model_repository_index()}


def _target(repository, model: str) -> str:
    return json.loads((repository / model / "1" / "manifest.json").read_text())["target"]


def test_the_native_export_writes_onnxruntime_and_torch_aoti_models(native):
    repository, _, _, _ = native

    configs = [read_model_config(repository / model / "config.pbtxt") for model in GRAPH_MODELS]

    assert [(c.platform, c.backend, c.default_model_filename) for c in configs] == [
        ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
        ("torch_aoti", "pytorch", "model.pt2"),
    ]
    assert [_target(repository, model) for model in GRAPH_MODELS] == ["native", "native"]
    assert _target(repository, f"{SCALAR_MODULE}.graph_0") == "python"


def _load_error(model: str, index: dict[str, dict], log: str) -> str:
    """The server's own message about ``model``: its repository-index reason, or the log line of a
    model the repository poll refused (such a model is listed without a state)."""
    if index[model].get("reason"):
        assert f"failed to load '{model}' version 1: {index[model]['reason']}" in log
        return index[model]["reason"]
    found = re.search(rf'"Poll failed for model directory \'{re.escape(model)}\': (.*)"$', log, re.MULTILINE)
    assert found, f"{model}: neither a load error nor a poll error in the server log:\n{log}"
    return found.group(1)


def test_each_native_model_fails_to_load_only_because_this_server_lacks_its_backend(native):
    """The only failures allowed: the backend library is missing (the embedded server has the python
    backend only), and, for torch_aoti, a server whose core predates that platform refusing the
    platform/backend pair it does not know (the embedded tritonserver 2.51 does)."""
    repository, server, client, _ = native
    index = _index(client)
    log = server.log_path.read_text(errors="replace")
    version = client.get_server_metadata()["version"]

    for model in GRAPH_MODELS:
        config = read_model_config(repository / model / "config.pbtxt")
        assert index[model].get("state") in ("UNAVAILABLE", None), index[model]
        message = _load_error(model, index, log)
        missing = (
            f"Invalid argument: unable to find backend library for backend '{config.backend}', "
            "try specifying runtime on the model configuration."
        )
        unknown_pair = f"unexpected 'platform' and 'backend' pair, got:{config.platform}, {config.backend}"
        allowed = [missing] + ([unknown_pair] if config.platform == "torch_aoti" else [])
        assert message in allowed, f"{model} on tritonserver {version}: {message}"


def test_the_python_backend_models_in_the_same_repository_load_ready(native):
    _, _, client, _ = native
    index = _index(client)

    for model in (NATIVE_MODULE, SCALAR_MODULE, f"{SCALAR_MODULE}.graph_0"):
        assert index[model]["state"] == "READY", index[model]
        assert client.is_model_ready(model)


def test_the_entry_model_refuses_a_batch_above_the_native_models_range_before_forwarding(native):
    _, _, client, _ = native
    x = httpclient.InferInput("x", [7, 8], "FP32")
    x.set_data_from_numpy(np.zeros((7, 8), dtype=np.float32))

    with pytest.raises(InferenceServerException) as raised:
        client.infer(NATIVE_MODULE, [x])

    assert raised.value.status() == "400"
    assert f"{NATIVE_MODULE}.graph_1:" in raised.value.message() and "7" in raised.value.message()


def test_the_entry_model_forwards_a_request_in_range_to_the_native_model_it_routes_to(native):
    """The request passes the contract check, its tensors are renamed to the ONNX graph's (input_0, input_1), and
    it reaches graph_0 (onnxruntime_onnx), which is not loaded here: a failure in the entry model would be its
    own INTERNAL error instead."""
    _, _, client, _ = native
    inputs = []
    for name, shape in (("x", [3, 8]), ("y", [3, 4])):
        tensor = httpclient.InferInput(name, shape, "FP32")
        tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
        inputs.append(tensor)

    with pytest.raises(InferenceServerException) as raised:
        client.infer(NATIVE_MODULE, inputs)

    assert f"Model '{NATIVE_MODULE}.graph_0' is not ready." in raised.value.message()


def test_the_python_backend_model_beside_them_answers_like_eager(native):
    _, server, _, (eager, _) = native
    x = torch.randn(2, 4)

    with RemoteModule(server.grpc_url, SCALAR_MODULE) as remote:
        served = remote(x)

    expected = eager(x)
    torch.testing.assert_close(served["total"], expected["total"])
    torch.testing.assert_close(served["doubled"], expected["doubled"])
