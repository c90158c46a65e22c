"""A tuned module served by a real tritonserver gives the same results as the module in-process."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from aitune_triton import RemoteModule
from aitune_triton.errors import GraphSpecMismatchError, RemoteInferenceError, TritonServerError
from aitune_triton.triton.server import TritonServer
from triton_helpers import processes_mentioning

pytestmark = pytest.mark.triton

OUTPUT_NAMES = ("hidden.0", "hidden.1", "logits")


def _inputs(batch: int, with_y: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, generator=generator)
    return (x, torch.randn(batch, 4, generator=generator)) if with_y else (x,)


def _leaves(output) -> dict[str, torch.Tensor]:
    """The output leaves by tensor name, after checking the nested structure (a dict holding a list)."""
    assert isinstance(output, dict)
    assert sorted(output) == ["hidden", "logits"]
    assert isinstance(output["hidden"], list) and len(output["hidden"]) == 2
    leaves = {"hidden.0": output["hidden"][0], "hidden.1": output["hidden"][1], "logits": output["logits"]}
    assert all(isinstance(t, torch.Tensor) for t in leaves.values())
    return leaves


def _assert_same(actual, expected, atol: float) -> None:
    actual, expected = _leaves(actual), _leaves(expected)
    for name in OUTPUT_NAMES:
        assert actual[name].shape == expected[name].shape, name
        assert actual[name].dtype == expected[name].dtype, name
        torch.testing.assert_close(actual[name], expected[name].detach(), atol=atol, rtol=0, msg=name)


def _remote(served, protocol: str) -> RemoteModule:
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    return RemoteModule(url, served.entry_model, protocol=protocol)


def _raw_input(name: str, array: np.ndarray):
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("batch", [2, 4])
@pytest.mark.parametrize("with_y", [True, False], ids=["x_and_y_onnxruntime", "x_only_aoti"])
def test_remote_module_returns_the_eager_structure_and_values_at_an_unrecorded_batch_size(served, protocol, batch, with_y):
    arguments = _inputs(batch, with_y, seed=10 * batch + with_y)

    with _remote(served, protocol) as remote:
        output = remote(*arguments)

    _assert_same(output, served.net(*arguments), atol=1e-5)
    assert output["hidden"][0].shape == (batch, 16)
    assert output["hidden"][1].shape == (batch,)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_remote_module_outputs_equal_the_in_process_tuned_module(served, protocol):
    with _remote(served, protocol) as remote:
        for batch, with_y in ((2, True), (4, False), (3, True)):
            arguments = _inputs(batch, with_y, seed=100 + batch)
            _assert_same(remote(*arguments), served.module(*arguments), atol=1e-6)


def test_remote_module_accepts_keyword_arguments_like_the_module(served):
    x, y = _inputs(2, True, seed=7)

    with _remote(served, "grpc") as remote:
        output = remote(y=y, x=x)

    _assert_same(output, served.net(x, y=y), atol=1e-5)


def test_remote_module_rejects_a_call_structure_that_was_never_recorded(served):
    (x,) = _inputs(2, False, seed=8)

    with _remote(served, "grpc") as remote, pytest.raises(GraphSpecMismatchError, match="scale: const"):
        remote(x, scale=2.0)


def test_remote_module_refuses_a_call_no_graph_spec_matches_as_a_runtime_error_and_a_value_error(served):
    # the same class the in-process tuned module raises: code written for AITune catches RuntimeError
    (x,) = _inputs(2, False, seed=8)

    with _remote(served, "grpc") as remote:
        with pytest.raises(RuntimeError, match="matches no exported graph spec"):
            remote(x, scale=2.0)
        with pytest.raises(ValueError, match="does not fit the exported shapes"):
            remote(torch.randn(2, 9), torch.randn(2, 4))  # a fixed feature axis of another size


def test_raw_router_request_with_only_x_returns_the_eager_values(served):
    (x,) = _inputs(3, False, seed=11)
    expected = _leaves(served.net(x))
    client = grpcclient.InferenceServerClient(served.server.grpc_url)

    result = client.infer(served.entry_model, [_raw_input("x", x.numpy())])

    for name in OUTPUT_NAMES:
        array = result.as_numpy(name)
        assert array is not None, name
        assert array.dtype == np.float32
        np.testing.assert_allclose(array.reshape(-1), expected[name].detach().numpy().reshape(-1), atol=1e-5, rtol=0)
    assert result.as_numpy("hidden.0").shape == (3, 16)
    assert result.as_numpy("logits").shape == (3, 3)
    client.close()


def test_raw_router_request_returns_per_sample_scalars_in_the_shape_its_config_declares(served):
    (x,) = _inputs(3, False, seed=12)
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    declared = {t["name"]: [int(d) for d in t["dims"]] for t in client.get_model_config(served.entry_model, as_json=True)["config"]["output"]}

    result = client.infer(served.entry_model, [_raw_input("x", x.numpy())])

    client.close()
    assert declared["hidden.1"] == [-1]
    assert result.as_numpy("hidden.1").shape == tuple(served.net(x)["hidden"][1].shape) == (3,)


def test_router_request_with_an_input_set_no_graph_takes_fails_naming_the_expected_inputs(served):
    y = np.ones((2, 4), dtype=np.float32)
    client = grpcclient.InferenceServerClient(served.server.grpc_url)

    with pytest.raises(InferenceServerException) as raised:
        client.infer(served.entry_model, [_raw_input("y", y)])

    client.close()
    message = raised.value.message()
    assert f"{served.entry_model}: no graph model takes inputs ['y']" in message
    assert "expected one of: x; x, y" in message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("batch", [6, 11])
def test_a_batch_larger_than_max_batch_size_is_split_into_requests_and_joined_in_order(served, protocol, batch):
    arguments = _inputs(batch, True, seed=13 + batch)  # graph_0's max_batch_size is 5: 3 + 3, or 4 + 4 + 3

    with _remote(served, protocol) as remote:
        output = remote(*arguments)

    _assert_same(output, served.net(*arguments), atol=1e-5)
    assert output["hidden"][1].shape == (batch,)


def test_the_server_itself_refuses_a_batch_larger_than_max_batch_size(served):
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    (x,) = _inputs(6, False, seed=13)

    with pytest.raises(InferenceServerException, match="batch-size must be <= 5"):
        client.infer(served.graph_models[1], [_raw_input("x", x.numpy())])
    client.close()


def test_concurrent_grpc_requests_are_batched_together_and_all_return_correct_results(served):
    client = grpcclient.InferenceServerClient(served.server.grpc_url)

    def counts():
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
        return {s["name"]: (int(s.get("inference_count", 0)), int(s.get("execution_count", 0))) for s in stats}

    before = counts()
    remote = _remote(served, "grpc")  # one client shared by every thread
    failures: list[str] = []
    checked = []

    def work(thread: int) -> None:
        try:
            for step in range(8):
                batch, with_y = 1 + (thread + step) % 2, (thread + step) % 3 != 0
                arguments = _inputs(batch, with_y, seed=1000 * thread + step)
                _assert_same(remote(*arguments), served.net(*arguments), atol=1e-5)
                checked.append((thread, step))
        except Exception as error:  # collected: pytest cannot see assertions raised in threads
            failures.append(f"thread {thread}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    remote.close()
    after = counts()
    client.close()

    assert failures == []
    assert len(checked) == 64
    requests_seen = executions = 0
    for model in served.graph_models:
        requests_seen += after[model][0] - before.get(model, (0, 0))[0]
        executions += after[model][1] - before.get(model, (0, 0))[1]
    assert requests_seen == sum(1 + (t + s) % 2 for t in range(8) for s in range(8))  # samples, not requests
    # Fewer executions than requests: some execute() calls received several requests and concatenated them.
    assert executions < 64


def test_remote_module_on_a_graph_model_name_points_to_the_entry_model(served):
    with pytest.raises(RemoteInferenceError) as raised:
        RemoteModule(served.server.grpc_url, served.graph_models[0])

    assert f"model '{served.graph_models[0]}'" in str(raised.value)
    assert "not an entry model" in str(raised.value)
    assert "Pass the module's name" in str(raised.value)


def test_remote_module_on_an_unknown_model_raises_remote_inference_error(served):
    with pytest.raises(RemoteInferenceError, match="the server has no model 'no_such_model'"):
        RemoteModule(served.server.http_url, "no_such_model", protocol="http")


def test_a_server_on_a_repository_with_a_broken_model_raises_with_the_model_error(tmp_path):
    model_dir = tmp_path / "repo" / "broken"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "a" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'output { name: "b" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        "instance_group { kind: KIND_CPU count: 1 }\n"
    )
    (model_dir / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('initialize failed on purpose: 7f3a')\n"
        "\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    )
    server = TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log", show_progress=False, timeout_s=120)

    started = time.monotonic()
    with pytest.raises(TritonServerError) as raised:
        server.start()

    assert time.monotonic() - started < 60  # it failed on the error, not on the timeout
    assert any("initialize failed on purpose: 7f3a" in line and "broken" in line for line in raised.value.log_lines)
    assert "initialize failed on purpose: 7f3a" in str(raised.value)
    assert not server.is_running()
    assert processes_mentioning(str(tmp_path / "repo")) == []
    assert "initialize failed on purpose: 7f3a" in (tmp_path / "server.log").read_text()  # the log given is kept


def test_stopping_a_server_leaves_no_tritonserver_or_stub_process_behind(tmp_path):
    repository = tmp_path / "repo"
    (repository / "identity" / "1").mkdir(parents=True)
    (repository / "identity" / "config.pbtxt").write_text(
        'name: "identity"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "a" data_type: TYPE_FP32 dims: [ -1 ] }\n'
        'output { name: "b" data_type: TYPE_FP32 dims: [ -1 ] }\n'
        "instance_group { kind: KIND_CPU count: 2 }\n"
    )
    (repository / "identity" / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb_utils\n"
        "\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('b', pb_utils.get_input_tensor_by_name(r, 'a').as_numpy())])\n"
        "                for r in requests]\n"
    )
    server = TritonServer(repository, show_progress=False, timeout_s=120)
    server.start()
    try:
        process = server._process
        assert server.is_running()
        running = processes_mentioning(str(repository))
        assert process.pid in running
        assert len(running) >= 3  # the server and one Python-backend stub per instance
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answer = client.infer("identity", [_raw_input("a", np.arange(3, dtype=np.float32))]).as_numpy("b")
        client.close()
        np.testing.assert_array_equal(answer, [0, 1, 2])
    finally:
        server.stop()

    assert process.poll() is not None
    assert not server.is_running()
    assert processes_mentioning(str(repository)) == []
    assert not (server.log_path.parent / "backends").exists()
    assert not server.log_path.parent.exists()  # a clean run leaves no temporary files (only failed runs keep the log)
