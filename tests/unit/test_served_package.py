"""The served package (aitune_triton.served) itself: the graph model class run directly against the
pb_utils stand-in, the shared artifact loaders of the runtimes, and the loader of the package copy
that a generated model.py uses (it must refuse a modified, missing or added file, and must not
import the installed aitune_triton)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pb_utils_standin as pb_utils
import pytest
import torch
from repo_helpers import tuned_two_spec_net

from aitune_triton.served import PACKAGE_DIR
from aitune_triton.served.graph_model import GraphModel
from aitune_triton.served.shipped import ShippedFileError, load_package, private_name
from aitune_triton.triton.exporter import export

NAME = "served_package_net"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tuned TwoInputNet (ONNX Runtime) and its exported repository (router + two graph models)."""
    root = tmp_path_factory.mktemp("served_package")
    module = tuned_two_spec_net(NAME, root)
    export(module, root / "repo", show_progress=False)
    return module, root / "repo"


def _args(model_dir: Path) -> dict[str, str]:
    return {"model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name,
            "model_config": json.dumps({}), "model_instance_kind": "CPU", "model_instance_device_id": "0"}


def _request(**arrays) -> pb_utils.InferenceRequest:
    return pb_utils.InferenceRequest(model_name="", inputs=[pb_utils.Tensor(n, a) for n, a in arrays.items()], requested_output_names=[])


def test_the_graph_model_batches_equal_shapes_answers_like_eager_and_refuses_bad_requests_alone(exported):
    module, repository = exported
    graph = GraphModel(pb_utils, _args(repository / f"{NAME}.graph_0"), "onnxruntime", "model.onnx", {})
    x1, y1 = np.random.randn(2, 8).astype(np.float32), np.random.randn(2, 4).astype(np.float32)
    x2, y2 = np.random.randn(3, 8).astype(np.float32), np.random.randn(3, 4).astype(np.float32)
    requests = [_request(x=x1, y=y1), _request(x=x1.astype(np.float64), y=y1), _request(x=x2, y=y2), _request(x=x1)]

    accepted = [(0, graph.read(requests[0])), (2, graph.read(requests[2]))]
    assert [[index for index, _ in batch] for batch in graph.plan_batches(accepted)] == [[0, 2]]  # one batch of 5 rows
    responses = graph.execute(requests)

    assert responses[1].error().code() == pb_utils.TritonError.INVALID_ARG
    assert "input 'x' has dtype float64, expected float32" in responses[1].error().message()
    assert "input 'y' is missing" in responses[3].error().message()
    for response, (x, y) in ((responses[0], (x1, y1)), (responses[2], (x2, y2))):
        with torch.no_grad():
            eager = module.module(torch.from_numpy(x), torch.from_numpy(y))
        got = {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}
        np.testing.assert_allclose(got["logits"], eager["logits"].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["hidden.0"], eager["hidden"][0].numpy(), rtol=1e-4, atol=1e-5)
    graph.finalize()


def test_execute_answers_every_request_even_when_reading_or_running_fails(exported):
    _, repository = exported
    graph = GraphModel(pb_utils, _args(repository / f"{NAME}.graph_1"), "onnxruntime", "model.onnx", {})

    class Unreadable:  # get_input_tensor_by_name raises on it
        inputs = None

    def broken(values):
        raise RuntimeError("the runtime failed")

    graph.run = broken  # type: ignore[method-assign]
    unreadable, good = graph.execute([Unreadable(), _request(x=np.zeros((1, 8), np.float32))])
    assert unreadable.error().code() == pb_utils.TritonError.INVALID_ARG
    assert good.error().code() == pb_utils.TritonError.INTERNAL and "RuntimeError: the runtime failed" in good.error().message()


def test_the_backends_load_their_artifacts_with_the_served_runtimes_functions():
    from aitune_triton.backends import aoti, inductor, onnxruntime
    from aitune_triton.served.runtimes import aoti as served_aoti
    from aitune_triton.served.runtimes import inductor as served_inductor
    from aitune_triton.served.runtimes import onnxruntime as served_onnxruntime

    assert onnxruntime.load_session is served_onnxruntime.load_session
    assert onnxruntime.session_options is served_onnxruntime.session_options
    assert aoti.load_package is served_aoti.load_package
    assert inductor.compile_options is served_inductor.compile_options
    assert inductor.warmup_inputs is served_inductor.warmup_inputs
    assert inductor.runtime is served_inductor  # load_program, compile_program, check_program_archive


def test_the_package_copy_loads_under_a_private_name_and_refuses_a_modified_missing_or_added_file(exported, tmp_path):
    _, repository = exported
    version_dir = tmp_path / "entry" / "1"
    shutil.copytree(repository / NAME / "1", version_dir)

    router = load_package(str(version_dir), PACKAGE_DIR, "router")
    assert router.__name__ == private_name(str(version_dir / PACKAGE_DIR)) + ".router"
    assert Path(router.__file__).parent == version_dir / PACKAGE_DIR
    assert not (version_dir / PACKAGE_DIR / "__pycache__").exists()  # nothing written into the repository

    for damage, message in (
        (lambda d: (d / "tensors.py").write_text("raise SystemExit\n"), r"tensors.py: SHA-256 mismatch"),
        (lambda d: (d / "contract.py").unlink(), r"contract.py: listed in manifest.json but missing"),
        (lambda d: (d / "extra.py").write_text(""), r"extra.py: not listed in manifest.json"),
    ):
        damaged = tmp_path / f"damaged_{len(list(tmp_path.iterdir()))}" / "1"
        shutil.copytree(version_dir, damaged)
        damage(damaged / PACKAGE_DIR)
        with pytest.raises(ShippedFileError, match=message):
            load_package(str(damaged), PACKAGE_DIR, "router")
        assert private_name(str(damaged / PACKAGE_DIR)) not in sys.modules


def test_the_generated_model_py_runs_its_copy_without_importing_aitune_triton(exported):
    """A Python with no aitune_triton (its import refused) loads every served module from the copy."""
    _, repository = exported
    version_dir = repository / f"{NAME}.graph_0" / "1"
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "aitune_triton" or name.startswith("aitune_triton."):
                    raise ImportError("aitune_triton is not installed here")
        sys.meta_path.insert(0, Refuse())
        sys.modules["triton_python_backend_utils"] = type(sys)("triton_python_backend_utils")
        import importlib.util
        spec = importlib.util.spec_from_file_location("model", {str(version_dir / "model.py")!r})
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
        for name in ("graph_model", "router", "step_model", "runtimes.onnxruntime"):
            module = model.load_served({str(version_dir)!r}, name)
            assert module.__name__.startswith("_aitune_triton_served_"), module.__name__
        assert not [m for m in sys.modules if m == "aitune_triton" or m.startswith("aitune_triton.")]
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=version_dir)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_torch_runtime_gets_the_configured_threads_before_its_artifact_loads_in_a_fresh_process(exported):
    """The stub's Python has not imported torch when GraphModel starts: the runtime module imports
    it, and the instance's intra-op threads must reach torch before the artifact loads (here an
    ONNX file handed to the aoti runtime, so the load itself fails after that point)."""
    _, repository = exported
    model_dir = repository / f"{NAME}.graph_0"
    config = {"parameters": {"aitune_triton.intra_op_threads": {"string_value": "1"}}}
    args = {**_args(model_dir), "model_config": json.dumps(config)}
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        spec = importlib.util.spec_from_file_location("shipped", {str(model_dir / "1" / PACKAGE_DIR / "shipped.py")!r})
        shipped = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shipped)
        graph_model = shipped.load_package({str(model_dir / "1")!r}, {PACKAGE_DIR!r}, "graph_model")
        assert "torch" not in sys.modules
        try:
            graph_model.GraphModel(types.ModuleType("pb_utils"), {args!r}, "aoti", "model.onnx", {{}})
        except Exception:
            pass
        import torch
        print(torch.get_num_threads())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1"
