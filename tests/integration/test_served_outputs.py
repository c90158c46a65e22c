"""Served container outputs: a GPT-2 cache and a dataclass come back from a real tritonserver,
computed for the call and rebuilt by RemoteModule, also in a process that never imported the model's packages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from nets import eager
from output_nets import DataclassNet, Encoded, cache_tensors, record_gpt2, tiny_gpt2

import aitune_triton
from aitune_triton import Module, OneBackendStrategy, RemoteModule
from triton_helpers import require_tritonserver

pytestmark = pytest.mark.triton

GPT2_MODEL = "served_outputs_gpt2"
DATACLASS_MODEL = "served_outputs_dataclass"
TESTS = Path(__file__).resolve().parents[1]


@dataclass
class ServedOutputs:
    gpt2: torch.nn.Module
    dataclass_net: torch.nn.Module
    server: object
    root: Path


@pytest.fixture(scope="module")
def served_outputs(tmp_path_factory):
    from aitune_triton.triton.server import TritonServer

    require_tritonserver()
    root = tmp_path_factory.mktemp("served_outputs")
    repository = root / "model_repository"
    gpt2 = tiny_gpt2()
    module = Module(gpt2, name=GPT2_MODEL, strategy=OneBackendStrategy("onnxruntime"), cache_dir=root / "cache")
    record_gpt2(module)
    module.tune()
    checkpoint = aitune_triton.save(module, root / "gpt2_checkpoint")
    aitune_triton.export(checkpoint, repository, show_progress=False)  # from the checkpoint, as the CLI does
    torch.manual_seed(0)
    dataclass_net = DataclassNet().eval()
    other = Module(dataclass_net, name=DATACLASS_MODEL, strategy=OneBackendStrategy("onnxruntime"), cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 3, 5):
            other(torch.randn(batch, 4))
    other.tune()
    aitune_triton.export(other, repository, show_progress=False)
    server = TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=180)
    server.start()
    try:
        yield ServedOutputs(eager(gpt2), eager(dataclass_net), server, root)
    finally:
        server.stop()


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


def _run_fresh(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_gpt2_returns_the_cache_of_this_call_not_a_recorded_one(served_outputs, protocol):
    url = served_outputs.server.grpc_url if protocol == "grpc" else served_outputs.server.http_url
    ids = _ids(2, 5, seed=7)  # a sequence length never recorded

    with RemoteModule(url, GPT2_MODEL, protocol=protocol) as remote, torch.no_grad():
        output, expected = remote(ids), served_outputs.gpt2(ids)

    assert type(output) is type(expected) and type(output["cache"]) is type(expected["cache"])
    torch.testing.assert_close(output["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
    served, eager = cache_tensors(output), cache_tensors(expected)
    assert [t.shape for t in served] == [t.shape for t in eager] == [torch.Size([2, 2, 5, 16])] * 4
    for got, want in zip(served, eager):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_remote_module_returns_a_flat_dict_keyed_by_leaf_path_when_asked(served_outputs):
    ids = _ids(1, 6, seed=8)

    with RemoteModule(served_outputs.server.grpc_url, GPT2_MODEL, output_structure="flat") as remote, torch.no_grad():
        output, expected = remote(ids), served_outputs.gpt2(ids)

    assert list(output) == ["logits", "cache.0", "cache.1", "cache.2", "cache.3"]
    torch.testing.assert_close(output["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
    for got, want in zip([output[f"cache.{i}"] for i in range(4)], cache_tensors(expected)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _expected_files(served_outputs, ids: torch.Tensor) -> Path:
    with torch.no_grad():
        expected = served_outputs.gpt2(ids)
    directory = served_outputs.root / f"expected_{ids.shape[0]}x{ids.shape[1]}"
    directory.mkdir(exist_ok=True)
    np.save(directory / "ids.npy", ids.numpy())
    for index, tensor in enumerate([expected["logits"], *cache_tensors(expected)]):
        np.save(directory / f"leaf_{index}.npy", tensor.numpy())
    return directory


def test_remote_module_rebuilds_model_outputs_in_a_process_that_never_imported_transformers(served_outputs):
    directory = _expected_files(served_outputs, _ids(3, 7, seed=9))
    result = _run_fresh(
        """
        import sys
        from pathlib import Path
        import numpy as np, torch
        from aitune_triton import RemoteModule

        directory = Path(sys.argv[3])
        remote = RemoteModule(sys.argv[1], sys.argv[2])
        assert "transformers" not in sys.modules
        output = remote(torch.from_numpy(np.load(directory / "ids.npy")))
        cache = output["cache"]
        leaves = [output["logits"]] + [t for layer in cache.layers for t in (layer.keys, layer.values)]
        for index, leaf in enumerate(leaves):
            np.testing.assert_allclose(leaf.numpy(), np.load(directory / f"leaf_{index}.npy"), atol=1e-4, rtol=1e-4)
        print(type(output).__name__, type(cache).__name__, len(leaves))
        """,
        served_outputs.server.grpc_url,
        GPT2_MODEL,
        str(directory),
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["CausalLMOutputWithCrossAttentions", "DynamicCache", "5"]


def test_remote_module_falls_back_to_a_flat_dict_with_a_warning_where_transformers_cannot_be_imported(served_outputs):
    directory = _expected_files(served_outputs, _ids(2, 4, seed=10))
    result = _run_fresh(
        """
        import sys, warnings
        from pathlib import Path
        sys.modules["transformers"] = None  # as if transformers were not installed: every import of it fails
        import numpy as np, torch
        from aitune_triton import RemoteModule

        directory = Path(sys.argv[3])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            output = RemoteModule(sys.argv[1], sys.argv[2])(torch.from_numpy(np.load(directory / "ids.npy")))
        assert list(output) == ["logits", "cache.0", "cache.1", "cache.2", "cache.3"], list(output)
        for index, leaf in enumerate(output.values()):
            np.testing.assert_allclose(leaf.numpy(), np.load(directory / f"leaf_{index}.npy"), atol=1e-4, rtol=1e-4)
        print("\\n".join(str(w.message) for w in caught))
        """,
        served_outputs.server.grpc_url,
        GPT2_MODEL,
        str(directory),
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers.modeling_outputs.CausalLMOutputWithCrossAttentions" in result.stdout
    assert "returned as a dict {leaf path: tensor} instead" in result.stdout


def test_remote_module_falls_back_to_a_flat_dict_with_a_warning_when_a_known_type_fails_to_rebuild(served_outputs):
    ids = _ids(1, 5, seed=12)
    result = _run_fresh(
        """
        import sys, warnings
        import torch
        import transformers.exporters.exporter_dynamo as exporter
        from aitune_triton import RemoteModule

        def broken(context, tensors):  # as a transformers release whose cache layout differs from the server's
            raise TypeError("this cache layout is unknown here")

        exporter._unflatten_from_context = broken
        remote = RemoteModule(sys.argv[1], sys.argv[2])
        ids = torch.tensor(eval(sys.argv[3]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = remote(ids), remote(ids)
        assert list(first) == list(second) == ["logits", "cache.0", "cache.1", "cache.2", "cache.3"], list(first)
        print(len(caught), caught[0].message if caught else "")
        """,
        served_outputs.server.grpc_url,
        GPT2_MODEL,
        repr(ids.tolist()),
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("1 ")  # one warning, not one per call
    assert "Cannot rebuild the module's output structure here (TypeError: this cache layout is unknown here)" in result.stdout


def test_served_dataclass_output_is_rebuilt_with_its_constant_field(served_outputs):
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(11))

    with RemoteModule(served_outputs.server.http_url, DATACLASS_MODEL, protocol="http") as remote, torch.no_grad():
        output, expected = remote(x), served_outputs.dataclass_net(x)

    assert isinstance(output, Encoded) and output.kind == "encoded"
    torch.testing.assert_close(output.hidden, expected.hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.pooled, expected.pooled, atol=1e-5, rtol=1e-5)
