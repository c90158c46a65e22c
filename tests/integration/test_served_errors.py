"""Client errors answered by the entry model carry a client status: HTTP 400, gRPC INVALID_ARGUMENT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SCALAR_MODEL, TIED_MODEL
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.triton

CLIENT_STATUS = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


def _refused(served, protocol: str, model: str, tensors: dict[str, np.ndarray]) -> InferenceServerException:
    """Send a raw request to ``model`` and return the error it answered with."""
    module = grpcclient if protocol == "grpc" else httpclient
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    client = module.InferenceServerClient(url)
    inputs = []
    for name, array in tensors.items():
        tensor = module.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, inputs)
    finally:
        client.close()
    return raised.value


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_request_without_inputs_to_the_entry_model_is_a_client_error_naming_the_expected_inputs(served, protocol):
    error = _refused(served, protocol, served.entry_model, {})

    assert error.status() == CLIENT_STATUS[protocol]
    assert f"{served.entry_model}: no graph model takes inputs []; expected one of: x; x, y" in error.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_input_combination_no_graph_model_takes_is_a_client_error_naming_the_inputs(served, protocol):
    error = _refused(served, protocol, served.entry_model, {"y": np.ones((2, 4), dtype=np.float32)})

    assert error.status() == CLIENT_STATUS[protocol]
    assert f"{served.entry_model}: no graph model takes inputs ['y']" in error.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_batch_above_max_batch_size_through_the_entry_model_is_a_client_error_naming_the_input(served, protocol):
    error = _refused(served, protocol, served.entry_model, {"x": np.ones((6, 8), dtype=np.float32)})

    assert error.status() == CLIENT_STATUS[protocol]
    assert (
        f"{served.graph_models[1]}: x axis 0: size 6 outside 1..5 (the batch axis: max_batch_size 5)"
    ) in error.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_size_outside_the_exported_range_through_the_entry_model_is_a_client_error_naming_the_axis(served, protocol):
    error = _refused(served, protocol, SCALAR_MODEL, {"x": np.zeros((2, 7), dtype=np.float32)})  # recorded lengths 3..5

    assert error.status() == CLIENT_STATUS[protocol]
    assert f"{SCALAR_MODEL}.graph_0: x axis 1: size 7 outside 3..5" in error.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_axes_the_artifact_ties_sent_unequal_through_the_entry_model_are_a_client_error(served, protocol):
    tensors = {"ids": np.zeros((2, 8), dtype=np.int64), "features": np.zeros((2, 5, 6), dtype=np.float32)}

    error = _refused(served, protocol, TIED_MODEL, tensors)

    assert error.status() == CLIENT_STATUS[protocol]
    assert "features axis 1: size 5 differs from ids axis 1 (size 8)" in error.message()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_entry_model_still_answers_after_refusing_requests(served, protocol):
    _refused(served, protocol, served.entry_model, {"x": np.ones((6, 8), dtype=np.float32)})
    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(served.server.grpc_url if protocol == "grpc" else served.server.http_url)
    tensor = module.InferInput("x", [2, 8], "FP32")
    x = np.ones((2, 8), dtype=np.float32)
    tensor.set_data_from_numpy(x)

    result = client.infer(served.entry_model, [tensor])

    client.close()
    expected = served.net(torch.from_numpy(x))["logits"].detach().numpy()
    np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-5, rtol=0)
