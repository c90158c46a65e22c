"""Padded batching, served: the session's TokenNet (ids + 0/1 mask, ONNX Runtime) passed the padding
invariance check, so its graph model takes requests of different lengths in one batch.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from conftest import ORT_TORCHSCRIPT_MODEL, TIED_MODEL
from tritonclient.utils import InferenceServerException

from aitune_triton.triton.config import read_model_config

pytestmark = pytest.mark.triton

GRAPH_MODEL = f"{ORT_TORCHSCRIPT_MODEL}.graph_0"


def _io(served, model: str) -> dict:
    latest = max((p for p in (served.repository / model).iterdir() if (p / "io.json").is_file()), key=lambda p: int(p.name))
    return json.loads((latest / "io.json").read_text())


def test_the_padded_graph_model_allows_ragged_batches_on_both_inputs_and_its_io_json_says_how_to_pad(served):
    config = read_model_config(served.repository / GRAPH_MODEL / "config.pbtxt")
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    assert [(i.name, i.allow_ragged_batch) for i in config.input] == [("ids", True), ("mask", True)]
    padding = _io(served, GRAPH_MODEL)["padding"]
    assert padding["input_names"] == ["ids", "mask"] and padding["input_axes"] == [1, 1]
    assert padding["pad_values"] == [0, 0] and padding["masks"] == [False, True]
    assert dict(zip(padding["output_names"], padding["output_axes"])) == {"hidden": 1, "pooled.0": None}


def test_a_graph_spec_without_pad_values_is_exported_as_before(served):
    config = read_model_config(served.repository / f"{TIED_MODEL}.graph_0" / "config.pbtxt")
    assert not any(i.allow_ragged_batch for i in config.input)
    assert "padding" not in _io(served, f"{TIED_MODEL}.graph_0")


def _request(length: int, seed: int, mask_value: float = 1.0) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (1, length), generator=generator).numpy()
    return [ids, np.full((1, length), mask_value, dtype=np.float32)]


def _infer(url: str, arrays: list[np.ndarray], model: str = GRAPH_MODEL):
    client = httpclient.InferenceServerClient(url)
    inputs = []
    for name, array, datatype in zip(("ids", "mask"), arrays, ("INT64", "FP32")):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        result = client.infer(model, inputs)
        return result.as_numpy("hidden"), result.as_numpy("pooled.0")
    except InferenceServerException as error:
        return error
    finally:
        client.close()


def test_concurrent_requests_of_different_lengths_each_get_their_eager_outputs(served):
    eager, _ = served.extra[ORT_TORCHSCRIPT_MODEL]
    requests = [_request(length, seed) for seed, length in enumerate((4, 9, 5, 7, 6, 8, 4, 9))]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda arrays: _infer(served.server.http_url, arrays), requests))
    with torch.no_grad():
        for arrays, answer in zip(requests, answers):
            assert not isinstance(answer, Exception), answer
            want = eager(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
            np.testing.assert_allclose(answer[0], want["hidden"].numpy(), atol=1e-4, rtol=1e-4)
            np.testing.assert_allclose(answer[1], want["pooled"][0].numpy(), atol=1e-4, rtol=1e-4)


def test_one_bad_request_in_a_padded_batch_gets_invalid_argument_and_the_others_their_eager_outputs(served):
    eager, _ = served.extra[ORT_TORCHSCRIPT_MODEL]
    requests = [_request(length, seed) for seed, length in enumerate((4, 9, 5, 7, 6, 8))]
    requests[2] = _request(5, 2, mask_value=2.0)  # not a 0/1 mask
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda arrays: _infer(served.server.http_url, arrays), requests))
    assert isinstance(answers[2], InferenceServerException) and "'mask' is a mask but holds values other than 0 and 1" in str(answers[2])
    with torch.no_grad():
        for index, (arrays, answer) in enumerate(zip(requests, answers)):
            if index == 2:
                continue
            assert not isinstance(answer, Exception), answer
            want = eager(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
            np.testing.assert_allclose(answer[0], want["hidden"].numpy(), atol=1e-4, rtol=1e-4)


def test_the_entry_model_refuses_a_bad_mask_itself_with_invalid_argument(served):
    """Through the router a graph model's own refusal would come back over BLS as INTERNAL (500): the
    router runs the padding checks first and answers 400."""
    answer = _infer(served.server.http_url, _request(5, 3, mask_value=2.0), model=ORT_TORCHSCRIPT_MODEL)
    assert isinstance(answer, InferenceServerException), answer
    assert answer.status() == "400" and "'mask' is a mask but holds values other than 0 and 1" in str(answer)
    good = _infer(served.server.http_url, _request(5, 3), model=ORT_TORCHSCRIPT_MODEL)
    assert not isinstance(good, Exception), good
