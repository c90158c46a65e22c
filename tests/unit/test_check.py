"""check_repository / `aitune-triton check`: a real export, corrupted one way per test, reports that exact problem."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from repo_helpers import tuned_two_spec_net

from aitune_triton.cli import main
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.triton.check import ERROR, OK, WARN, check_repository
from aitune_triton.triton.exporter import export

NAME = "test_check_net"
GRAPH = f"{NAME}.graph_0"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A pristine repository: entry model NAME routing to NAME.graph_0 (x, y) and NAME.graph_1 (x,)."""
    root = tmp_path_factory.mktemp("check")
    module = tuned_two_spec_net(NAME, root)
    export(module, root / "pristine", show_progress=False)
    return root / "pristine"


@pytest.fixture
def repository(exported, tmp_path):
    """A fresh copy of the exported repository, for one test to corrupt."""
    return shutil.copytree(exported, tmp_path / "repo")


def _messages(report, model, severity):
    return [f.message for f in report.model(model).findings if f.severity == severity]


def test_a_fresh_export_checks_clean_with_every_model_ok(repository):
    report = check_repository(repository)

    assert report.ok
    assert [(m.name, m.kind, m.status) for m in report.models] == [
        (NAME, "entry", OK), (GRAPH, "graph", OK), (f"{NAME}.graph_1", "graph", OK)
    ]
    assert list(report.findings(ERROR)) == [] and list(report.findings(WARN)) == []


def test_a_byte_changed_in_the_artifact_is_a_sha256_mismatch_naming_the_file(repository):
    artifact = repository / GRAPH / "1" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    report = check_repository(repository)

    assert not report.ok
    [message] = _messages(report, GRAPH, ERROR)
    assert message.startswith("model.onnx: SHA-256 mismatch") and "modified or corrupted after export" in message
    assert report.model(NAME).status == OK


def test_a_deleted_file_is_an_error_saying_it_is_listed_but_missing(repository):
    (repository / GRAPH / "1" / "io.json").unlink()

    report = check_repository(repository)

    assert "io.json: listed in manifest.json but missing; export the model again." in _messages(report, GRAPH, ERROR)
    # The entry model's routes pin that version and need its io.json too.
    assert any("io.json cannot be read" in m for m in _messages(report, NAME, ERROR))


def test_a_changed_config_dim_is_an_error_naming_the_tensor_and_both_dims(repository):
    config = repository / GRAPH / "config.pbtxt"
    text = config.read_text()
    assert "dims: 8\n" in text
    config.write_text(text.replace("dims: 8\n", "dims: 9\n", 1))

    report = check_repository(repository)

    [message] = _messages(report, GRAPH, ERROR)
    assert "input 'x': config.pbtxt dims [9], the manifest [8]" in message


def test_broken_config_syntax_is_a_schema_error_naming_the_line(repository):
    config = repository / GRAPH / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 5", "max_batch_size: five", 1))

    report = check_repository(repository)

    [message] = _messages(report, GRAPH, ERROR)
    assert message.startswith("config.pbtxt: does not parse against the ModelConfig schema:")
    assert "max_batch_size" in message and "five" in message


def test_a_file_added_after_export_is_a_warning(repository):
    (repository / GRAPH / "1" / "notes.txt").write_text("hello")

    report = check_repository(repository)

    assert report.ok
    assert _messages(report, GRAPH, WARN) == ["notes.txt: not listed in manifest.json (added after export?); remove it or export again."]


def test_routes_to_a_graph_model_version_that_does_not_exist_are_an_error(repository):
    (repository / GRAPH / "1").rename(repository / GRAPH / "2")

    report = check_repository(repository)

    assert f"routes: graph model {GRAPH!r} has no version 1 (the routes pin it); export the module again." in _messages(
        report, NAME, ERROR
    )


def test_a_config_name_that_differs_from_its_directory_is_an_error(repository):
    config = repository / GRAPH / "config.pbtxt"
    config.write_text(config.read_text().replace(f'name: "{GRAPH}"', 'name: "other"', 1))

    report = check_repository(repository)

    assert any("name 'other' differs from the directory name" in m for m in _messages(report, GRAPH, ERROR))


def _edit_manifest(repository, **fields):
    path = repository / GRAPH / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the compute capability is compared instead")
def test_a_model_tuned_on_a_gpu_is_a_warning_on_a_machine_without_cuda(repository):
    _edit_manifest(repository, device={"device": "cuda:0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                       "cuda_version": "12.8", "tensorrt_version": None})

    report = check_repository(repository)

    assert report.ok
    [message] = _messages(report, GRAPH, WARN)
    assert message.startswith("tuned on cuda:0 (NVIDIA H100 80GB HBM3, compute capability 9.0), but this machine has no CUDA")


@pytest.mark.skipif(torch.cuda.is_available(), reason="KIND_GPU instances can be created here")
def test_gpu_instances_on_a_machine_without_cuda_are_a_warning(repository):
    config = repository / GRAPH / "config.pbtxt"
    config.write_text(config.read_text().replace("kind: KIND_CPU", "kind: KIND_GPU", 1))

    report = check_repository(repository)

    assert report.ok
    assert _messages(report, GRAPH, WARN) == [
        "config.pbtxt: KIND_GPU instances, but this machine has no CUDA: a server here cannot create them. "
        "Export with --instance-kind cpu to serve it here."
    ]


def test_a_tensorrt_plan_built_with_another_tensorrt_version_is_an_error(repository):
    _edit_manifest(repository, backend="tensorrt", device={"device": "cpu", "tensorrt_version": "0.0.1"})
    config = repository / GRAPH / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "python"', 'platform: "tensorrt_plan"', 1))

    report = check_repository(repository)

    assert any(m.startswith("TensorRT plan built with TensorRT 0.0.1; this machine has") for m in _messages(report, GRAPH, ERROR))


def test_an_aoti_package_built_with_another_torch_is_a_warning(repository):
    path = repository / GRAPH / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    _edit_manifest(repository, backend="aoti", device={**manifest["device"], "torch_version": "2.0.0"})

    report = check_repository(repository)

    assert report.ok
    [message] = _messages(report, GRAPH, WARN)
    assert message.startswith(f"aoti package built with torch 2.0.0; torch here is {torch.__version__}.")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares with this machine's GPU")
def test_an_aoti_model_tuned_on_a_gpu_of_another_compute_capability_is_an_error(repository):
    _edit_manifest(repository, backend="aoti", device={"device": "cuda:0", "gpu_name": "Old GPU", "compute_capability": "1.0",
                                                       "cuda_version": torch.version.cuda})

    report = check_repository(repository)

    assert any("compute capability 1.0" in m and "tune again on this GPU" in m for m in _messages(report, GRAPH, ERROR))


def test_a_manifest_that_is_not_json_is_an_error(repository):
    (repository / GRAPH / "1" / "manifest.json").write_text("{not json")

    report = check_repository(repository)

    assert any("cannot be read as JSON" in m for m in _messages(report, GRAPH, ERROR))


def test_a_model_directory_without_manifest_is_a_warning_not_an_error(repository):
    foreign = repository / "hand_written"
    (foreign / "1").mkdir(parents=True)
    (foreign / "config.pbtxt").write_text('name: "hand_written"\nbackend: "python"\n')
    (foreign / "1" / "model.py").write_text("")

    report = check_repository(repository)

    assert report.ok
    assert report.model("hand_written").kind is None
    assert _messages(report, "hand_written", WARN) == ["no manifest.json: not exported by aitune_triton; its files cannot be verified."]


def test_a_directory_that_is_not_a_model_is_one_error_saying_to_move_it_out(repository):
    (repository / "photos").mkdir()
    (repository / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")

    report = check_repository(repository)

    assert not report.ok
    assert _messages(report, "photos", ERROR) == [
        "not a model directory (no config.pbtxt, no version directory): Triton fails to start on a repository holding "
        "it. Move it out of the model repository."
    ]
    assert report.model(NAME).status == OK


def test_checking_a_path_that_is_not_a_directory_raises_naming_path(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"^path: .*missing is not a directory"):
        check_repository(tmp_path / "missing")


def test_the_check_command_prints_a_table_per_model_and_exits_1_on_an_error(repository):
    (repository / GRAPH / "1" / "model.py").write_text("# edited\n")
    runner = CliRunner(env={"COLUMNS": "240"})

    result = runner.invoke(main, ["check", str(repository)])

    assert result.exit_code == 1, result.output
    for title in (f"{NAME} (entry): OK", f"{GRAPH} (graph): ERROR", f"{NAME}.graph_1 (graph): OK"):
        assert title in result.output
    assert "model.py: SHA-256 mismatch" in result.output
    assert "Error: 1 error(s) in" in result.output


def test_the_check_command_exits_0_on_a_fresh_export(repository):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["check", str(repository)])

    assert result.exit_code == 0, result.output
    assert "no errors (0 warning(s))" in result.output


def test_what_an_artifact_is_bound_to_is_declared_by_its_backend_class():
    from aitune_triton.backends import get_backend_class

    bindings = {name: (get_backend_class(name).gpu_architecture_bound, get_backend_class(name).torch_version_bound)
                for name in ("aoti", "inductor", "onnxruntime", "eager")}

    assert bindings == {"aoti": (True, True), "inductor": (True, False), "onnxruntime": (False, False), "eager": (False, False)}
