"""An ensemble of a BYTES-in preprocess step, a tuned TwoInputNet and a postprocess step, served by
the embedded tritonserver and called with tritonclient (HTTP and gRPC) and with plain HTTP JSON;
outputs are compared per leaf with the same pipeline run in process around the eager net."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import text_steps
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from nets import TwoInputNet
from repo_helpers import fast_onnxruntime, tuned_two_spec_net
from triton_helpers import require_tritonserver
from tritonclient.utils import InferenceServerException

import aitune_triton
from aitune_triton.triton.exporter import export
from aitune_triton.triton.server import TritonServer

pytestmark = pytest.mark.triton

NAME = "ens_two_input_net"
ENSEMBLE = "ens_text"
BAD_OUTPUT_ENSEMBLE = "ens_bad_output"
POST_ONLY_ENSEMBLE = "ens_post_only"
SINGLE_ENSEMBLE = "ens_single_text"
SENTENCES = ["hello world", "h\u00e9llo, caf\u00e9", "a", "The cat sat on the mat."]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    require_tritonserver()
    root = tmp_path_factory.mktemp("ensemble")
    module = tuned_two_spec_net(NAME, root)
    repository = root / "repo"
    result = export(module, repository, show_progress=False, preprocess=text_steps.featurize,
                    postprocess="text_steps:classify", ensemble_name=ENSEMBLE)
    assert result.ensemble_model == ENSEMBLE
    # The same module under another entry name, with a postprocess step that returns float64 for a TYPE_FP32 output.
    export(module, repository, name=f"{NAME}_b", show_progress=False, preprocess=text_steps.featurize,
           postprocess=text_steps.wrong_dtype, ensemble_name=BAD_OUTPUT_ENSEMBLE)
    # A postprocess step alone: the ensemble's inputs are the entry model's (optional) inputs.
    export(module, repository, name=f"{NAME}_c", show_progress=False, postprocess=text_steps.softmax,
           ensemble_name=POST_ONLY_ENSEMBLE)
    # A module with one graph spec is one model without a router; the ensemble calls that model, which batches.
    torch.manual_seed(0)
    single = aitune_triton.Module(TwoInputNet().eval(), name=f"{NAME}_single", strategy=fast_onnxruntime(),
                                  cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 3, 5):
            single(torch.randn(batch, 8))
    single.tune()
    single_result = export(single, repository, show_progress=False, preprocess=text_steps.featurize,
                           postprocess=text_steps.classify, ensemble_name=SINGLE_ENSEMBLE)
    assert single_result.graph_models == [f"{NAME}_single"]  # no router, no .graph_0
    with TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=180) as server:
        yield server, module.module  # the wrapped net itself; its eager copy is below


def eager_pipeline(module, sentences):
    """featurize -> eager TwoInputNet -> classify, in process (the reference)."""
    import copy

    eager = copy.deepcopy(module)  # a deepcopy of a wrapped module is the plain eager module
    features = text_steps.featurize.function(text=np.array(sentences, dtype=object))
    with torch.no_grad():
        logits = eager(torch.from_numpy(features["x"]))["logits"].numpy()
    return text_steps.classify.function(logits=logits, length=features["length"])


def infer(server, protocol, model, sentences, encoded=None):
    library = grpcclient if protocol == "grpc" else httpclient
    client = library.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    try:
        text = library.InferInput("text", [len(sentences)], "BYTES")
        text.set_data_from_numpy(np.array(encoded or [s.encode() for s in sentences], dtype=object))
        result = client.infer(model, [text])
        return {name: result.as_numpy(name) for name in ("probs", "label", "score")}
    finally:
        client.close()


def mismatches(served, reference) -> list[str]:
    """Every way the served outputs differ from the eager pipeline's, per output (empty: they agree)."""
    found = []
    if served["label"].tolist() != [label.encode() for label in reference["label"]]:
        found.append(f"label: served {served['label'].tolist()}, eager {reference['label']}")
    for name, dtype in (("probs", np.float32), ("score", np.float64)):
        if served[name].dtype != dtype:
            found.append(f"{name}: served dtype {served[name].dtype}, expected {np.dtype(dtype)}")
        if served[name].shape != np.shape(reference[name]) or not np.allclose(served[name], reference[name], rtol=1e-5, atol=1e-5):
            found.append(f"{name}: served {served[name]!r}, eager {reference[name]!r}")
    return found


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sentences_sent_as_bytes_come_back_as_the_eager_pipeline_outputs(ensemble, protocol):
    server, module = ensemble
    for sentences in (SENTENCES, SENTENCES[:1], SENTENCES[1:4] + ["x"]):
        assert mismatches(infer(server, protocol, ENSEMBLE, sentences), eager_pipeline(module, sentences)) == []


def test_plain_http_json_reaches_the_ensemble_and_gets_the_eager_outputs(ensemble):
    server, module = ensemble
    body = {"inputs": [{"name": "text", "shape": [len(SENTENCES)], "datatype": "BYTES", "data": SENTENCES}]}
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{ENSEMBLE}/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES" and outputs["probs"]["shape"] == [len(SENTENCES), 3]
    reference = eager_pipeline(module, SENTENCES)
    served = {
        "label": np.array([label.encode() for label in outputs["label"]["data"]], dtype=object),
        "probs": np.array(outputs["probs"]["data"], dtype=np.float32).reshape(outputs["probs"]["shape"]),
        "score": np.array(outputs["score"]["data"], dtype=np.float64),
    }
    assert mismatches(served, reference) == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_step_function_that_raises_answers_an_error_and_the_ensemble_serves_the_next_request(ensemble, protocol):
    server, module = ensemble
    with pytest.raises(InferenceServerException) as raised:
        infer(server, protocol, ENSEMBLE, ["fine", text_steps.BAD_SENTENCE])
    assert f"{NAME}.preprocess: text_steps:featurize raised ValueError: cannot featurize 'boom'" in raised.value.message()
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_model_ready(ENSEMBLE) and client.is_model_ready(f"{NAME}.preprocess")
    finally:
        client.close()
    assert mismatches(infer(server, protocol, ENSEMBLE, SENTENCES[:2]), eager_pipeline(module, SENTENCES[:2])) == []


def test_text_that_is_not_utf8_is_refused_as_a_client_error(ensemble):
    server, module = ensemble
    with pytest.raises(InferenceServerException) as raised:
        infer(server, "http", ENSEMBLE, ["x"], encoded=[b"\xff\xfe"])
    assert "input 'text' item [0] is not valid UTF-8" in raised.value.message()
    assert raised.value.status() == "400"
    assert mismatches(infer(server, "http", ENSEMBLE, ["x"]), eager_pipeline(module, ["x"])) == []


def test_a_step_output_of_another_dtype_than_declared_is_an_error_not_a_cast(ensemble):
    server, _ = ensemble
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        text = httpclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"abc"], dtype=object))
        with pytest.raises(InferenceServerException, match=r"output 'probs' has dtype float64, declared TYPE_FP32"):
            client.infer(BAD_OUTPUT_ENSEMBLE, [text])
        assert client.is_model_ready(BAD_OUTPUT_ENSEMBLE)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_postprocess_only_ensemble_takes_the_module_inputs_of_either_graph_spec(ensemble, protocol):
    import copy

    server, module = ensemble
    eager = copy.deepcopy(module)
    library = grpcclient if protocol == "grpc" else httpclient
    client = library.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    generator = torch.Generator().manual_seed(3)
    try:
        for arguments in ({"x": torch.randn(3, 8, generator=generator)},
                          {"x": torch.randn(2, 8, generator=generator), "y": torch.randn(2, 4, generator=generator)}):
            inputs = []
            for name, value in arguments.items():
                tensor = library.InferInput(name, list(value.shape), "FP32")
                tensor.set_data_from_numpy(value.numpy())
                inputs.append(tensor)
            served = client.infer(POST_ONLY_ENSEMBLE, inputs).as_numpy("probs")
            with torch.no_grad():
                expected = text_steps.softmax.function(logits=eager(**arguments)["logits"].numpy())["probs"]
            np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_ensemble_around_a_single_graph_model_without_a_router_answers_like_eager(ensemble, protocol):
    server, module = ensemble

    served = infer(server, protocol, SINGLE_ENSEMBLE, SENTENCES)

    assert mismatches(served, eager_pipeline(module, SENTENCES)) == []  # TwoInputNet(seed 0) is the same net as the two-spec one
