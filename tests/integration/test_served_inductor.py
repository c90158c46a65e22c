"""An inductor-tuned module saved, loaded into a fresh module, exported and served by a real
tritonserver gives the eager outputs, leaf by leaf, over tritonclient."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from nets import eager

import aitune_triton
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from triton_helpers import require_tritonserver

pytestmark = pytest.mark.triton

MODEL = "served_inductor_net"


class MaskedSeqNet(torch.nn.Module):
    """Token ids and a mask with batch and sequence axes in; a dict holding a list out."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(40, 8)
        self.linear = torch.nn.Linear(8, 6)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        hidden = torch.tanh(self.linear(self.embedding(ids))) * mask.unsqueeze(-1)
        return {"hidden": hidden, "pooled": [hidden.sum(1) / mask.sum(1, keepdim=True), hidden.amax(-1)]}


def _net() -> MaskedSeqNet:
    torch.manual_seed(0)
    return MaskedSeqNet().eval()


def _call(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (batch, length), generator=generator)
    mask = torch.ones(batch, length)
    mask[:, length - 1 :] = 0.0 if length > 1 else 1.0
    return ids, mask


def _leaves(output) -> dict[str, torch.Tensor]:
    assert isinstance(output, dict) and sorted(output) == ["hidden", "pooled"]
    assert isinstance(output["pooled"], list) and len(output["pooled"]) == 2
    return {"hidden": output["hidden"], "pooled.0": output["pooled"][0], "pooled.1": output["pooled"][1]}


@dataclass
class ServedInductor:
    reference: torch.nn.Module
    loaded: Module
    repository: Path
    server: object
    bf16: dict[str, Module]  # model name -> the bf16 module served under it (tuned in process)


#: Served bf16 models (built as on a CPU with native bf16) -> the backend they hold.
BF16_MODELS = {"served_aoti_bf16_net": "aoti", "served_inductor_bf16_net": "inductor"}
#: Elementwise bound of the bf16 program against fp32 eager on MaskedSeqNet.
BF16_TOLERANCE = 5e-2


def _bf16_modules(root: Path) -> dict[str, Module]:
    """MaskedSeqNet tuned with aoti and inductor at precision='bf16', the CPU reported as one with
    native bf16 (this one may lack it: torch then runs the same bf16 program emulated)."""
    from aitune_triton import _cpu
    from aitune_triton.backends import get_backend_class

    modules = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_cpu, "native_bf16", lambda: True)
        for name, backend in BF16_MODELS.items():
            strategy = OneBackendStrategy(get_backend_class(backend)(precision="bf16"), find_max_batch_size=False)
            module = Module(_net(), name=name, strategy=strategy, cache_dir=root / "cache")
            with torch.no_grad():
                for seed, (batch, length) in enumerate(((1, 3), (4, 9), (2, 5))):
                    module(*_call(batch, length, seed))
            module.tune()
            modules[name] = module
    return modules


@pytest.fixture(scope="module")
def served_inductor(tmp_path_factory):
    from aitune_triton.triton.server import TritonServer

    require_tritonserver()
    root = tmp_path_factory.mktemp("served_inductor")
    net = _net()
    reference = eager(net)
    module = Module(net, name=MODEL, strategy=OneBackendStrategy("inductor"), cache_dir=root / "cache")
    with torch.no_grad():
        for seed, (batch, length) in enumerate(((1, 3), (4, 9), (2, 5))):
            module(*_call(batch, length, seed))
    module.tune()
    checkpoint = aitune_triton.save(module, root / "checkpoint")
    module.deactivate()
    del module
    loaded = Module(_net(), name=MODEL)  # a fresh module, as in another process
    aitune_triton.load(loaded, checkpoint)
    repository = root / "model_repository"
    aitune_triton.export(loaded, repository, show_progress=False, router=True)  # the tests name its graph model
    bf16 = _bf16_modules(root)
    for module in bf16.values():
        aitune_triton.export(module, repository, show_progress=False)
    # Verbose: Triton logs the warmup samples it runs at load (a test checks they ran before READY).
    server = TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=300,
                          extra_args=["--log-verbose=1"])
    server.start()
    try:
        yield ServedInductor(reference, loaded, repository, server, bf16)
    finally:
        server.stop()
        loaded.deactivate()
        for module in bf16.values():
            module.deactivate()


def test_inductor_export_serves_its_program_with_the_inductor_runtime(served_inductor):
    version = served_inductor.repository / f"{MODEL}.graph_0" / "1"

    assert (version / "program.pt2").is_file()
    model_py = (version / "model.py").read_text()
    assert 'RUNTIME = "inductor"' in model_py and 'ARTIFACT = "program.pt2"' in model_py
    runtime = (version / "aitune_triton_served" / "runtimes" / "inductor.py").read_text()
    assert "torch.export.load(" in runtime and "torch.compile(" in runtime


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inductor_survives_save_load_export_and_serve_equal_to_eager(served_inductor, protocol):
    server = served_inductor.server
    url = server.grpc_url if protocol == "grpc" else server.http_url

    with RemoteModule(url, MODEL, protocol=protocol) as remote, torch.no_grad():
        for seed, (batch, length) in enumerate(((3, 7), (1, 3), (4, 9), (2, 4)), start=10):  # (3, 7), (2, 4) never recorded
            ids, mask = _call(batch, length, seed)
            served, expected, in_process = _leaves(remote(ids, mask)), _leaves(served_inductor.reference(ids, mask)), _leaves(served_inductor.loaded(ids, mask))
            for name, want in expected.items():
                assert served[name].shape == want.shape and served[name].dtype == want.dtype, name
                torch.testing.assert_close(served[name], want, atol=1e-5, rtol=1e-5, msg=name)
                torch.testing.assert_close(served[name], in_process[name], atol=1e-6, rtol=0, msg=name)


def test_raw_grpc_request_to_the_inductor_graph_model_answers_eager_values(served_inductor):
    ids, mask = _call(2, 6, seed=30)
    inputs = []
    for name, array, dtype in (("ids", ids.numpy(), "INT64"), ("mask", mask.numpy(), "FP32")):
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)

    client = grpcclient.InferenceServerClient(served_inductor.server.grpc_url)
    try:
        result = client.infer(MODEL, inputs)
    finally:
        client.close()

    with torch.no_grad():
        expected = _leaves(served_inductor.reference(ids, mask))
    for name, want in expected.items():
        torch.testing.assert_close(torch.from_numpy(np.array(result.as_numpy(name))), want, atol=1e-5, rtol=1e-5, msg=name)


def test_the_inductor_model_runs_its_recorded_warmup_calls_at_load_before_it_is_ready(served_inductor):
    from aitune_triton.triton.config import read_model_config

    model = f"{MODEL}.graph_0"
    config = read_model_config(served_inductor.repository / model / "config.pbtxt")
    # Warmup is on by default: the smallest and largest recorded calls, as raw files beside the model.
    kinds = [w.name.split("_x")[0].rsplit("_", 1)[0] for w in config.model_warmup]
    assert kinds[:2] == ["warmup_min", "warmup_max"]
    # and at most one more, at the preferred batch size the dynamic batcher aims for
    assert kinds[2:] in ([], ["warmup_opt_batch"])
    assert all(w.batch_size in config.dynamic_batching.preferred_batch_size for w in config.model_warmup[2:])
    for warmup in config.model_warmup:
        for tensor in warmup.inputs.values():
            assert (served_inductor.repository / model / "warmup" / tensor.input_data_file).is_file()
    # Triton's own log: the warmup samples ran through the model's execute() (the compiled program)
    # on its instance before Triton logged the model as loaded, i.e. before any client request.
    lines = served_inductor.server.log_path.read_text().splitlines()
    loaded = next(i for i, line in enumerate(lines) if "successfully loaded" in line and f"'{model}'" in line)
    names = [warmup.name for warmup in config.model_warmup]
    ran = {name: f"model '{model}' instance {model}_0_0 is running warmup sample '{name}'" for name in names}
    warmed = {name: [i for i, line in enumerate(lines) if text in line] for name, text in ran.items()}
    assert all(warmed.values()), [line for line in lines if "warmup" in line.lower()][:10]
    assert max(max(found) for found in warmed.values()) < loaded, {name: [lines[i] for i in found] for name, found in warmed.items()}


@pytest.mark.parametrize("model", sorted(BF16_MODELS))
def test_a_bf16_artifact_is_served_on_the_cpu_equal_to_in_process_and_to_eager_within_bf16_tolerance(served_inductor, model):
    module = served_inductor.bf16[model]
    assert module.tuned_graphs[0].backend.name == BF16_MODELS[model] and module.tuned_graphs[0].backend.precision == "bf16"

    with RemoteModule(served_inductor.server.grpc_url, model) as remote, torch.no_grad():
        for seed, (batch, length) in enumerate(((3, 7), (1, 3), (4, 9)), start=40):
            ids, mask = _call(batch, length, seed)
            served, in_process, expected = _leaves(remote(ids, mask)), _leaves(module(ids, mask)), _leaves(served_inductor.reference(ids, mask))
            for name, want in expected.items():
                assert served[name].dtype == torch.float32 and served[name].shape == want.shape, name  # fp32 in and out
                torch.testing.assert_close(served[name], in_process[name], atol=1e-6, rtol=1e-6, msg=name)
                torch.testing.assert_close(served[name], want, atol=BF16_TOLERANCE, rtol=BF16_TOLERANCE, msg=name)
            assert max(float((served[n] - expected[n]).abs().max()) for n in expected) > 1e-6  # computed in bf16
