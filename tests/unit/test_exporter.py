"""export(): a tuned module or checkpoint becomes Triton model directories, atomically and versioned."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from nets import record_two_specs, tuned_two_input_net

from aitune_triton import Module, OneBackendStrategy
from aitune_triton._atomic import STAGING_PREFIX
from aitune_triton.errors import CheckpointError, ExportError, InvalidNameError
from aitune_triton.triton.config import ROUTES_PARAMETER, TritonModelOptions, read_model_config
from aitune_triton.triton.exporter import export
from aitune_triton.triton.io import ModelIO

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_NAME = "test_exporter_two_input_net"
GRAPH_MODELS = [f"{MODULE_NAME}.graph_0", f"{MODULE_NAME}.graph_1"]
#: The served package's files, as a version directory lists them (aitune_triton_served/...).
SERVED_FILES = [
    f"aitune_triton_served/{path.relative_to(REPO_ROOT / 'aitune_triton' / 'served').as_posix()}"
    for path in (REPO_ROOT / "aitune_triton" / "served").rglob("*.py")
]



@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A TwoInputNet tuned with ONNX Runtime for (x, y) and (x,), and its checkpoint."""
    module, checkpoint = tuned_two_input_net(MODULE_NAME, tmp_path_factory.mktemp("exporter"))
    yield module, checkpoint
    del module


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _staging_dirs(repository: Path) -> list[str]:
    """Staging directories of an export: next to the repository (never inside it), or inside it."""
    beside = [p.name for p in repository.parent.iterdir() if p.name.startswith(STAGING_PREFIX)]
    inside = [p.name for p in repository.iterdir() if p.name.startswith(".")] if repository.is_dir() else []
    return beside + inside


def test_export_writes_an_entry_model_and_one_graph_model_per_graph_spec(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"

    result = export(module, repository, show_progress=False)

    assert result.repository == repository.absolute()
    assert result.entry_model == MODULE_NAME
    assert result.graph_models == GRAPH_MODELS
    assert result.versions == {GRAPH_MODELS[0]: 1, GRAPH_MODELS[1]: 1, MODULE_NAME: 1}
    assert sorted(p.name for p in repository.iterdir()) == sorted([MODULE_NAME, *GRAPH_MODELS])
    for graph_model in GRAPH_MODELS:
        # warmup/: the recorded calls model_warmup runs at load (warmup is on by default)
        assert sorted(p.name for p in (repository / graph_model).iterdir()) == ["1", "config.pbtxt", "warmup"]
        assert sorted(p.name for p in (repository / graph_model / "1").iterdir()) == [
            "aitune_triton_served",
            "io.json",
            "manifest.json",
            "model.onnx",
            "model.py",
        ]
    assert sorted(p.name for p in (repository / MODULE_NAME / "1").iterdir()) == [
        "aitune_triton_served",
        "manifest.json",
        "model.py",
        "routes.json",
    ]


def test_every_generated_model_py_is_valid_python_for_its_runtime(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)

    for model in [MODULE_NAME, *GRAPH_MODELS]:
        source = (repository / model / "1" / "model.py").read_text()
        compile(source, str(repository / model / "1" / "model.py"), "exec")
        assert "class TritonPythonModel" in source
        assert "def execute(self, requests)" in source
    graph_dir = repository / GRAPH_MODELS[0] / "1"
    graph_source = (graph_dir / "model.py").read_text()
    assert 'RUNTIME = "onnxruntime"' in graph_source and 'ARTIFACT = "model.onnx"' in graph_source
    assert "import onnxruntime" in (graph_dir / "aitune_triton_served" / "runtimes" / "onnxruntime.py").read_text()
    # ONNX Runtime models load without torch: torch is imported only where a bfloat16 tensor needs DLPack.
    for name in ("model.py", "aitune_triton_served/graph_model.py", "aitune_triton_served/tensors.py",
                 "aitune_triton_served/runtimes/onnxruntime.py", "aitune_triton_served/contract.py"):
        source = (graph_dir / name).read_text()
        assert not [line for line in source.splitlines() if line.startswith(("import torch", "from torch"))], name
    router_dir = repository / MODULE_NAME / "1"
    assert "pb_utils.InferenceRequest(" in (router_dir / "aitune_triton_served" / "router.py").read_text()
    assert "router.Router(pb_utils, args)" in (router_dir / "model.py").read_text()


def test_the_entry_config_routes_match_the_io_json_of_each_graph_model(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)

    ios = []
    for index, graph_model in enumerate(GRAPH_MODELS):
        config = read_model_config(repository / graph_model / "config.pbtxt")
        io = ModelIO.from_dict(json.loads((repository / graph_model / "1" / "io.json").read_text()))
        ios.append(io)
        assert config.name == graph_model
        assert config.max_batch_size == 5
        assert io.model_name == graph_model
        assert io.graph == f"graph_{index}"
        assert io.key == module.to_dict()["graphs"][index]["graph"]["key"]
    entry = read_model_config(repository / MODULE_NAME / "config.pbtxt")
    routes = json.loads(entry.parameters[ROUTES_PARAMETER].string_value)
    assert entry.name == MODULE_NAME
    assert routes["module"] == MODULE_NAME
    assert routes["signature"] == module.signature.to_dict()
    assert [ModelIO.from_dict(graph) for graph in routes["graphs"]] == ios


def test_manifest_sha256_matches_the_copied_artifact_and_the_tuned_one(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)

    for index, graph_model in enumerate(GRAPH_MODELS):
        version_dir = repository / graph_model / "1"
        manifest = json.loads((version_dir / "manifest.json").read_text())
        source_artifact = Path(module.to_dict()["graphs"][index]["backend"]["artifacts"]["model"])
        assert manifest["model"] == graph_model
        assert manifest["version"] == 1
        assert sorted(name for name in manifest["sha256"] if "/" not in name) == ["io.json", "model.onnx", "model.py"]
        assert sorted(name for name in manifest["sha256"] if "/" in name) == sorted(SERVED_FILES)
        assert manifest["sha256"]["model.onnx"] == _sha256(version_dir / "model.onnx") == _sha256(source_artifact)
        assert manifest["sha256"]["model.py"] == _sha256(version_dir / "model.py")
        assert manifest["sha256"]["io.json"] == _sha256(version_dir / "io.json")
        assert manifest["source"] == f"module '{MODULE_NAME}'"
        assert manifest["versions"]["torch"] == torch.__version__
    entry_manifest = json.loads((repository / MODULE_NAME / "1" / "manifest.json").read_text())
    assert sorted(entry_manifest["sha256"]) == sorted(["model.py", "routes.json", *SERVED_FILES])
    for name in SERVED_FILES:  # the served package copied as it is in this source tree
        assert entry_manifest["sha256"][name] == _sha256(REPO_ROOT / "aitune_triton" / "served" / name.split("/", 1)[1])


def test_a_second_export_adds_version_2_and_leaves_version_1_byte_identical(tuned, tmp_path):
    module, checkpoint = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)
    version_1 = {model: _snapshot(repository / model / "1") for model in [MODULE_NAME, *GRAPH_MODELS]}

    result = export(checkpoint, repository, show_progress=False)

    assert result.versions == {GRAPH_MODELS[0]: 2, GRAPH_MODELS[1]: 2, MODULE_NAME: 2}
    for model, files in version_1.items():
        warmup = [] if model == MODULE_NAME else ["warmup"]  # graph models: version-prefixed warmup files
        assert sorted(p.name for p in (repository / model).iterdir()) == ["1", "2", "config.pbtxt", *warmup]
        assert _snapshot(repository / model / "1") == files
        assert read_model_config(repository / model / "config.pbtxt").name == model
    manifest = json.loads((repository / GRAPH_MODELS[0] / "2" / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert manifest["source"] == f"checkpoint {checkpoint}"
    assert manifest["sha256"]["model.onnx"] == _sha256(repository / GRAPH_MODELS[0] / "1" / "model.onnx")
    assert _staging_dirs(repository) == []


def test_export_under_another_name_names_every_model_after_it(tuned, tmp_path):
    _, checkpoint = tuned

    result = export(checkpoint, tmp_path / "repo", name="renamed-model_2", show_progress=False)

    assert result.entry_model == "renamed-model_2"
    assert result.graph_models == ["renamed-model_2.graph_0", "renamed-model_2.graph_1"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [
        "renamed-model_2",
        "renamed-model_2.graph_0",
        "renamed-model_2.graph_1",
    ]
    entry = read_model_config(tmp_path / "repo" / "renamed-model_2" / "config.pbtxt")
    routes = json.loads(entry.parameters[ROUTES_PARAMETER].string_value)
    assert [graph["model_name"] for graph in routes["graphs"]] == result.graph_models


def test_export_options_reach_the_graph_model_configs(tuned, tmp_path):
    module, _ = tuned
    options = TritonModelOptions(instance_count=2, max_queue_delay_microseconds=750, preferred_batch_size=(4,))

    export(module, tmp_path / "repo", options=options, show_progress=False)

    config = read_model_config(tmp_path / "repo" / GRAPH_MODELS[0] / "config.pbtxt")
    assert [group.count for group in config.instance_group] == [2]
    assert config.dynamic_batching.max_queue_delay_microseconds == 750
    assert list(config.dynamic_batching.preferred_batch_size) == [4]


@pytest.mark.parametrize("state", ["INIT", "RECORDING"])
def test_exporting_an_untuned_module_raises_and_creates_nothing(two_input_net, unique_name, tmp_path, state):
    module = Module(two_input_net, name=unique_name)
    if state == "RECORDING":
        module(torch.randn(2, 8))
    assert module.state.name == state
    repository = tmp_path / "repo"

    with pytest.raises(ExportError, match=rf"'{unique_name}' is not tuned \(state: {state}\)"):
        export(module, repository, show_progress=False)

    assert not repository.exists()


def test_exporting_a_missing_checkpoint_raises_checkpoint_error_and_creates_nothing(tmp_path):
    repository = tmp_path / "repo"

    with pytest.raises(CheckpointError, match="is not a directory"):
        export(tmp_path / "no_such_checkpoint", repository, show_progress=False)

    assert not repository.exists()


def test_exporting_something_else_raises_export_error(tmp_path):
    with pytest.raises(ExportError, match="expected a tuned aitune_triton.Module or a checkpoint directory"):
        export(torch.nn.Linear(2, 2), tmp_path / "repo", show_progress=False)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "../escape", "", "sp ace"])
def test_an_invalid_entry_name_raises_invalid_name_error_and_creates_nothing(tuned, tmp_path, name):
    module, _ = tuned
    repository = tmp_path / "repo"

    with pytest.raises(InvalidNameError, match=r"^name: expected a Triton model name"):
        export(module, repository, name=name, show_progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_graph_tuned_with_the_eager_backend_raises_naming_that_graph(two_input_net, unique_name, tmp_path):
    module = Module(
        two_input_net,
        name=unique_name,
        strategies=[OneBackendStrategy("onnxruntime"), OneBackendStrategy("eager")],
    )
    record_two_specs(module)
    module.tune()
    assert [g.backend.name for g in module.tuned_graphs] == ["onnxruntime", "eager"]
    repository = tmp_path / "repo"

    with pytest.raises(ExportError) as raised:
        export(module, repository, show_progress=False)

    assert str(raised.value).startswith("graph_1: backend 'eager' has no artifact Triton can load")
    assert "graph_0" not in str(raised.value)
    assert not repository.exists()


def test_a_failure_while_writing_leaves_no_model_directory_and_no_staging_directory(two_input_net, unique_name, tmp_path):
    module = Module(two_input_net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    record_two_specs(module)
    module.tune()
    # The second graph's artifact disappears (a cleared tuning cache): the first graph model is
    # already staged when the export fails.
    Path(module.to_dict()["graphs"][1]["backend"]["artifacts"]["model"]).unlink()
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "other_model").mkdir()
    (repository / "other_model" / "config.pbtxt").write_text('name: "other_model"\n')  # a model: the repository is one

    with pytest.raises(ExportError, match=rf"{unique_name}.graph_1: artifact .* does not exist"):
        export(module, repository, show_progress=False)

    assert sorted(p.name for p in repository.iterdir()) == ["other_model"]


def test_a_successful_export_leaves_no_staging_directory(tuned, tmp_path):
    module, _ = tuned

    export(module, tmp_path / "repo", show_progress=False)
    export(module, tmp_path / "repo", show_progress=False)

    assert _staging_dirs(tmp_path / "repo") == []


def test_export_removes_the_staging_directory_a_killed_export_left_next_to_the_repository(tuned, tmp_path):
    module, _ = tuned
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    left = tmp_path / f"{STAGING_PREFIX}{finished.pid}-k9"
    (left / f"{MODULE_NAME}.graph_0" / "1").mkdir(parents=True)
    (left / f"{MODULE_NAME}.graph_0" / "1" / "model.onnx").write_bytes(b"half written")

    export(module, tmp_path / "repo", show_progress=False)

    assert not left.exists()
    assert _staging_dirs(tmp_path / "repo") == []


def test_the_wheel_ships_the_templates_and_the_installed_exporter_finds_them(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("aitune_triton-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"aitune_triton/templates/graph_model.py.j2", "aitune_triton/templates/router_model.py.j2"} <= names
        # The served package that every model version gets a copy of.
        assert {f"aitune_triton/served/{name.split('/', 1)[1]}" for name in SERVED_FILES} <= names
        for template in ("graph_model.py.j2", "router_model.py.j2"):
            shipped = archive.read(f"aitune_triton/templates/{template}")
            assert shipped == (REPO_ROOT / "templates" / template).read_bytes()
        archive.extractall(tmp_path / "installed")

    # The unpacked wheel, first on sys.path, resolves its own packaged templates.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import aitune_triton.triton.exporter as e; print(e.__file__); print(e.templates_dir()); "
            "from aitune_triton.triton.models.planned import template_environment; "
            "template_environment().get_template('graph_model.py.j2'); print(sorted(e.served_files()) == sorted(%r))" % SERVED_FILES,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "installed")},
    )
    assert probe.returncode == 0, probe.stderr
    module_file, templates, same_served_files = probe.stdout.strip().splitlines()[-3:]
    assert same_served_files == "True"
    assert Path(module_file).is_relative_to(tmp_path / "installed")
    assert Path(templates) == tmp_path / "installed" / "aitune_triton" / "templates"


def test_export_to_a_path_that_is_a_file_is_an_export_error_and_writes_nothing(tuned, tmp_path):
    _, checkpoint = tuned
    target = tmp_path / "model.py"
    target.write_text("# not a repository\n")

    with pytest.raises(ExportError, match="is a file; pass a directory"):
        export(checkpoint, target, show_progress=False)

    assert target.read_text() == "# not a repository\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def test_a_graph_the_speed_gate_kept_on_eager_raises_saying_so_and_how_to_export_it(unique_name, tmp_path):
    from aitune_triton.strategies import MinLatencyStrategy, Profiler

    torch.manual_seed(0)
    # No backend runs a Linear 1000x faster than eager: the gate keeps eager.
    strategy = MinLatencyStrategy(["onnxruntime"], speed_margin=0.999, profiler=Profiler(min_runs=3, max_runs=5, max_time_s=0.2))
    module = Module(torch.nn.Linear(4, 3).eval(), name=unique_name, strategy=strategy)
    with torch.no_grad():
        module(torch.randn(2, 4))
    module.tune()
    assert module.tuned_graphs[0].backend.name == "eager"

    with pytest.raises(ExportError) as raised:
        export(module, tmp_path / "repo", show_progress=False)

    message = str(raised.value)
    assert message.startswith("graph_0: backend 'eager' has no artifact Triton can load")
    assert "speed gate" in message and "OneBackendStrategy('inductor')" in message and "speed_margin=None" in message
    assert not (tmp_path / "repo").exists()


def test_export_into_a_directory_holding_other_things_than_models_is_refused_before_writing(tuned, tmp_path):
    _, checkpoint = tuned
    repository = tmp_path / "repository"
    export(checkpoint, repository, show_progress=False)  # a model repository: models, a README, hidden files
    (repository / "README.md").write_text("# models\n")
    (repository / ".gitignore").write_text("*\n")
    export(checkpoint, repository, show_progress=False)
    (repository / "photos").mkdir()
    (repository / "notes.txt").write_text("mine\n")
    before = _snapshot(repository)

    with pytest.raises(ExportError) as raised:
        export(checkpoint, repository, show_progress=False)

    assert f"repository: {repository} is not a model repository: it holds notes.txt, photos/, which Triton" in str(raised.value)
    assert "move those entries out" in str(raised.value)
    assert _snapshot(repository) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repository"]  # no staging directory beside it
    with pytest.raises(ExportError, match="is an aitune_triton checkpoint .* Export it first"):
        export(checkpoint, checkpoint, show_progress=False)
