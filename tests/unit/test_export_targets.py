"""Export targets and deployment targets are registered by name: a registry that rejects duplicates,
lists names in registration order and refuses an unknown name with the names it knows."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from repo_helpers import tuned_two_spec_net

from aitune_triton.deployment import DeploymentTarget, deployment_target, deployment_target_names, register_deployment_target
from aitune_triton.errors import ArgumentTypeError, DuplicateRegistrationError, InvalidArgumentError
from aitune_triton.triton.exporter import export
from aitune_triton.triton.models.graph import GraphModelRequest
from aitune_triton.triton.models.planned import PlannedModel
from aitune_triton.triton.native import ExportTarget
from aitune_triton.triton.targets import base as targets_base
from aitune_triton.triton.targets import (
    NativeExportTarget,
    PythonTarget,
    export_target,
    export_target_names,
    register_export_target,
)

NAME = "test_targets_net"


class LabelledPythonTarget(PythonTarget):
    """A new export target in a few lines: the Python-backend model, with its own name in the manifest."""

    name = "test_labelled_python"
    help = "a Python-backend model whose manifest names this target"

    def plan_graph_model(self, request: GraphModelRequest) -> PlannedModel:
        model = super().plan_graph_model(request)
        model.serving.target = self.name
        return model


LABELLED = LabelledPythonTarget()


@pytest.fixture
def labelled(monkeypatch):
    """LABELLED registered for one test (other tests see the built-in targets only)."""
    monkeypatch.setattr(targets_base, "_TARGETS", copy.copy(targets_base._TARGETS))
    monkeypatch.setattr(targets_base._TARGETS, "_items", dict(targets_base._TARGETS._items))
    register_export_target(LABELLED)
    return LABELLED


def test_the_built_in_export_targets_are_registered_in_order_and_found_by_name_or_enum():
    assert export_target_names() == ["python", "native"]
    assert isinstance(export_target("python"), PythonTarget)
    assert isinstance(export_target(ExportTarget.NATIVE), NativeExportTarget)
    assert export_target("python").checks_input_contract and not export_target("native").checks_input_contract


def test_a_second_export_target_under_a_taken_name_is_refused_naming_the_registered_one(labelled):
    class Other(PythonTarget):
        pass  # named "python", like the built-in one

    with pytest.raises(DuplicateRegistrationError, match=r"export target name 'python' is already registered by .*PythonTarget"):
        register_export_target(Other())
    assert register_export_target(LABELLED) is LABELLED  # the same object again is no change
    assert export_target_names().count(LABELLED.name) == 1


def test_an_unknown_export_target_is_refused_listing_the_registered_names(labelled):
    with pytest.raises(InvalidArgumentError, match=r"target: expected one of \['python', 'native', .*'test_labelled_python'.*\] .*got 'tensorrt'"):
        export_target("tensorrt")


def test_a_registered_export_target_is_what_export_uses(labelled, tmp_path):
    module = tuned_two_spec_net(NAME, tmp_path)

    result = export(module, tmp_path / "repo", target=LABELLED.name, show_progress=False)

    assert result.targets == {f"{NAME}.graph_0": LABELLED.name, f"{NAME}.graph_1": LABELLED.name}
    manifest = json.loads((tmp_path / "repo" / f"{NAME}.graph_0" / "1" / "manifest.json").read_text())
    assert (manifest["kind"], manifest["target"]) == ("graph", LABELLED.name)
    assert result.entry_model == NAME  # it checks its contract, but the module has two graph specs: a router


@dataclasses.dataclass(frozen=True)
class ListingOptions:
    file_name: str = "models.txt"


@register_deployment_target
class ListingTarget(DeploymentTarget):
    """A trivial deployment target: the list of the repository's models."""

    name = "test_listing"
    options_type = ListingOptions

    def write(self, repository: Path, facts, output_dir: Path) -> list[Path]:
        path = output_dir / self.options.file_name
        path.write_text("".join(f"{name}\n" for name in facts.models))
        return [path]


def test_a_deployment_target_is_registered_listed_found_by_name_and_generates_with_its_typed_options(tmp_path):
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n')

    assert "test_listing" in deployment_target_names()
    target = deployment_target("test_listing")(ListingOptions(file_name="list.txt"))
    assert target.generate(tmp_path / "repo", tmp_path / "out") == [tmp_path / "out" / "list.txt"]
    assert (tmp_path / "out" / "list.txt").read_text() == "m\n"
    assert deployment_target("test_listing")().options == ListingOptions()
    with pytest.raises(ArgumentTypeError, match=r"options: expected ListingOptions for deployment target 'test_listing', got dict"):
        ListingTarget({"file_name": "x"})


def test_a_deployment_target_under_a_taken_name_or_an_unknown_name_is_refused():
    class Again(ListingTarget):
        pass

    with pytest.raises(DuplicateRegistrationError, match=r"deployment target name 'test_listing' is already registered by .*ListingTarget"):
        register_deployment_target(Again)
    with pytest.raises(InvalidArgumentError, match=r"deployment target: expected one of \[.*'test_listing'.*\] .*got 'nomad'"):
        deployment_target("nomad")
    with pytest.raises(InvalidArgumentError, match="expected a DeploymentTarget subclass"):
        register_deployment_target(object)  # type: ignore[arg-type]
