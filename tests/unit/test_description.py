"""The tuned description as one typed, versioned object (aitune_triton.module.description)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from nets import tuned_two_input_net

import aitune_triton
from aitune_triton import Module
from aitune_triton.checkpoint import MANIFEST_NAME, read_checkpoint
from aitune_triton.errors import CheckpointError, InvalidStateDictError
from aitune_triton.module.description import (
    STATE_DICT_FORMAT_VERSION,
    BackendDescription,
    GraphDescription,
    TunedDescription,
    TunedGraphDescription,
)
from aitune_triton.spec import DimRange, ForwardSignature


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A TwoInputNet tuned with ONNX Runtime (two graph specs) and its checkpoint."""
    module, checkpoint = tuned_two_input_net("test_description_net", tmp_path_factory.mktemp("description"))
    yield module, checkpoint


@pytest.fixture
def stored(tuned) -> dict:
    return copy.deepcopy(tuned[0].to_dict())


def test_a_real_description_round_trips_exactly(stored):
    description = TunedDescription.from_dict(stored)

    assert description.to_dict() == stored
    assert json.loads(json.dumps(description.to_dict())) == stored


def test_the_typed_fields_hold_what_to_dict_wrote(tuned, stored):
    module = tuned[0]
    description = TunedDescription.from_dict(stored)

    assert (description.name, description.strict, description.format_version) == (module.name, True, STATE_DICT_FORMAT_VERSION)
    assert description.module_class is not None and description.module_class.endswith("nets.TwoInputNet")
    assert description.forward_signature == ForwardSignature.from_dict(stored["signature"])
    assert [g.name for g in description.graphs] == [g.spec.name for g in module.tuned_graphs]
    for entry, graph in zip(description.graphs, module.tuned_graphs):
        assert isinstance(entry, TunedGraphDescription)
        assert entry.graph.key == graph.spec.key
        assert [t.path for t in entry.graph.inputs] == [t.path for t in graph.spec.inputs]
        assert entry.graph.dims == graph.spec.dims
        assert entry.graph.batch_size_range == graph.spec.batch_size_range
        assert entry.graph.output_paths == graph.spec.output_paths
        assert entry.backend.name == "onnxruntime" and entry.backend.device == "cpu"
        assert entry.backend.artifact() == graph.backend.artifacts["model"] and entry.backend.artifact().is_file()
        assert entry.backend.input_axes == graph.backend.input_axes
        tune_report = entry.tune_report()
        assert tune_report is not None and tune_report.chosen == "onnxruntime"
        assert entry.decision == graph.report.decision


def test_the_graph_view_rebuilds_the_graph_spec(tuned, stored):
    entry = TunedDescription.from_dict(stored).graphs[0]

    assert entry.graph.to_spec() == tuned[0].tuned_graphs[0].spec


def test_the_graph_view_is_the_graph_spec_and_parses_its_output_structure_only_when_asked(stored):
    from aitune_triton.errors import UnknownOutputTypeError
    from aitune_triton.spec import GraphSpec

    unknown = json.dumps([1, {"type": "no_such_package.outputs.Thing", "context": "null", "children_spec": []}])
    stored["graphs"][0]["graph"]["output_treespec"] = unknown

    entry = TunedDescription.from_dict(stored).graphs[0]  # reading imports no container type

    assert isinstance(entry.graph, GraphSpec) and entry.graph.output_treespec_json == unknown
    assert entry.graph.dims == {name: DimRange(*bounds) for name, bounds in stored["graphs"][0]["graph"]["dims"].items()}
    with pytest.raises(UnknownOutputTypeError, match=r"no_such_package.outputs.Thing"):
        entry.graph.to_spec()


def test_the_description_does_not_share_state_with_the_dict_it_was_read_from(stored):
    description = TunedDescription.from_dict(stored)
    stored["graphs"][0]["graph"]["name"] = "changed"
    stored["graphs"][0]["backend"]["artifacts"]["model"] = "/elsewhere"
    written = description.to_dict()
    written["graphs"][0]["graph"]["dims"]["batch"] = [0, 0]

    assert description.graphs[0].name == "graph_0"
    assert description.graphs[0].backend.artifacts["model"] != "/elsewhere"
    assert description.graphs[0].graph.dims["batch"].bounds != (0, 0)


def test_a_description_stored_without_format_version_and_with_unknown_keys_loads_and_round_trips(stored):
    older = {k: v for k, v in stored.items() if k != "format_version"}
    older["written_by_a_later_release"] = {"x": 1}
    older["graphs"][0]["backend"]["new_backend_field"] = [1, 2]
    older["graphs"][0]["note"] = "kept"

    description = TunedDescription.from_dict(older)

    assert description.format_version is None
    assert description.to_dict() == older
    assert description.graphs[0].backend.extra == {"new_backend_field": [1, 2]}


def test_a_version_1_description_with_min_max_dims_loads_with_opt_derived_and_round_trips(tuned, stored):
    older = copy.deepcopy({**stored, "format_version": 1})
    for entry in older["graphs"]:
        entry["graph"]["dims"] = {name: [low, high] for name, (low, _, high) in entry["graph"]["dims"].items()}
        entry["graph"]["preferred_batch_size"] = None
    older["graphs"][0]["graph"]["preferred_batch_size"] = 2

    description = TunedDescription.from_dict(older)

    assert description.to_dict() == older  # read as stored, written back as stored
    first, second = (entry.graph for entry in description.graphs)
    low, _, high = stored["graphs"][0]["graph"]["dims"]["batch"]
    assert first.dims["batch"] == DimRange(low, 2 if low <= 2 <= high else high, high)  # opt: the stored preferred size
    assert all(dim.opt == dim.max for dim in second.dims.values())  # no preferred size stored: opt = max
    from nets import TwoInputNet

    module = Module.from_dict(TwoInputNet().eval(), older)
    assert [graph.spec.dims for graph in module.tuned_graphs] == [first.dims, second.dims]


def test_a_newer_format_version_is_refused_with_a_message_saying_to_upgrade(stored):
    with pytest.raises(InvalidStateDictError, match=r"^Invalid dictionary format") as raised:
        TunedDescription.from_dict({**stored, "format_version": STATE_DICT_FORMAT_VERSION + 1})

    message = str(raised.value)
    assert f"'format_version' is {STATE_DICT_FORMAT_VERSION + 1}, newer than this aitune_triton reads" in message
    assert "Upgrade aitune_triton" in message


def test_module_from_dict_refuses_a_newer_format_version_before_loading_anything(stored):
    torch.manual_seed(0)
    from nets import TwoInputNet

    with pytest.raises(ValueError, match=rf"'format_version' is {STATE_DICT_FORMAT_VERSION + 1}, newer"):
        Module.from_dict(TwoInputNet().eval(), {**stored, "format_version": STATE_DICT_FORMAT_VERSION + 1})


def _set(path: tuple, value):
    def change(data: dict) -> dict:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data

    return change


def _drop(path: tuple):
    def change(data: dict) -> dict:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return data

    return change


@pytest.mark.parametrize(
    ("break_it", "problem"),
    [
        (_set(("type",), "other"), "('type' is 'other')"),
        (_set(("format_version",), "1"), "('format_version' must be a positive integer, got str '1')"),
        (_set(("format_version",), 0), "('format_version' must be a positive integer, got int 0)"),
        (_set(("name",), 3), "('name' is not a string)"),
        (_set(("module_class",), 3), "('module_class' is not a string, got int 3)"),
        (_set(("strict",), "yes"), "('strict' must be true or false, got str 'yes')"),
        (_set(("signature",), [{"name": "x"}]), "('signature' is not a list of parameters)"),
        (_set(("graphs",), []), "('graphs' is not a non-empty list)"),
        (_set(("graphs", 0), 1), "(graphs[0].graph is not a graph spec description)"),
        (_drop(("graphs", 1, "graph", "key")), "(graphs[1].graph is not a graph spec description)"),
        (
            _set(("graphs", 0, "graph", "num_calls"), "2"),
            "(graphs[0].graph: GraphSpec 'graph_0': 'num_calls' must be an integer, got str '2')",
        ),
        (
            _set(("graphs", 0, "graph", "dims"), {"batch": [1]}),
            "(graphs[0].graph: GraphSpec 'graph_0': 'dims'['batch'] must be [min, opt, max] (or [min, max] as older descriptions store it): "
            "non-negative integers with min <= opt <= max, got [1])",
        ),
        (
            _drop(("graphs", 0, "graph", "inputs", 0, "dtype")),
            "(graphs[0].graph: TensorSpec: missing key(s) ['dtype']",
        ),
        (_drop(("graphs", 0, "backend", "name")), "(graphs[0].backend has no name)"),
        (_set(("graphs", 0, "backend", "options"), [1]), "(graphs[0].backend.options is not a dict of option name -> value"),
        (_set(("graphs", 0, "backend", "artifacts"), "model.onnx"), "(graphs[0].backend.artifacts is not a dict)"),
        (
            _set(("graphs", 0, "backend", "artifacts"), {"model": 1}),
            "(graphs[0].backend.artifacts is not a dict of role -> path strings, got dict {'model': 1})",
        ),
        (_set(("graphs", 0, "backend", "device"), 0), "(graphs[0].backend.device is not a device string"),
        (_set(("graphs", 1, "backend", "input_axes"), [[1.5]]), "(graphs[1].backend.input_axes is not a list (per input)"),
        (_set(("graphs", 0, "backend", "index_ranges"), [3]), "(graphs[0].backend.index_ranges is not a list (per input)"),
        (_set(("graphs", 0, "report"), "fast"), "(graphs[0].report is not a tuning report dict or null, got str 'fast')"),
    ],
)
def test_each_malformed_field_is_refused_with_a_message_naming_it(stored, break_it, problem):
    broken = break_it(copy.deepcopy(stored))

    with pytest.raises(InvalidStateDictError, match=r"^Invalid dictionary format") as raised:
        TunedDescription.from_dict(broken)

    assert problem in str(raised.value)
    assert not Module.is_state_dict_valid(broken)


@pytest.mark.parametrize("bad", [None, [], "aitune_triton.Module"])
def test_a_value_that_is_not_a_dict_is_refused_naming_its_type(bad):
    with pytest.raises(InvalidStateDictError, match=rf"\(expected a dict, got {type(bad).__name__}\)"):
        TunedDescription.from_dict(bad)


def test_one_graph_entry_is_checked_on_its_own_too(stored):
    entry = TunedGraphDescription.from_dict(stored["graphs"][1], "graphs[1]")

    assert entry.to_dict() == stored["graphs"][1]
    with pytest.raises(InvalidStateDictError, match=r"\(graphs\[1\]\.backend has no name\)"):
        TunedGraphDescription.from_dict({**stored["graphs"][1], "backend": {}}, "graphs[1]")


def test_an_eager_backend_has_no_artifact_and_asking_for_one_says_so():
    eager = BackendDescription(name="eager", device="cpu")

    assert eager.to_dict() == {"name": "eager", "options": {}, "device": "cpu", "artifacts": {}}
    assert eager.precision is None
    with pytest.raises(InvalidStateDictError, match=r"backend 'eager': no 'model' artifact is stored \(it has none\)"):
        eager.artifact()


def test_the_precision_is_read_from_the_options():
    assert BackendDescription(name="aoti", options={"precision": "fp16"}).precision == "fp16"


def test_with_artifacts_replaces_only_the_named_paths(stored):
    description = TunedDescription.from_dict(stored)

    moved = description.with_artifacts({(1, "model"): "graph_1/model.onnx"})

    assert moved.graphs[1].backend.artifacts == {**description.graphs[1].backend.artifacts, "model": "graph_1/model.onnx"}
    assert moved.graphs[0].backend.artifacts == description.graphs[0].backend.artifacts
    assert description.graphs[1].backend.artifacts["model"] != "graph_1/model.onnx"  # frozen original unchanged


def test_a_checkpoint_written_in_the_current_format_reads_into_typed_descriptions(tuned):
    manifest = read_checkpoint(tuned[1])

    description = TunedDescription.from_dict(manifest["module"])

    assert all(Path(g.backend.artifact()).is_file() for g in description.graphs)
    assert all(Path(g.backend.artifact()).is_relative_to(tuned[1]) for g in description.graphs)


def test_a_checkpoint_whose_description_has_a_newer_format_version_is_refused(tuned, tmp_path):
    copied = tmp_path / "checkpoint"
    import shutil

    shutil.copytree(tuned[1], copied)
    manifest = json.loads((copied / MANIFEST_NAME).read_text())
    manifest["modules"][0]["module"]["format_version"] = STATE_DICT_FORMAT_VERSION + 1
    (copied / MANIFEST_NAME).write_text(json.dumps(manifest))

    with pytest.raises(CheckpointError, match="holds an invalid module description") as raised:
        aitune_triton.load(tuned[0].module, copied)
    assert "newer than this aitune_triton reads" in str(raised.value)
