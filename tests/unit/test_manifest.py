"""manifest.json: one typed ModelManifest per exported model version; kinds of existing model directories."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import aitune_triton
from repo_helpers import tuned_two_spec_net

from aitune_triton.checkpoint import read_checkpoint_modules
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.exporter import export
from aitune_triton.module.description import BackendDescription
from aitune_triton.triton.manifest import (
    MANIFEST_FORMAT,
    DeviceInfo,
    ManifestError,
    ModelManifest,
    build_manifest,
    device_info,
    model_kind,
    read_manifest,
    tensors_of,
)

NAME = "test_manifest_net"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    return tuned_two_spec_net(NAME, tmp_path_factory.mktemp("manifest"))


@pytest.fixture
def repository(tuned, tmp_path):
    export(tuned, tmp_path / "repo", show_progress=False)
    return tmp_path / "repo"


def test_a_graph_model_manifest_holds_kind_device_backend_precision_io_mapping_graph_spec_and_hashes(tuned, repository):
    version_dir = repository / f"{NAME}.graph_0" / "1"

    manifest = read_manifest(version_dir)

    description = tuned.to_dict()["graphs"][0]
    assert manifest.format_version == MANIFEST_FORMAT
    assert (manifest.model, manifest.version, manifest.kind) == (f"{NAME}.graph_0", 1, "graph")
    assert manifest.source == f"module '{NAME}'"
    assert manifest.backend == "onnxruntime" and manifest.precision == "fp32"
    assert manifest.device == DeviceInfo("cpu", torch_version=torch.__version__)  # recorded when the backend was built
    assert manifest.versions["torch"] == torch.__version__
    assert manifest.graph == description["graph"]
    inputs, outputs = tensors_of(read_model_config(repository / f"{NAME}.graph_0" / "config.pbtxt"))
    assert manifest.inputs == inputs and manifest.outputs == outputs
    assert [(t.name, t.data_type, t.dims) for t in manifest.inputs] == [("x", "TYPE_FP32", (8,)), ("y", "TYPE_FP32", (4,))]
    assert manifest.max_batch_size == 5
    # sha256 (read by the generated model.py) lists every other file of the version directory,
    # those of the served package copy by their path under it.
    files = sorted(p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert "aitune_triton_served/graph_model.py" in files
    assert sorted(manifest.sha256) == files
    for name in files:
        assert manifest.sha256[name] == hashlib.sha256((version_dir / name).read_bytes()).hexdigest()


def test_the_entry_model_manifest_is_of_kind_entry_without_backend_or_graph_spec(repository):
    manifest = read_manifest(repository / NAME / "1")

    assert manifest.kind == "entry"
    assert manifest.backend is None and manifest.precision is None and manifest.graph is None
    assert {t.name for t in manifest.inputs} == {"x", "y"}
    assert model_kind(repository / NAME) == "entry"
    assert model_kind(repository / f"{NAME}.graph_1") == "graph"


def test_a_manifest_round_trips_through_to_dict_and_from_dict(repository):
    manifest = read_manifest(repository / f"{NAME}.graph_1" / "1")

    assert ModelManifest.from_dict(json.loads(manifest.to_json())) == manifest


def test_a_format_0_manifest_reads_with_kind_none_and_the_kind_comes_from_the_files(repository):
    for model in (NAME, f"{NAME}.graph_0"):
        path = repository / model / "1" / "manifest.json"
        old = json.loads(path.read_text())
        path.write_text(json.dumps({key: old[key] for key in ("source", "versions", "sha256", "model", "version")}))

    manifest = read_manifest(repository / NAME / "1")

    assert manifest.format_version == 0 and manifest.kind is None and manifest.inputs == []
    assert model_kind(repository / NAME) == "entry"  # the routes parameter in its config
    assert model_kind(repository / f"{NAME}.graph_0") == "graph"  # its io.json


def test_a_directory_without_manifest_has_no_kind(tmp_path):
    (tmp_path / "foreign" / "1").mkdir(parents=True)
    (tmp_path / "foreign" / "config.pbtxt").write_text('name: "foreign"\n')

    assert model_kind(tmp_path / "foreign") is None
    assert model_kind(tmp_path / "absent") is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": "m", "version": 1}, "KeyError: 'sha256'"),
        ({"model": "m", "version": 1, "sha256": []}, "'sha256' is list, expected a dict"),
        ({"model": "m", "version": 1, "sha256": {}, "kind": "router"}, "'kind' is 'router', expected one of"),
    ],
)
def test_a_malformed_manifest_raises_manifest_error_naming_the_field(data, message):
    with pytest.raises(ManifestError, match=message):
        ModelManifest.from_dict(data)


def test_a_missing_manifest_raises_manifest_error_saying_to_export_again(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest.json: missing; export the model again"):
        read_manifest(tmp_path)


def test_an_unknown_kind_is_refused_when_building_a_manifest(tmp_path):
    with pytest.raises(ManifestError, match=r"^kind: expected one of \['graph', 'entry', 'step', 'ensemble'\], got 'router'"):
        build_manifest(tmp_path, model="m", version=1, kind="router", source="test")


def test_the_device_of_a_cpu_backend_is_cpu_and_a_cuda_one_records_cuda_facts():
    assert device_info("cpu") == DeviceInfo("cpu", torch_version=torch.__version__)
    cuda = device_info("cuda:0")
    assert cuda.is_cuda and cuda.device == "cuda:0"
    assert cuda.cuda_version == torch.version.cuda
    if torch.cuda.is_available():
        assert cuda.gpu_name == torch.cuda.get_device_name(0)
        assert cuda.compute_capability == "{}.{}".format(*torch.cuda.get_device_capability(0))
    else:
        assert cuda.gpu_name is None and cuda.compute_capability is None


def test_a_half_precision_backend_option_is_the_manifest_precision(tmp_path):
    (tmp_path / "model.py").write_text("")
    manifest = build_manifest(tmp_path, model="m", version=1, kind="graph", source="test",
                              backend=BackendDescription("aoti", options={"precision": "fp16"}, device="cpu"))

    assert manifest.precision == "fp16" and manifest.backend == "aoti"
    assert list(manifest.sha256) == ["model.py"]


def test_fields_of_a_kind_of_its_own_survive_the_round_trip(tmp_path):
    (tmp_path / "model.py").write_text("")
    manifest = build_manifest(tmp_path, model="m", version=3, kind="ensemble", source="test", extra={"steps": ["a", "b"]})

    manifest.write(tmp_path)
    again = read_manifest(tmp_path)

    assert again == manifest
    assert json.loads((tmp_path / "manifest.json").read_text())["steps"] == ["a", "b"]


def test_the_manifest_describes_the_machine_the_artifact_was_built_on_not_the_exporting_one(tuned, tmp_path):
    built_on = {"device": "cuda:0", "torch": "2.99.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                "cuda_version": "12.8", "tensorrt_version": "10.9.0"}
    backend = BackendDescription("aoti", options={}, artifacts={}, device="cuda:0", built_on=built_on)

    manifest = build_manifest(None, model="m", version=1, kind="graph", source="test", backend=backend, sha256={})

    assert manifest.device == DeviceInfo("cuda:0", "NVIDIA H100 80GB HBM3", "9.0", "12.8", "10.9.0", "2.99.0")
    assert ModelManifest.from_dict(manifest.to_dict()).device == manifest.device


def test_a_tuned_backend_records_what_it_was_built_with_and_a_checkpoint_keeps_it(tuned, tmp_path):
    module = tuned
    described = [g["backend"]["built_on"] for g in module.to_dict()["graphs"]]

    assert described and all(b == {"device": "cpu", "torch": torch.__version__, "gpu_name": None, "compute_capability": None,
                                    "cuda_version": None, "tensorrt_version": None} for b in described)
    checkpoint = aitune_triton.save(module, tmp_path / "checkpoint")
    _, (stored,) = read_checkpoint_modules(checkpoint)
    assert [g.backend.built_on for g in stored.description.graphs] == described
