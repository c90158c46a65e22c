"""export(dry_run=True) / `export --dry-run` write nothing; an export over a model of another kind is refused."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from repo_helpers import snapshot, tuned_two_spec_net

import aitune_triton
from aitune_triton.cli import main
from aitune_triton.errors import ExportError
from aitune_triton.triton.config import model_config_text, read_model_config
from aitune_triton.triton.dry_run import ExportPlan
from aitune_triton.triton.exporter import export

NAME = "test_plan_net"
MODELS = [f"{NAME}.graph_0", f"{NAME}.graph_1", NAME]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    module = tuned_two_spec_net(NAME, root)
    return module, aitune_triton.save(module, root / "checkpoint")


def test_a_dry_run_creates_no_repository_and_plans_every_file_of_the_real_export(tuned, tmp_path):
    module, _ = tuned
    planned_at = tmp_path / "planned"

    plan = export(module, planned_at, dry_run=True)

    assert isinstance(plan, ExportPlan)
    assert not planned_at.exists()
    assert [(m.name, m.version, m.kind, m.exists) for m in plan.models] == [
        (MODELS[0], 1, "graph", False), (MODELS[1], 1, "graph", False), (NAME, 1, "entry", False)
    ]
    written = tmp_path / "written"
    export(module, written, show_progress=False)
    files = {p.relative_to(written).as_posix(): p.stat().st_size for p in written.rglob("*") if p.is_file()}
    planned = {f.path: f.size_bytes for m in plan.models for f in m.files}
    assert sorted(planned) == sorted(files)
    # Every size is exact but the manifest's (its library versions and hashes have fixed widths).
    assert {p: s for p, s in planned.items() if not p.endswith("manifest.json")} == {
        p: s for p, s in files.items() if not p.endswith("manifest.json")
    }
    for model in plan.models:
        assert model.config_text == model_config_text(read_model_config(written / model.name / "config.pbtxt"))
    assert plan.total_bytes == sum(planned.values())


def test_a_dry_run_into_an_existing_repository_leaves_it_byte_identical_and_plans_version_2(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)
    before = snapshot(repository)

    plan = export(module, repository, dry_run=True)

    assert snapshot(repository) == before
    assert [(m.version, m.exists) for m in plan.models] == [(2, True)] * 3
    assert f"{NAME}/  (entry model, version 2, new version of an existing model)" in plan.tree()


def test_the_export_command_with_dry_run_prints_the_tree_and_every_config_and_writes_nothing(tuned, tmp_path):
    _, checkpoint = tuned
    repository = tmp_path / "repo"

    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["export", str(checkpoint), "-o", str(repository), "--dry-run"])

    assert result.exit_code == 0, result.output
    assert not repository.exists()
    assert f"{MODELS[0]}/  (graph model, version 1, new model)" in result.output
    assert "1/model.onnx" in result.output and "config.pbtxt" in result.output
    for model in MODELS:
        assert f"# {model}/config.pbtxt\nname: \"{model}\"" in result.output
    assert "nothing written (dry run)" in result.output


def test_an_entry_model_named_like_an_existing_graph_model_is_refused_naming_it_and_its_kind(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)
    before = snapshot(repository)

    with pytest.raises(ExportError) as raised:
        export(module, repository, name=MODELS[0], show_progress=False)

    message = str(raised.value)
    assert message.startswith(f"{MODELS[0]}: {repository / MODELS[0]} already holds a graph model; this export would write "
                              "an entry model there.")
    assert "Export under another name (--name / Module name), or remove" in message
    assert snapshot(repository) == before


def test_an_export_over_a_model_directory_without_our_manifest_is_refused(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    (repository / NAME / "1").mkdir(parents=True)
    (repository / NAME / "config.pbtxt").write_text(f'name: "{NAME}"\nbackend: "onnxruntime"\n')
    before = snapshot(repository)

    with pytest.raises(ExportError, match=rf"^{NAME}: .* already holds a model without an aitune_triton manifest"):
        export(module, repository, show_progress=False)

    assert snapshot(repository) == before
    assert sorted(p.name for p in repository.iterdir()) == [NAME]


def test_a_graph_model_name_taken_by_an_entry_model_is_refused_in_a_dry_run_too(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, name=f"{NAME}.graph_0", show_progress=False)  # an entry model named like a graph model

    with pytest.raises(ExportError, match=rf"^{NAME}.graph_0: .* already holds an entry model; this export would write a graph model there"):
        export(module, repository, dry_run=True)


def test_a_new_version_of_an_older_export_without_kind_in_its_manifests_is_allowed(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)
    for model in MODELS:  # manifests as older exports wrote them
        path = repository / model / "1" / "manifest.json"
        old = json.loads(path.read_text())
        path.write_text(json.dumps({key: old[key] for key in ("source", "versions", "sha256", "model", "version")}))

    result = export(module, repository, show_progress=False)

    assert result.versions == {model: 2 for model in MODELS}


def test_the_export_command_refuses_a_collision_with_an_error_line(tuned, tmp_path):
    module, checkpoint = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)
    shutil.rmtree(repository / NAME / "1")
    (repository / NAME / "1").mkdir()  # a version without manifest: not ours any more

    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["export", str(checkpoint), "-o", str(repository)])

    assert result.exit_code == 1
    assert f"Error: {NAME}: " in result.output and "already holds a model without an aitune_triton manifest" in result.output
