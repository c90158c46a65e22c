"""ONNX Runtime models served by Triton run the in-process artifact with the in-process session options."""

from __future__ import annotations

import ast
import json

import onnx
import pytest
import torch
from conftest import ORT_FUSED_STATIC_MODEL, ORT_INT8_MODEL, ORT_TORCHSCRIPT_MODEL

from aitune_triton import RemoteModule

pytestmark = pytest.mark.triton


def _runtime_options(served, name: str) -> dict:
    """The RUNTIME_OPTIONS a generated graph model's model.py passes to its ONNX Runtime session."""
    text = (served.repository / f"{name}.graph_0" / "1" / "model.py").read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("RUNTIME_OPTIONS = json.loads(")]
    return json.loads(ast.literal_eval(line[len("RUNTIME_OPTIONS = json.loads(") : -1]))


def _leaves(output) -> list[torch.Tensor]:
    return [output["hidden"], *output["pooled"]]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_torchscript_export_with_measured_session_options_serves_the_in_process_outputs(served, protocol):
    eager, module = served.extra[ORT_TORCHSCRIPT_MODEL]
    backend = module.tuned_graphs[0].backend
    options = backend.to_dict()["options"]
    assert options["exporter"] == "torchscript" and "precision" not in options  # fp32, the default
    assert options["graph_optimization_level"] in ("basic", "extended", "all") and options["intra_op_num_threads"] >= 1
    assert _runtime_options(served, ORT_TORCHSCRIPT_MODEL) == options
    url = served.server.grpc_url if protocol == "grpc" else served.server.http_url
    remote = RemoteModule(url, ORT_TORCHSCRIPT_MODEL, protocol=protocol)

    generator = torch.Generator().manual_seed(7)
    for batch, length in ((2, 5), (3, 9), (1, 4)):  # (2, 5) was never recorded
        ids, mask = torch.randint(0, 50, (batch, length), generator=generator), torch.ones(batch, length)
        with torch.no_grad():
            local, want = _leaves(module(ids, mask)), _leaves(eager(ids, mask))
        got = _leaves(remote(ids, mask))
        for g, l, w in zip(got, local, want):
            assert torch.equal(g, l)  # same artifact, same session options
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_an_int8_model_serves_the_in_process_quantized_outputs(served):
    eager, module = served.extra[ORT_INT8_MODEL]
    options = module.tuned_graphs[0].backend.to_dict()["options"]
    assert options["precision"] == "int8" and "intra_op_num_threads" in options
    assert _runtime_options(served, ORT_INT8_MODEL) == options
    remote = RemoteModule(served.server.grpc_url, ORT_INT8_MODEL, protocol="grpc")

    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        local, want = module(x), eager(x)
    got = remote(x)

    assert torch.equal(got, local)
    assert not torch.allclose(got, want, atol=1e-6)  # the quantized model, not a float one
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= 0.98


def test_a_fused_static_int8_bert_serves_the_in_process_outputs(served):
    eager, module = served.extra[ORT_FUSED_STATIC_MODEL]
    backend = module.tuned_graphs[0].backend
    options = backend.to_dict()["options"]
    assert options["transformer_fusion"] is True and options["quantization"] == "static" and options["precision"] == "int8"
    assert _runtime_options(served, ORT_FUSED_STATIC_MODEL) == options
    served_ops = {node.op_type for node in onnx.load(str(served.repository / f"{ORT_FUSED_STATIC_MODEL}.graph_0" / "1" / "model.onnx")).graph.node}
    assert {"SkipLayerNormalization", "QuantizeLinear"} <= served_ops  # the fused, statically quantized file is what Triton loads
    remote = RemoteModule(served.server.grpc_url, ORT_FUSED_STATIC_MODEL, protocol="grpc")

    generator = torch.Generator().manual_seed(9)
    ids, mask = torch.randint(1, 64, (2, 9), generator=generator), torch.ones(2, 9, dtype=torch.long)  # never recorded
    with torch.no_grad():
        local, want = module(ids, mask), eager(ids, mask)
    got = remote(ids, mask)

    assert torch.equal(got, local)
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() >= 0.95
