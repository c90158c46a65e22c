"""Shapes at the edges: scalars, samples that depend on the batch, sizes outside the exported range, the serve CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from conftest import CENTERED_MODEL, SCALAR_MODEL, SCALED_MODEL, TIED_MODEL

from aitune_triton import RemoteModule
from aitune_triton.errors import GraphSpecMismatchError
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.server import free_port

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_0_d_output_of_a_model_that_does_not_batch_is_served_with_its_own_shape(served, protocol):
    eager, tuned = served.extra[SCALAR_MODEL]
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    x = torch.randn(2, 4)

    with RemoteModule(url, SCALAR_MODEL, protocol=protocol) as remote:
        got = remote(x)

    want = eager(x)
    assert got["total"].shape == torch.Size([]) == want["total"].shape
    torch.testing.assert_close(got["total"], want["total"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["doubled"], want["doubled"], atol=1e-6, rtol=0)
    torch.testing.assert_close(tuned(x)["total"], want["total"], atol=1e-5, rtol=1e-5)


def test_the_entry_model_answers_a_raw_request_for_a_0_d_output_with_shape_1(served):
    eager, _ = served.extra[SCALAR_MODEL]
    x = np.random.default_rng(0).standard_normal((2, 5), dtype=np.float32)
    client = httpclient.InferenceServerClient(served.server.http_url)
    tensor = httpclient.InferInput("x", [2, 5], "FP32")
    tensor.set_data_from_numpy(x)

    result = client.infer(SCALAR_MODEL, [tensor])

    client.close()
    assert result.as_numpy("total").shape == (1,)  # Triton needs one dim: dims [1] reshaped to [] for the model
    np.testing.assert_allclose(result.as_numpy("total")[0], float(eager(torch.from_numpy(x))["total"]), rtol=1e-5)
    assert result.as_numpy("doubled").shape == (2, 5)


def test_a_raw_request_outside_the_exported_range_is_refused_by_the_graph_model_naming_the_axis(served):
    client = httpclient.InferenceServerClient(served.server.http_url)
    tensor = httpclient.InferInput("x", [2, 7], "FP32")  # recorded lengths 3..5
    tensor.set_data_from_numpy(np.zeros((2, 7), dtype=np.float32))

    with pytest.raises(InferenceServerException, match=r"x axis 1: size 7 outside 3\.\.5"):
        client.infer(f"{SCALAR_MODEL}.graph_0", [tensor])
    client.close()


def test_remote_module_refuses_a_call_outside_the_exported_range_before_it_travels(served):
    with RemoteModule(served.server.grpc_url, SCALAR_MODEL) as remote, pytest.raises(GraphSpecMismatchError) as raised:
        remote(torch.randn(2, 7))

    assert "the call does not fit the exported shapes: x axis 1: size 7 outside 3..5" in str(raised.value)


def test_a_module_whose_samples_depend_on_the_batch_is_exported_without_batching(served):
    _, tuned = served.extra[CENTERED_MODEL]
    (graph,) = tuned.tuned_graphs

    config = read_model_config(served.repository / f"{CENTERED_MODEL}.graph_0" / "config.pbtxt")

    assert graph.spec.batch_independent is False
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")


def test_concurrent_requests_to_a_batch_dependent_module_each_get_their_own_answer(served):
    eager, _ = served.extra[CENTERED_MODEL]
    inputs = [torch.randn(2 + index % 3, 3, generator=torch.Generator().manual_seed(index)) for index in range(12)]
    results: dict[int, torch.Tensor] = {}

    def call(index: int) -> None:
        with RemoteModule(served.server.grpc_url, CENTERED_MODEL) as remote:
            results[index] = remote(inputs[index])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for index, x in enumerate(inputs):
        torch.testing.assert_close(results[index], eager(x), atol=1e-5, rtol=0)


def test_requests_through_the_entry_model_reach_the_graph_model_concurrently(served):
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    graph_model = served.graph_models[1]  # (x,) only
    before = client.get_inference_statistics(graph_model, as_json=True)["model_stats"][0]
    x = np.random.default_rng(1).standard_normal((1, 8), dtype=np.float32)
    errors: list[Exception] = []

    def call() -> None:
        local = grpcclient.InferenceServerClient(served.server.grpc_url)
        try:
            for _ in range(8):
                tensor = grpcclient.InferInput("x", [1, 8], "FP32")
                tensor.set_data_from_numpy(x)
                local.infer(served.entry_model, [tensor])
        except Exception as error:  # collected and asserted below
            errors.append(error)
        finally:
            local.close()

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = client.get_inference_statistics(graph_model, as_json=True)["model_stats"][0]
    client.close()

    assert errors == []
    requests = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert requests == 48
    assert executions < requests  # the async router let the dynamic batcher join requests


def test_aitune_triton_serve_starts_a_server_answers_health_checks_and_stops_on_sigterm(served, tmp_path):
    # A repository of its own with one small module: the session repository starts some 30 processes.
    repository = tmp_path / "repository"
    for model in (SCALAR_MODEL, f"{SCALAR_MODEL}.graph_0"):
        shutil.copytree(served.repository / model, repository / model)
    http_port = free_port()
    command = [sys.executable, "-m", "aitune_triton", "serve", str(repository), "--http-port", str(http_port), "--quiet-log"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Serving "):
                break
        assert any(line.startswith("Serving ") for line in lines), "".join(lines)
        with urllib.request.urlopen(f"http://localhost:{http_port}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "Server stopped." in output
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://localhost:{http_port}/v2/health/ready", timeout=2)


def test_graph_specs_differing_only_in_a_constant_are_served_apart_by_remote_module(served):
    eager, _ = served.extra[SCALED_MODEL]
    x = torch.randn(2, 8)

    with RemoteModule(served.server.grpc_url, SCALED_MODEL) as remote:
        plain, scaled = remote(x), remote(x, scale=2.0)

    torch.testing.assert_close(plain["logits"], eager(x)["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled["logits"], eager(x, scale=2.0)["logits"], atol=1e-5, rtol=0)


def test_the_entry_model_refuses_a_request_that_fits_graph_models_differing_only_in_a_constant(served):
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    tensor = grpcclient.InferInput("x", [2, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 8), dtype=np.float32))

    with pytest.raises(InferenceServerException) as raised:
        client.infer(SCALED_MODEL, [tensor])
    client.close()

    message = raised.value.message()
    assert "fit several graph models that differ only in constant arguments" in message
    assert f"{SCALED_MODEL}.graph_1 {{'scale': 'const(2.0)'}}" in message


def test_a_server_whose_python_parent_is_killed_stops_too(served, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from aitune_triton.triton import TritonServer\n"
        f"server = TritonServer({str(served.repository)!r}, show_progress=False).start()\n"
        "print(server._process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    # TMPDIR: the killed parent cannot remove its temporary server directory; keep it in tmp_path.
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=environment)
    try:
        server_pid = int(parent.stdout.readline())
        parent.kill()  # SIGKILL: no finalizer, no atexit
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(server_pid):
            time.sleep(0.5)
        assert not _alive(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_serving_a_repository_without_models_is_refused_with_a_hint(tmp_path):
    from aitune_triton.errors import TritonServerError
    from aitune_triton.triton import TritonServer

    with pytest.raises(TritonServerError, match=r"holds no model \(no \*/config.pbtxt\). Export one into it first"):
        TritonServer(tmp_path)


def test_axes_the_exported_model_ties_are_checked_in_process_by_remote_module_and_by_the_server(served):
    from aitune_triton.errors import ArgumentTypeError

    eager, tuned = served.extra[TIED_MODEL]
    ids, features = torch.randint(0, 50, (2, 8)), torch.randn(2, 5, 6)  # both lengths in 4..9, not equal

    with pytest.raises(GraphSpecMismatchError, match="the exported model needs them equal"):
        tuned(ids, features)
    with RemoteModule(served.server.grpc_url, TIED_MODEL) as remote:
        with pytest.raises(GraphSpecMismatchError, match="the exported model needs them equal"):
            remote(ids, features)
        with pytest.raises(ArgumentTypeError, match="pass torch tensors"):
            remote(ids.numpy(), features.numpy())
        same = torch.randn(2, 8, 6)
        torch.testing.assert_close(remote(ids, same), eager(ids, same), atol=1e-5, rtol=0)
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    raw_ids = grpcclient.InferInput("ids", [2, 8], "INT64")
    raw_ids.set_data_from_numpy(ids.numpy())
    raw_features = grpcclient.InferInput("features", [2, 5, 6], "FP32")
    raw_features.set_data_from_numpy(features.numpy())
    with pytest.raises(InferenceServerException) as raised:
        client.infer(TIED_MODEL, [raw_ids, raw_features])  # through the entry model, to the graph model
    client.close()
    message = raised.value.message()
    assert "features axis 1: size 5 differs from ids axis 1 (size 8)" in message
    assert message.count(f"{TIED_MODEL}.graph_0:") == 1  # the router passes the graph model's error on as it is


def test_an_http_remote_module_without_a_server_raises_remote_inference_error():
    from aitune_triton.errors import RemoteInferenceError

    with pytest.raises(RemoteInferenceError, match="cannot read the configuration of model 'nothing'"):
        RemoteModule(f"localhost:{free_port()}", "nothing", protocol="http", timeout_s=5)
