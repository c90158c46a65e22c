"""The one declaration of the export options: what it fills, the click options generated from it, options files."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from aitune_triton.cli import main
from aitune_triton.errors import InvalidOptionError
from aitune_triton.triton import exporter
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.export_options import EXPORT_OPTIONS, export_arguments, read_options_file
from aitune_triton.triton.options import DynamicBatching, InstanceGroup, QueuePolicy, VersionPolicy

OWNERS = {"TritonModelOptions": TritonModelOptions, "DynamicBatching": DynamicBatching, "QueuePolicy": QueuePolicy}


def _filled(owner: str) -> set[str]:
    return {option.fills.partition(".")[2] for option in EXPORT_OPTIONS if option.fills.partition(".")[0] == owner}


def test_every_declared_option_fills_a_field_of_an_option_type_or_an_export_argument():
    for option in EXPORT_OPTIONS:
        owner, _, name = option.fills.partition(".")
        if owner == "export":
            assert name in inspect.signature(exporter.export).parameters, option
        else:
            assert name in {f.name for f in dataclasses.fields(OWNERS[owner]) if f.init}, option


def test_every_field_of_the_option_types_has_its_declared_option():
    # max_queue_delay_microseconds and preferred_batch_size of TritonModelOptions are shorthands of its DynamicBatching.
    built = {"dynamic_batching", "max_queue_delay_microseconds", "preferred_batch_size"}
    assert _filled("TritonModelOptions") == {f.name for f in dataclasses.fields(TritonModelOptions) if f.init} - built
    assert _filled("DynamicBatching") == {f.name for f in dataclasses.fields(DynamicBatching)} - {"default_queue_policy"}
    assert _filled("QueuePolicy") == {f.name for f in dataclasses.fields(QueuePolicy)}


def test_the_export_command_has_exactly_the_declared_options_with_their_help_and_defaults():
    params = {param.name: param for param in main.commands["export"].params}

    assert set(params) == {option.key for option in EXPORT_OPTIONS} | {"checkpoint", "repository", "options_file", "quiet", "dry_run"}
    for option in EXPORT_OPTIONS:
        param = params[option.key]
        assert param.opts == [f"--{option.name}"] and param.help == option.help, option.name
        assert param.secondary_opts == ([f"--no-{option.name}"] if option.negatable else [])
        assert param.default == (None if option.multiple else option.default)


def test_the_declared_defaults_build_the_option_types_defaults():
    options, arguments = export_arguments({})

    assert options == TritonModelOptions()
    assert arguments == {"target": "python"}


def test_the_cli_forms_build_the_typed_options():
    options, arguments = export_arguments({
        "gpus": "0,1", "instance_kind": "gpu", "instance_group": ("graph_1=cpu:2",), "intra_op_threads": "auto",
        "preferred_batch_size": (2, 4), "queue_timeout_action": "DELAY", "version_policy": "all",
        "parameter": ("team=search",), "router": False, "name": "net",
    })

    assert options.gpus == (0, 1) and options.instance_groups == {"graph_1": InstanceGroup("cpu", 2)}
    assert options.intra_op_threads is None and options.version_policy == VersionPolicy(all=True)
    assert options.dynamic_batching == DynamicBatching((2, 4), default_queue_policy=QueuePolicy("DELAY"))
    assert options.parameters == {"team": "search"}
    assert arguments == {"name": "net", "router": False, "target": "python"}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_an_options_file_gives_the_same_options_as_the_flags(tmp_path, suffix):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    values = {
        "instance-count": 2, "gpus": [0, 1], "instance_kind": "gpu", "instance-group": {"graph_1": "cpu:2"},
        "intra-op-threads": 2, "preferred-batch-size": [2, 4], "parameter": {"team": "search", "shards": 3},
        "allow-timeout-override": True, "warmup": False, "version-policy": "latest:2", "router": None,
    }
    path = tmp_path / f"options{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        import yaml

        path.write_text(yaml.safe_dump(values))

    from_file = export_arguments(*read_options_file(path))
    from_flags = export_arguments({
        "instance_count": 2, "gpus": "0,1", "instance_kind": "gpu", "instance_group": ("graph_1=cpu:2",),
        "intra_op_threads": "2", "preferred_batch_size": (2, 4), "parameter": ("team=search", "shards=3"),
        "allow_timeout_override": True, "warmup": False, "version_policy": "latest:2",
    })

    assert from_file == from_flags
    assert from_file[0].dynamic_batching.default_queue_policy == QueuePolicy(allow_timeout_override=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"instance-count": 2, "instance-cuont": 3}', r"options.json: unknown option 'instance-cuont'; known: name, version, instance-count, .* router\.$"),
        ('{"output": "repo"}', r"unknown option 'output'; known: .* It is given on the command line\."),
        ('{"instance-count": "2"}', r"options.json: instance-count: expected an integer, got '2'"),
        ('{"preferred-batch-size": [2, "x"]}', r"options.json: preferred-batch-size: expected an integer \(or a list of them\), got 'x'"),
        ('{"instance-kind": "tpu"}', r"options.json: instance-kind: expected one of 'auto', 'cpu', 'gpu', got 'tpu'"),
        ('{"warmup": "no"}', r"options.json: warmup: expected true or false, got 'no'"),
        ('{"gpus": "a"}', r"options.json: gpus: expected comma-separated integers, got 'a'"),
        ('{"instance-group": {"graph_1": "cpu"}}', r"options.json: instance-group: expected GRAPH=KIND:COUNT\[:GPUS\]"),
        ('{"parameter": {"team": true}}', r"options.json: parameter: expected KEY=VALUE with a text or number value"),
        ('{"instance-count": 1, "instance_count": 2}', r"option 'instance-count' is given twice \(as 'instance-count' and 'instance_count'\)"),
        ('[1, 2]', r"expected .*options.json to hold a mapping of option name -> value .* got list"),
        ('{"instance-count": ', r"options.json is not valid JSON"),
    ],
)
def test_a_bad_options_file_is_refused_naming_the_file_and_the_option(tmp_path, text, message):
    path = tmp_path / "options.json"
    path.write_text(text)

    with pytest.raises(InvalidOptionError, match=message):
        export_arguments(*read_options_file(path))


def test_a_missing_options_file_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(InvalidOptionError, match=r"^--options: expected a YAML or JSON file of export options, got .*nothing.yaml'"):
        read_options_file(tmp_path / "nothing.yaml")
