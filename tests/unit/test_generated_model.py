"""The generated model.py files run in process against a stand-in of triton_python_backend_utils.

Each module is tuned and exported by the real exporter into tmp_path; the generated model.py is
imported with tests/pb_utils_standin.py installed as ``triton_python_backend_utils``, and its
``initialize()`` / ``execute()`` are called as the Python backend calls them. Good requests must
give the eager outputs; every bad request (a size outside the range, axes the artifact ties that
differ, a token id past the embedding table, a wrong dtype, a missing input) must get an error
response of its own, the other requests of the same call their outputs, and execute() must never
raise.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pb_utils_standin as pb_utils
import pytest
import torch
from google.protobuf import json_format
from nets import Bf16BoolNet, PerSampleNet, tuned_two_input_net

import aitune_triton
from aitune_triton import Module, OneBackendStrategy
from aitune_triton.triton.check import check_repository
from aitune_triton.triton.config import read_model_config


class TokenFeatureNet(torch.nn.Module):
    """Token ids (an embedding: ids must be 0..49) added to features whose token axis must match."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(50, 6)

    def forward(self, ids: torch.Tensor, features: torch.Tensor):
        hidden = self.embedding(ids) + features
        return {"hidden": hidden, "pooled": hidden.mean(1)}


@pytest.fixture(autouse=True)
def standin(monkeypatch):
    """The stand-in as ``triton_python_backend_utils``, and no BLS models left from another test."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    pb_utils.clear_models()
    yield pb_utils
    pb_utils.clear_models()


def load_model(repository: Path, name: str, version: int = 1) -> Any:
    """Import ``repository/name/version/model.py`` and initialize it as the Python backend does."""
    source = repository / name / str(version) / "model.py"
    spec = importlib.util.spec_from_file_location(f"generated_{name.replace('.', '_')}_{version}", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(read_model_config(repository / name / "config.pbtxt"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_repository": str(repository / name),
            "model_version": str(version),
            "model_name": name,
            "model_config": json.dumps(config),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    pb_utils.register_model(name, model, config)
    return model


def request(**arrays: Any) -> pb_utils.InferenceRequest:
    """A request as Triton hands it to execute(): numpy arrays, torch tensors through DLPack (bfloat16)."""
    tensors = [
        pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))
        if isinstance(value, torch.Tensor)
        else pb_utils.Tensor(name, value)
        for name, value in arrays.items()
    ]
    return pb_utils.InferenceRequest(model_name="", inputs=tensors, requested_output_names=[])


def outputs(response: pb_utils.InferenceResponse) -> dict[str, torch.Tensor]:
    assert not response.has_error(), response.error().message()
    return {tensor.name(): tensor.torch() for tensor in response.output_tensors()}


def error(response: pb_utils.InferenceResponse) -> pb_utils.TritonError:
    assert response.has_error(), "expected an error response"
    return response.error()


@pytest.fixture(scope="module")
def token_repository(tmp_path_factory):
    """TokenFeatureNet (one graph spec, ONNX Runtime) exported without a router, and its eager copy."""
    root = tmp_path_factory.mktemp("token")
    torch.manual_seed(0)
    net = TokenFeatureNet().eval()
    eager = copy.deepcopy(net)
    module = Module(net, name="token_net", strategy=OneBackendStrategy("onnxruntime"), cache_dir=root / "cache")
    with torch.no_grad():
        for batch, seq in ((1, 2), (3, 5), (4, 3)):
            module(torch.randint(0, 50, (batch, seq)), torch.randn(batch, seq, 6))
    module.tune()
    result = aitune_triton.export(module, root / "repository", show_progress=False)
    assert module.tuned_graphs[0].spec.dims["batch"].max >= 4  # recorded up to 4; the batch size sweep may widen it
    return result, eager


def test_a_single_graph_spec_is_one_model_that_checks_its_own_inputs(token_repository):
    result, _ = token_repository
    assert result.entry_model == "token_net" and result.graph_models == ["token_net"]
    assert sorted(p.name for p in result.repository.iterdir()) == ["token_net"]
    config = read_model_config(result.repository / "token_net" / "config.pbtxt")
    io = json.loads((result.repository / "token_net" / "1" / "io.json").read_text())
    assert config.max_batch_size == io["max_batch_size"] >= 4 and "aitune_triton.routes" in config.parameters
    routes = json.loads(config.parameters["aitune_triton.routes"].string_value)
    assert [graph["model_name"] for graph in routes["graphs"]] == ["token_net"]
    assert "pb_utils.InferenceRequest(" not in (result.repository / "token_net" / "1" / "model.py").read_text()
    report = check_repository(result.repository)
    assert report.ok and report.model("token_net").kind == "entry", list(report.findings())


def test_the_direct_model_answers_good_requests_like_eager_and_each_bad_one_with_its_own_error(token_repository):
    result, eager = token_repository
    model = load_model(result.repository, "token_net")
    rng = np.random.default_rng(0)
    good = [(rng.integers(0, 50, (b, 3)), rng.standard_normal((b, 3, 6), dtype=np.float32)) for b in (1, 2)]
    bad = {
        "seq 6 outside 2..5": request(ids=rng.integers(0, 50, (1, 6)), features=rng.standard_normal((1, 6, 6), dtype=np.float32)),
        "ties differ": request(ids=rng.integers(0, 50, (1, 3)), features=rng.standard_normal((1, 4, 6), dtype=np.float32)),
        "token id 99": request(ids=np.array([[1, 99, 2]]), features=rng.standard_normal((1, 3, 6), dtype=np.float32)),
        "int32 ids": request(ids=np.array([[1, 2, 3]], dtype=np.int32), features=rng.standard_normal((1, 3, 6), dtype=np.float32)),
        "features missing": request(ids=np.array([[1, 2, 3]])),
    }
    requests = [request(ids=good[0][0], features=good[0][1]), *bad.values(), request(ids=good[1][0], features=good[1][1])]

    responses = model.execute(requests)

    assert len(responses) == len(requests)
    for (ids, features), response in zip(good, (responses[0], responses[-1])):
        with torch.no_grad():
            expected = eager(torch.from_numpy(ids), torch.from_numpy(features))
        got = outputs(response)
        torch.testing.assert_close(got["hidden"], expected["hidden"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["pooled"], expected["pooled"], atol=1e-5, rtol=0)
    messages = {key: error(response) for key, response in zip(bad, responses[1:-1])}
    assert all(e.code() == pb_utils.TritonError.INVALID_ARG for e in messages.values()), messages
    assert "features axis 1: size 6 outside 2..5" in messages["seq 6 outside 2..5"].message()
    assert "ids axis 1" in messages["ties differ"].message() and "features axis 1" in messages["ties differ"].message()
    assert "99" in messages["token id 99"].message() and "0..49" in messages["token id 99"].message()
    assert "input 'ids' has dtype int32, expected int64" in messages["int32 ids"].message()
    assert "input 'features' is missing" in messages["features missing"].message()


def test_an_exception_in_the_runtime_fails_only_its_group_and_execute_returns(token_repository, monkeypatch):
    result, _ = token_repository
    model = load_model(result.repository, "token_net")

    def broken(arrays):
        raise RuntimeError("the runtime failed")

    monkeypatch.setattr(model.served, "run", broken)
    responses = model.execute([request(ids=np.array([[1, 2]]), features=np.zeros((1, 2, 6), np.float32))])

    assert "RuntimeError: the runtime failed" in error(responses[0]).message()


def test_the_router_sends_each_request_to_its_graph_model_and_passes_errors_on(tmp_path):
    module, _ = tuned_two_input_net("router_net", tmp_path)
    eager = copy.deepcopy(module.module)
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False)
    assert result.graph_models == ["router_net.graph_0", "router_net.graph_1"]
    for name in result.graph_models:
        load_model(result.repository, name)
    router = load_model(result.repository, "router_net")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((3, 8), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32)
    import asyncio

    responses = asyncio.run(router.execute([
        request(x=x, y=y),
        request(x=x),
        request(y=y),  # no graph model takes y alone
        request(x=rng.standard_normal((6, 8), dtype=np.float32)),  # batch 6 > max_batch_size 5
    ]))

    with torch.no_grad():
        for response, args in ((responses[0], (x, y)), (responses[1], (x,))):
            expected = eager(*[torch.from_numpy(a) for a in args])
            got = outputs(response)
            torch.testing.assert_close(got["hidden.0"], expected["hidden"][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(got["hidden.1"], expected["hidden"][1], atol=1e-5, rtol=0)  # (B,): no column axis here
            torch.testing.assert_close(got["logits"], expected["logits"], atol=1e-5, rtol=0)
    assert "no graph model takes inputs ['y']" in error(responses[2]).message()
    assert error(responses[3]).code() == pb_utils.TritonError.INVALID_ARG
    assert "x axis 0: size 6 outside 1..5" in error(responses[3]).message()


def test_router_true_keeps_the_router_for_one_graph_spec_and_false_is_refused_for_two(tmp_path):
    module, _ = tuned_two_input_net("two_specs", tmp_path)
    with pytest.raises(aitune_triton.errors.InvalidArgumentError, match="router: False needs a module with one graph spec"):
        aitune_triton.export(module, tmp_path / "repository", router=False, show_progress=False)
    with pytest.raises(aitune_triton.errors.InvalidArgumentError, match="router: expected None"):
        aitune_triton.export(module, tmp_path / "repository", router="yes", show_progress=False)  # type: ignore[call-overload]
    assert not (tmp_path / "repository").exists()


def test_per_sample_vectors_are_dims_1_reshaped_to_scalars_and_batch_in_the_direct_model(tmp_path):
    torch.manual_seed(0)
    net = PerSampleNet().eval()
    eager = copy.deepcopy(net)
    module = Module(net, name="per_sample", strategy=OneBackendStrategy("onnxruntime"), cache_dir=tmp_path / "cache")
    with torch.no_grad():
        for batch in (1, 3, 5):
            module(torch.randn(batch, 4), torch.randint(1, 9, (batch,)), torch.rand(batch) + 0.5)
    module.tune()
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False)
    config = read_model_config(result.repository / "per_sample" / "config.pbtxt")
    # Recorded up to 5; the batch size sweep sets the served max (never below what was recorded).
    assert config.max_batch_size == module.tuned_graphs[0].spec.dims["batch"].max >= 5
    assert config.dynamic_batching.max_queue_delay_microseconds >= 0
    for tensor in [*config.input, *config.output]:
        if tensor.name != "x":
            assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == [], tensor
    model = load_model(result.repository, "per_sample")
    rng = np.random.default_rng(2)
    calls = [(rng.standard_normal((b, 4), dtype=np.float32), rng.integers(1, 9, (b,)), rng.random(b, dtype=np.float32) + 0.5)
             for b in (2, 3)]

    # Triton applies the reshape before execute(): the model sees (B,) tensors, and joins both requests.
    responses = model.execute([request(x=x, lengths=lengths, scale=scale) for x, lengths, scale in calls])

    with torch.no_grad():
        for (x, lengths, scale), response in zip(calls, responses):
            expected = eager(torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(scale))
            got = outputs(response)
            assert got["total"].shape == (len(x),) and got["doubled"].dtype == torch.int64
            torch.testing.assert_close(got["total"], expected["total"], atol=1e-5, rtol=0)
            torch.testing.assert_close(got["doubled"], expected["doubled"])


@pytest.fixture(scope="module")
def bf16_module(tmp_path_factory):
    """Bf16BoolNet tuned with AOTInductor on CPU, and its eager copy."""
    root = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    net = Bf16BoolNet().eval()
    eager = copy.deepcopy(net)
    module = Module(net, name="bf16_net", strategy=OneBackendStrategy("aoti"), cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 3, 5):
            module(torch.randn(batch, 4).to(torch.bfloat16), torch.rand(batch, 3) > 0.5)
    module.tune()
    return module, eager


class AotiStandIn:
    """Stands in for Triton's PyTorch backend serving a native ``torch_aoti`` model (which the
    embedded server lacks): INPUT__<i> in, OUTPUT__<i> out, tensors through DLPack, the real package run."""

    def __init__(self, package: Path) -> None:
        self.runner = torch._inductor.aoti_load_package(str(package))

    def execute(self, requests):
        responses = []
        for request_ in requests:
            inputs = sorted(request_.inputs(), key=lambda t: int(t.name().rsplit("__", 1)[1]))
            with torch.inference_mode():
                results = self.runner(*[torch.utils.dlpack.from_dlpack(t.to_dlpack()) for t in inputs])
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor.from_dlpack(f"OUTPUT__{i}", torch.utils.dlpack.to_dlpack(r.contiguous())) for i, r in enumerate(results)
            ]))
        return responses


def test_the_router_renames_bf16_tensors_for_a_native_model_through_dlpack(bf16_module, tmp_path):
    module, eager = bf16_module
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False, target="native")
    assert result.targets == {"bf16_net.graph_0": "native"}
    pb_utils.register_model("bf16_net.graph_0", AotiStandIn(result.repository / "bf16_net.graph_0" / "1" / "model.pt2"), {})
    router = load_model(result.repository, "bf16_net")
    x = torch.randn(3, 4).to(torch.bfloat16)
    keep = torch.tensor([[True, False, True]] * 3)
    import asyncio

    (response,) = asyncio.run(router.execute([request(x=x, keep=keep.numpy())]))

    got = outputs(response)
    with torch.no_grad():
        expected = eager(x, keep)
    assert got["y"].dtype == torch.bfloat16
    torch.testing.assert_close(got["y"], expected["y"], atol=1e-2, rtol=1e-2)
    assert torch.equal(got["positive"], expected["positive"])


def test_bf16_and_bool_tensors_are_declared_as_such_and_bf16_moves_through_dlpack(bf16_module, tmp_path):
    module, eager = bf16_module
    result = aitune_triton.export(module, tmp_path / "repository", show_progress=False)
    config = read_model_config(result.repository / "bf16_net" / "config.pbtxt")
    types = {t.name: type(t).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[t.data_type].name
             for t in [*config.input, *config.output]}
    assert types == {"x": "TYPE_BF16", "keep": "TYPE_BOOL", "y": "TYPE_BF16", "positive": "TYPE_BOOL", "kept": "TYPE_BF16"}
    model = load_model(result.repository, "bf16_net")
    x = torch.randn(2, 4).to(torch.bfloat16)
    keep = torch.tensor([[True, False, True], [False, False, True]])
    x2 = torch.randn(1, 4).to(torch.bfloat16)
    keep2 = torch.tensor([[True, True, False]])

    # The stand-in's as_numpy() raises on bfloat16, as numpy has no such dtype.
    responses = model.execute([
        request(x=x, keep=keep.numpy()),
        request(x=x.float(), keep=keep.numpy()),  # float32 where the artifact takes bfloat16
        request(x=x2, keep=keep2.numpy()),
    ])

    with torch.no_grad():
        for (args, response) in (((x, keep), responses[0]), ((x2, keep2), responses[2])):
            expected = eager(*args)
            got = outputs(response)
            assert got["y"].dtype == torch.bfloat16 and got["positive"].dtype == torch.bool
            torch.testing.assert_close(got["y"], expected["y"], atol=1e-2, rtol=1e-2)
            torch.testing.assert_close(got["kept"], expected["kept"], atol=1e-2, rtol=1e-2)
            assert torch.equal(got["positive"], expected["positive"])
    assert "input 'x' has dtype float32, expected bfloat16" in error(responses[1]).message()
