"""Ensemble configurations around pre/post steps: wiring checks, config round trips, dry run, CLI."""

from __future__ import annotations

import json

import pytest
import text_steps
from click.testing import CliRunner
from google.protobuf import text_format
from repo_helpers import snapshot, tuned_two_spec_net
from tritonclient.grpc import model_config_pb2 as mc

import aitune_triton
from aitune_triton.cli import main
from aitune_triton.errors import ExportError
from aitune_triton.triton.config import model_config_text, read_model_config
from aitune_triton.triton.ensemble import Stage, StageTensor, ensemble_model_config, step_model_config
from aitune_triton.triton.exporter import export
from aitune_triton.triton.manifest import read_manifest
from aitune_triton.triton.steps import Step

NAME = "test_ensemble_net"


def entry_stage(**dims) -> Stage:
    """An entry model taking ``x`` (graph 0) or ``x`` and ``y`` (graph 1), returning ``logits``."""
    return Stage(NAME, 1, f"entry model '{NAME}'",
                 (StageTensor("x", "TYPE_FP32", dims.get("x", (-1, 8)), True), StageTensor("y", "TYPE_FP32", (-1, 4), True)),
                 (StageTensor("logits", "TYPE_FP32", (-1, 3)),),
                 (frozenset({"x", "y"}), frozenset({"x"})))


def step_stage(declared: Step, role: str) -> Stage:
    return Stage.from_step(declared, f"{NAME}.{role}", 1, role)


def test_the_ensemble_wires_each_tensor_from_its_one_producer_and_round_trips_through_text_format():
    config = ensemble_model_config("text", [step_stage(text_steps.featurize, "preprocess"), entry_stage(),
                                            step_stage(text_steps.classify, "postprocess")])
    parsed = text_format.Parse(model_config_text(config), mc.ModelConfig())
    assert parsed == config
    assert parsed.platform == "ensemble" and parsed.max_batch_size == 0
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in parsed.input] == [("text", "TYPE_STRING", [-1])]
    assert [t.name for t in parsed.output] == ["probs", "label", "score"]
    pre, entry, post = parsed.ensemble_scheduling.step
    assert (pre.model_name, pre.model_version) == (f"{NAME}.preprocess", 1)
    assert dict(pre.input_map) == {"text": "text"} and dict(pre.output_map) == {"x": "x", "length": "length"}
    assert dict(entry.input_map) == {"x": "x"}  # y stays unset: the entry routes to the (x,) graph spec
    assert dict(entry.output_map) == {"logits": "logits"}
    assert dict(post.input_map) == {"logits": "logits", "length": "length"}
    assert dict(post.output_map) == {"probs": "probs", "label": "label", "score": "score"}


def test_without_a_post_step_the_entry_outputs_are_the_ensemble_outputs():
    config = ensemble_model_config("text", [step_stage(text_steps.featurize, "preprocess"), entry_stage()])
    assert [t.name for t in config.output] == ["logits"]
    assert dict(config.ensemble_scheduling.step[0].output_map) == {"x": "x"}  # 'length' is consumed by nobody


def test_wiring_errors_name_the_tensor_both_sides_and_what_to_do():
    post = step_stage(text_steps.classify, "postprocess")
    with pytest.raises(ExportError, match=r"tensor 'x' is TYPE_FP32 dims \[-1, 8\] as preprocess step 'featurize' .* "
                                          r"but entry model 'test_ensemble_net' takes TYPE_FP32 dims \[-1, 6\]"):
        ensemble_model_config("text", [step_stage(text_steps.featurize, "preprocess"), entry_stage(x=(-1, 6)), post])
    ints = Step(lambda text: {}, [("text", "TYPE_STRING", [-1])], [("x", "TYPE_INT64", [-1, 8])], name="ints")
    with pytest.raises(ExportError, match=r"tensor 'x' is TYPE_INT64 .* takes TYPE_FP32"):
        ensemble_model_config("text", [step_stage(ints, "preprocess"), entry_stage()])
    other = Step(lambda text: {}, [("text", "TYPE_STRING", [-1])], [("z", "TYPE_FP32", [-1, 8])], name="other")
    with pytest.raises(ExportError, match=r"tensors reaching entry model .* are \[\], but it routes a request only when "
                                          r"its inputs are exactly one graph spec's: x; x, y"):
        ensemble_model_config("text", [step_stage(other, "preprocess"), entry_stage()])
    needs = Step(lambda probs: {}, [("probs", "TYPE_FP32", [-1, 3])], [("out", "TYPE_FP32", [-1])], name="needs")
    with pytest.raises(ExportError, match=r"input 'probs' of postprocess step 'needs' .* is produced by no earlier stage "
                                          r"\(available: 'length' .*'logits' \(entry model"):
        ensemble_model_config("text", [step_stage(text_steps.featurize, "preprocess"), entry_stage(), step_stage(needs, "postprocess")])
    twice = Step(lambda logits: {}, [("logits", "TYPE_FP32", [-1, 3])], [("x", "TYPE_FP32", [-1, 8])], name="twice")
    with pytest.raises(ExportError, match=r"tensor 'x' would be produced by both preprocess step 'featurize' .* and "
                                          r"postprocess step 'twice'"):
        ensemble_model_config("text", [step_stage(text_steps.featurize, "preprocess"), entry_stage(), step_stage(twice, "postprocess")])


def test_a_step_model_config_declares_the_step_tensors_on_cpu_without_batching():
    config = step_model_config("pre", text_steps.featurize, instance_count=2)
    assert text_format.Parse(model_config_text(config), mc.ModelConfig()) == config
    assert config.backend == "python" and config.max_batch_size == 0
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == [
        ("x", "TYPE_FP32", [-1, 8]), ("length", "TYPE_INT64", [-1])]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and config.instance_group[0].count == 2


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    module = tuned_two_spec_net(NAME, root)
    return module, aitune_triton.save(module, root / "checkpoint")


def test_export_writes_step_and_ensemble_models_that_a_dry_run_plans_exactly(tuned, tmp_path):
    module, _ = tuned
    plan = export(module, tmp_path / "planned", dry_run=True, preprocess=text_steps.featurize, postprocess="text_steps:classify")
    assert not (tmp_path / "planned").exists()
    assert [(m.name, m.kind) for m in plan.models][-3:] == [
        (f"{NAME}.preprocess", "step"), (f"{NAME}.postprocess", "step"), (f"{NAME}_ensemble", "ensemble")]
    assert "(ensemble model, version 1, new model)" in plan.tree()
    repository = tmp_path / "repo"
    result = export(module, repository, show_progress=False, preprocess=text_steps.featurize, postprocess=text_steps.classify,
                    ensemble_name="text_net")
    assert result.ensemble_model == "text_net"
    assert result.step_models == [f"{NAME}.preprocess", f"{NAME}.postprocess"]
    step_dir = repository / f"{NAME}.preprocess" / "1"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "aitune_triton_served", "manifest.json", "model.py", "step.json", "step_module.py"]
    assert (step_dir / "step_module.py").read_text() == text_steps.featurize.source_file().read_text()
    assert json.loads((step_dir / "step.json").read_text())["function"] == "text_steps:featurize"
    assert read_manifest(step_dir).kind == "step"
    assert read_manifest(repository / "text_net" / "1").kind == "ensemble"
    ensemble = read_model_config(repository / "text_net" / "config.pbtxt")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [f"{NAME}.preprocess", NAME, f"{NAME}.postprocess"]
    compile((step_dir / "model.py").read_text(), "model.py", "exec")
    report = aitune_triton.triton.check_repository(repository)
    assert not list(report.findings("ERROR")), [f.message for _, f in report.findings("ERROR")]
    # A second export adds version 2 of each and pins it.
    export(module, repository, show_progress=False, preprocess=text_steps.featurize, postprocess=text_steps.classify,
           ensemble_name="text_net")
    pinned = read_model_config(repository / "text_net" / "config.pbtxt").ensemble_scheduling.step
    assert [s.model_version for s in pinned] == [2, 2, 2]
    # check finds a pinned step version that is gone.
    import shutil

    shutil.rmtree(repository / f"{NAME}.postprocess" / "2")
    report = aitune_triton.triton.check_repository(repository)
    assert [(model, f.message) for model, f in report.findings("ERROR") if "ensemble" in f.message] == [
        ("text_net", f"ensemble: step model '{NAME}.postprocess' has no version 2 (the ensemble pins it); export again.")]


def test_a_step_that_does_not_fit_the_module_writes_nothing(tuned, tmp_path):
    module, _ = tuned
    wrong = Step(text_steps.wrong_dtype.function, [("logits", "TYPE_FP64", [-1, 3])], text_steps.wrong_dtype.outputs, name="w")
    repository = tmp_path / "repo"
    with pytest.raises(ExportError, match=r"tensor 'logits' is TYPE_FP32 dims \[-1, 3\] as entry model 'test_ensemble_net' "
                                          r"produces it, but postprocess step 'w' .* takes TYPE_FP64"):
        export(module, repository, show_progress=False, postprocess=wrong)
    clash = Step(text_steps.wrong_dtype.function, text_steps.wrong_dtype.inputs, [("x", "TYPE_FP32", [-1, 3])], name="c")
    with pytest.raises(ExportError, match=r"tensor 'x' would be produced by both the ensemble's input and postprocess step"):
        export(module, repository, show_progress=False, postprocess=clash)
    assert not repository.exists()
    with pytest.raises(ExportError, match=r"ensemble_name: names the ensemble around pre/post steps"):
        export(module, repository, show_progress=False, ensemble_name="x")


def test_an_ensemble_name_taken_by_a_model_of_another_kind_is_refused(tuned, tmp_path):
    module, _ = tuned
    repository = tmp_path / "repo"
    export(module, repository, show_progress=False)
    before = snapshot(repository)
    with pytest.raises(ExportError, match=rf"{NAME}: .* already holds an entry model; this export would write an ensemble model"):
        export(module, repository, show_progress=False, name=f"{NAME}_x", preprocess=text_steps.featurize, ensemble_name=NAME)
    assert snapshot(repository) == before


def test_the_cli_dry_run_shows_the_step_and_ensemble_models(tuned, tmp_path):
    _, checkpoint = tuned
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "repo"), "--dry-run",
                                       "--preprocess", "text_steps:featurize", "--postprocess", "text_steps:classify",
                                       "--ensemble-name", "cli_text"])
    assert result.exit_code == 0, result.output
    assert f"{NAME}.preprocess/  (step model, version 1, new model)" in result.output
    assert "cli_text/  (ensemble model, version 1, new model)" in result.output
    assert 'platform: "ensemble"' in result.output
    assert not (tmp_path / "repo").exists()
    bad = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "repo"), "--preprocess", "text_steps:nope"])
    assert bad.exit_code == 1 and "Error: preprocess: module 'text_steps'" in bad.output and "has no 'nope'" in bad.output


def test_steps_and_the_ensemble_follow_the_version_policy_with_the_requested_version(tuned, tmp_path):
    from aitune_triton.triton import TritonModelOptions, VersionPolicy

    module, _ = tuned
    options = TritonModelOptions(version_policy=VersionPolicy(all=True))
    plan = export(module, tmp_path / "repo", dry_run=True, preprocess=text_steps.featurize, options=options, version=3)

    configs = {m.name: text_format.Parse(m.config_text, mc.ModelConfig()) for m in plan.models}
    assert {name: m.version for name, m in zip(configs, plan.models)} == {name: 3 for name in configs}
    for name in (f"{NAME}.preprocess", f"{NAME}_ensemble"):
        assert configs[name].version_policy.WhichOneof("policy_choice") == "all", name


def test_check_reports_an_ensemble_pinning_a_version_its_model_no_longer_serves(tuned, tmp_path):
    from aitune_triton.triton import TritonModelOptions, VersionPolicy, check_repository

    module, _ = tuned
    for policy, errors in ((None, 1), (VersionPolicy(all=True), 0)):
        repository = tmp_path / f"repo_{errors}"
        options = TritonModelOptions(version_policy=policy) if policy else TritonModelOptions()
        export(module, repository, show_progress=False, preprocess=text_steps.featurize, postprocess=text_steps.classify,
               ensemble_name="pinned", options=options)
        export(module, repository, show_progress=False, options=options)  # version 2 of the module's models only

        found = [f.message for model, f in check_repository(repository).findings("ERROR") if model == "pinned"]

        assert len(found) == errors, found
        if errors:
            assert found[0].startswith(f"ensemble pins '{NAME}' version 1, but that model's version_policy serves only [2]")
