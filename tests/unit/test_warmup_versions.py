"""Warmup inputs from recorded calls and explicit versions, written by a real export (no server:
the served side is tests/integration/test_served_deployment.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from repo_helpers import tuned_two_spec_net
from tritonclient.grpc import model_config_pb2 as mc

import aitune_triton
from aitune_triton import export
from aitune_triton.errors import ExportError, InvalidOptionError
from aitune_triton.module.description import BackendDescription
from aitune_triton.triton.config import TritonModelOptions, read_model_config
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.warmup import add_warmup

NAME = "test_warmup_net"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup")
    module = tuned_two_spec_net(NAME, root)
    yield module, aitune_triton.save(module, root / "checkpoint")
    del module


def _inputs(module, graph: str) -> list[list[torch.Tensor]]:
    """The recorded warmup calls' tensors of ``graph``, smallest first."""
    entry = next(e for e in module.to_dict()["graphs"] if e["graph"]["name"] == graph)
    return [torch.load(entry["backend"]["artifacts"][role], weights_only=True)["tensors"] for role in ("warmup_min", "warmup_max")]


@pytest.mark.parametrize("source", ["module", "checkpoint"])
def test_warmup_lists_the_smallest_and_largest_recorded_calls_as_raw_files(tuned, tmp_path, source):
    module, checkpoint = tuned
    repository = tmp_path / "repo"

    export(module if source == "module" else checkpoint, repository, options=TritonModelOptions(warmup=True), show_progress=False)

    model_dir = repository / f"{NAME}.graph_0"  # inputs x [B, 8] and y [B, 4], batches 1, 3, 5 recorded
    config = read_model_config(model_dir / "config.pbtxt")
    assert [(w.batch_size, w.count) for w in config.model_warmup] == [(1, 1), (5, 1)]
    smallest, largest = _inputs(module, "graph_0")
    for warmup, tensors in zip(config.model_warmup, (smallest, largest)):
        assert sorted(warmup.inputs) == ["x", "y"]
        for name, tensor in zip(("x", "y"), tensors):
            entry = warmup.inputs[name]
            assert entry.data_type == mc.TYPE_FP32 and list(entry.dims) == list(tensor.shape[1:])
            raw = (model_dir / "warmup" / entry.input_data_file).read_bytes()
            # Triton's input_data_file: one sample's raw little-endian row-major bytes.
            np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4").reshape(tensor.shape[1:]), tensor[0].numpy())
    assert sorted(p.name for p in (model_dir / "warmup").iterdir()) == ["1_warmup_max_x", "1_warmup_max_y", "1_warmup_min_x", "1_warmup_min_y"]
    assert not read_model_config(repository / NAME / "config.pbtxt").model_warmup  # the entry model only forwards


def test_a_checkpoint_carries_the_warmup_inputs_hashed_like_artifacts(tuned):
    _, checkpoint = tuned

    manifest = json.loads((checkpoint / "manifest.json").read_text())

    assert {"graph_0/warmup_min.pt", "graph_0/warmup_max.pt", "graph_1/warmup_min.pt"} <= set(manifest["files"])
    assert all("sha256" in manifest["files"][name] for name in manifest["files"])


def test_warmup_is_written_by_default_and_warmup_false_writes_none(tuned, tmp_path):
    export(tuned[0], tmp_path / "default", show_progress=False)
    export(tuned[0], tmp_path / "off", options=TritonModelOptions(warmup=False), show_progress=False)

    default_dir = tmp_path / "default" / f"{NAME}.graph_0"
    assert [w.batch_size for w in read_model_config(default_dir / "config.pbtxt").model_warmup] == [1, 5]
    assert sorted(p.name for p in (default_dir / "warmup").iterdir()) == ["1_warmup_max_x", "1_warmup_max_y", "1_warmup_min_x", "1_warmup_min_y"]
    off_dir = tmp_path / "off" / f"{NAME}.graph_0"
    assert not read_model_config(off_dir / "config.pbtxt").model_warmup
    assert not (off_dir / "warmup").exists()


def test_a_checkpoint_without_recorded_warmup_inputs_exports_without_warmup_and_warns(tuned, tmp_path):
    _, checkpoint = tuned
    older = tmp_path / "older"
    shutil.copytree(checkpoint, older)
    manifest = json.loads((older / "manifest.json").read_text())
    for stored in manifest["modules"]:  # as tuned before warmup inputs were kept
        for entry in stored["module"]["graphs"]:
            for role in ("warmup_min", "warmup_max"):
                entry["backend"]["artifacts"].pop(role, None)
    (older / "manifest.json").write_text(json.dumps(manifest))

    with pytest.warns(UserWarning, match=r"warmup: test_warmup_net.graph_0 has no recorded warmup inputs .* exported without model_warmup"):
        export(older, tmp_path / "repo", show_progress=False)

    model_dir = tmp_path / "repo" / f"{NAME}.graph_0"
    assert not read_model_config(model_dir / "config.pbtxt").model_warmup and not (model_dir / "warmup").exists()


def test_an_explicit_version_is_written_and_a_new_export_keeps_old_warmup_files(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    options = TritonModelOptions(warmup=True)

    first = export(module, repository, options=options, show_progress=False)
    second = export(module, repository, options=options, show_progress=False, version=5)

    assert set(first.versions.values()) == {1} and set(second.versions.values()) == {5}
    model_dir = repository / f"{NAME}.graph_1"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "5", "config.pbtxt", "warmup"]
    names = sorted(p.name for p in (model_dir / "warmup").iterdir())
    assert [n for n in names if n.startswith("1_")] and [n for n in names if n.startswith("5_")]
    files = {w.inputs["x"].input_data_file for w in read_model_config(model_dir / "config.pbtxt").model_warmup}
    assert files == {"5_warmup_min_x", "5_warmup_max_x"}
    routes = json.loads((repository / NAME / "5" / "routes.json").read_text())
    assert {graph["model_name"]: graph["version"] for graph in routes["graphs"]} == {f"{NAME}.graph_0": 5, f"{NAME}.graph_1": 5}
    assert json.loads((repository / NAME / "1" / "routes.json").read_text())["graphs"][0]["version"] == 1


@pytest.mark.parametrize("version", [0, -1, "2", True])
def test_a_bad_version_is_refused_naming_it_and_nothing_is_written(tuned, tmp_path, version):
    with pytest.raises(InvalidOptionError, match=rf"^version: expected an integer >= 1, got {version!r}"):
        export(tuned[0], tmp_path / "repo", show_progress=False, version=version)
    assert not (tmp_path / "repo").exists()


def test_a_version_that_exists_is_refused_and_the_repository_is_unchanged(tuned, tmp_path):
    repository = tmp_path / "repo"
    export(tuned[0], repository, show_progress=False)
    before = sorted(str(p.relative_to(repository)) for p in repository.rglob("*"))

    with pytest.raises(InvalidOptionError, match=r"^version: expected a version that .* does not have yet, got 1"):
        export(tuned[0], repository, show_progress=False, version=1)

    assert sorted(str(p.relative_to(repository)) for p in repository.rglob("*")) == before


def test_warmup_without_recorded_inputs_says_to_tune_again(tuned):
    entry = tuned[0].to_dict()["graphs"][0]
    io = ModelIO.from_graph("net.graph_0", entry["graph"], entry["backend"])
    backend = BackendDescription(entry["backend"]["name"], artifacts={"model": entry["backend"]["artifacts"]["model"]})

    with pytest.raises(ExportError, match=r"^warmup: net.graph_0 has no recorded warmup inputs .* Tune and save it again"):
        add_warmup(mc.ModelConfig(), io, backend, 1)


def test_the_generated_model_py_applies_the_configured_threads_before_loading_the_artifact(tuned, tmp_path):
    from aitune_triton.served.graph_model import runtime_options
    from aitune_triton.served.runtimes.onnxruntime import session_options

    export(tuned[0], tmp_path / "repo", options=TritonModelOptions(intra_op_threads=2), show_progress=False)
    source = (tmp_path / "repo" / f"{NAME}.graph_0" / "1" / "model.py").read_text()
    namespace: dict = {}
    exec(source[source.index("RUNTIME_OPTIONS = "):].split("\n", 1)[0], {"json": json}, namespace)
    config = {"parameters": {"aitune_triton.intra_op_threads": {"string_value": "2"}}}  # args["model_config"], parsed
    before = torch.get_num_threads()
    try:
        options = runtime_options(namespace["RUNTIME_OPTIONS"], config)
        assert options["intra_op_num_threads"] == 2  # ONNX Runtime's session option
        assert torch.get_num_threads() == 2  # torch, already imported here, as in an AOTInductor model.py
        assert session_options(options).intra_op_num_threads == 2
        assert runtime_options(namespace["RUNTIME_OPTIONS"], {"parameters": {}}) == namespace["RUNTIME_OPTIONS"]  # no parameter: the stored options
    finally:
        torch.set_num_threads(before)


def test_native_models_name_their_warmup_inputs_as_the_artifact_does_and_check_finds_no_error(tuned, tmp_path):
    from aitune_triton.triton.check import check_repository

    repository = tmp_path / "repo"
    plan = export(tuned[0], repository, options=TritonModelOptions(warmup=True), target="native", show_progress=False, dry_run=True)
    assert not repository.exists() and plan.models  # planning builds the warmup entries and writes nothing
    assert f"{NAME}.graph_0/warmup/1_warmup_max_" in "\n".join(f.path for m in plan.models for f in m.files)
    export(tuned[0], repository, options=TritonModelOptions(warmup=True), target="native", show_progress=False)

    config = read_model_config(repository / f"{NAME}.graph_0" / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx"
    names = [tensor.name for tensor in config.input]
    assert len(config.model_warmup) == 2
    for warmup in config.model_warmup:
        assert sorted(warmup.inputs) == sorted(names)
        for name in names:
            assert (repository / f"{NAME}.graph_0" / "warmup" / warmup.inputs[name].input_data_file).is_file()
    report = check_repository(repository)
    assert [finding for _, finding in report.findings("ERROR")] == []


def test_check_reports_a_missing_or_truncated_warmup_file_that_would_fail_the_load(tuned, tmp_path):
    from aitune_triton.triton.check import check_repository

    repository = tmp_path / "repo"
    export(tuned[0], repository, options=TritonModelOptions(warmup=True), show_progress=False)
    warmup_dir = repository / f"{NAME}.graph_0" / "warmup"
    missing, truncated = sorted(warmup_dir.iterdir())[:2]
    missing.unlink()
    truncated.write_bytes(truncated.read_bytes()[:-4])

    messages = [f.message for model, f in check_repository(repository).findings("ERROR") if model == f"{NAME}.graph_0"]

    assert len(messages) == 2
    assert any(m.endswith(f"warmup/{missing.name} is missing; Triton fails the load without it. Export the model again.")
               for m in messages)
    assert any(f"warmup/{truncated.name} holds" in m and "need" in m for m in messages)
