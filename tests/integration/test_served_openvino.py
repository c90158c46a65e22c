"""OpenVINO models served by Triton (the Python backend running the shipped OpenVINO runtime) return
what the in-process backend returns: the same IR compiled with the same properties."""

from __future__ import annotations

import ast
import json

import pytest
import torch
from conftest import OPENVINO_INT8_MODEL, OPENVINO_MODEL

from aitune_triton import RemoteModule

pytestmark = pytest.mark.triton


def _runtime_options(served, name: str) -> dict:
    """The RUNTIME_OPTIONS a generated graph model's model.py passes to its runtime."""
    text = (served.repository / f"{name}.graph_0" / "1" / "model.py").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("RUNTIME_OPTIONS = json.loads(")]
    return json.loads(ast.literal_eval(line[len("RUNTIME_OPTIONS = json.loads(") : -1]))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_fp32_model_with_measured_threads_serves_the_in_process_outputs(served, protocol):
    eager, module = served.extra[OPENVINO_MODEL]
    options = module.tuned_graphs[0].backend.to_dict()["options"]
    assert "precision" not in options and options["inference_num_threads"] >= 1
    assert _runtime_options(served, OPENVINO_MODEL) == options
    version = served.repository / f"{OPENVINO_MODEL}.graph_0" / "1"
    assert (version / "model.xml").is_file() and (version / "model.bin").is_file()
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    remote = RemoteModule(url, OPENVINO_MODEL, protocol=protocol)

    generator = torch.Generator().manual_seed(7)
    for batch, length in ((2, 5), (3, 9), (1, 4)):  # (2, 5) was never recorded
        ids, mask = torch.randint(0, 50, (batch, length), generator=generator), torch.ones(batch, length)
        with torch.no_grad():
            local, want = module(ids, mask), eager(ids, mask)
        got = remote(ids, mask)
        for g, l, w in zip([got["hidden"], *got["pooled"]], [local["hidden"], *local["pooled"]], [want["hidden"], *want["pooled"]]):
            torch.testing.assert_close(g, l, atol=1e-6, rtol=1e-6)  # same IR, same compile properties
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_an_int8_model_serves_the_in_process_quantized_outputs(served):
    eager, module = served.extra[OPENVINO_INT8_MODEL]
    options = module.tuned_graphs[0].backend.to_dict()["options"]
    assert options["precision"] == "int8" and "inference_num_threads" in options
    assert _runtime_options(served, OPENVINO_INT8_MODEL) == options
    remote = RemoteModule(served.server.grpc_url, OPENVINO_INT8_MODEL, protocol="grpc")

    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        local, want = module(x), eager(x)
    got = remote(x)

    torch.testing.assert_close(got, local, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, want, atol=1e-6)  # the quantized model, not a float one
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= 0.98
