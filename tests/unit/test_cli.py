"""The ``aitune-triton`` command line, driven with click's CliRunner on a real checkpoint."""

from __future__ import annotations

import re

import pytest
import torch
from nets import tuned_two_input_net
from click.testing import CliRunner

import aitune_triton
from aitune_triton.cli import main
from aitune_triton.triton.config import read_model_config

MODULE_NAME = "test_cli_two_input_net"



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Checkpoint of a TwoInputNet tuned with ONNX Runtime for (x, y) and (x,) at batch sizes 1, 3, 5."""
    module, path = tuned_two_input_net(MODULE_NAME, tmp_path_factory.mktemp("cli"))
    del module
    return path


@pytest.fixture
def runner():
    # A wide virtual terminal, so that rich does not wrap table cells.
    return CliRunner(env={"COLUMNS": "240"})


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", text))


def test_the_group_help_lists_every_command_and_option(runner):
    result = runner.invoke(main, ["--help"])

    assert result.exit_code == 0
    for word in ("export", "serve", "inspect", "describe", "check", "analyze-config", "--version", "--help", "-h"):
        assert word in result.output
    assert runner.invoke(main, ["-h"]).output == result.output


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            "export",
            {"-o", "--output", "--name", "--instance-count", "--instance-kind", "--max-queue-delay-microseconds", "--entry-instance-count", "--target", "--router", "--no-router", "--quiet", "--dry-run", "--help",
             "--version", "--gpus", "--instance-group", "--intra-op-threads", "--preferred-batch-size", "--preserve-ordering",
             "--priority-levels", "--default-priority-level", "--queue-timeout-action", "--queue-timeout-microseconds",
             "--allow-timeout-override", "--max-queue-size", "--version-policy", "--parameter", "--response-cache", "--warmup", "--no-warmup",
             "--preprocess", "--postprocess", "--ensemble-name", "--options"},
        ),
        (
            "serve",
            {"--http-port", "--grpc-port", "--metrics-port", "--host", "--tritonserver", "--log-file", "--quiet-log", "--timeout-s", "--help",
             "--container", "--image", "--runtime-env"},
        ),
        ("inspect", {"--help"}),
        ("describe", {"--json", "--help"}),
        ("check", {"--load", "--timeout-s", "--environment", "--image", "--strict", "--help"}),
        ("analyze-config", {"-o", "--output", "--protocol", "--help"}),
        ("runtime-env", {"-o", "--output", "--server-version", "--help"}),
    ],
)
def test_each_command_help_mentions_every_option_it_takes(runner, command, expected):
    result = runner.invoke(main, [command, "--help"])

    assert result.exit_code == 0, result.output
    assert expected <= _options(result.output)
    # And every option the command really has is in that list.
    declared = {opt for param in main.commands[command].params for opt in getattr(param, "opts", []) if opt.startswith("-")}
    assert declared | {"--help"} <= expected
    argument = {"export": "CHECKPOINT", "serve": "REPOSITORY", "inspect": "CHECKPOINT", "describe": "CHECKPOINT",
                "check": "REPOSITORY", "analyze-config": "REPOSITORY", "runtime-env": "REPOSITORY"}[command]
    assert argument in result.output


def test_version_option_prints_the_package_version(runner):
    result = runner.invoke(main, ["--version"])

    assert result.exit_code == 0
    assert aitune_triton.__version__ in result.output


def test_export_of_a_real_checkpoint_writes_the_repository_and_prints_the_table(runner, checkpoint, tmp_path):
    repository = tmp_path / "repo"

    result = runner.invoke(main, ["export", str(checkpoint), "-o", str(repository)])

    assert result.exit_code == 0, result.output
    assert f"Exported to {repository.absolute()}" in result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") == 3}
    assert rows == {f"{MODULE_NAME}.graph_0": "1", f"{MODULE_NAME}.graph_1": "1", f"{MODULE_NAME}  (entry)": "1"}
    assert "Exporting" in result.output  # progress lines without --quiet
    for model in (MODULE_NAME, f"{MODULE_NAME}.graph_0", f"{MODULE_NAME}.graph_1"):
        assert read_model_config(repository / model / "config.pbtxt").name == model
        assert (repository / model / "1" / "model.py").is_file()


def test_export_options_reach_the_written_configs_and_a_second_export_is_version_2(runner, checkpoint, tmp_path):
    repository = tmp_path / "repo"
    arguments = ["export", str(checkpoint), "--output", str(repository), "--name", "served_cli",
                 "--instance-count", "2", "--instance-kind", "cpu", "--max-queue-delay-microseconds", "900", "--quiet"]

    first = runner.invoke(main, arguments)
    second = runner.invoke(main, arguments)

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "Exporting" not in first.output
    assert re.search(r"served_cli  \(entry\)\s*│\s*2\s*│", second.output)
    config = read_model_config(repository / "served_cli.graph_0" / "config.pbtxt")
    assert [(group.count, group.kind) for group in config.instance_group] == [(2, config.instance_group[0].KIND_CPU)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 900
    # warmup/: the recorded calls model_warmup runs at load (on by default)
    assert sorted(p.name for p in (repository / "served_cli.graph_0").iterdir()) == ["1", "2", "config.pbtxt", "warmup"]


def test_export_of_a_missing_path_exits_1_with_an_error_line_and_writes_nothing(runner, tmp_path):
    missing = tmp_path / "no_checkpoint_here"

    result = runner.invoke(main, ["export", str(missing), "-o", str(tmp_path / "repo")])

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: checkpoint: {missing.absolute()} is not a directory.")
    assert "Traceback" not in result.output
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--name", "a/b"], "Error: name: expected a Triton model name"),
        (["--instance-count", "0"], "Error: instance_count: expected an integer >= 1, got 0"),
        (["--no-router"], "Error: router: False needs a module with one graph spec; 'test_cli_two_input_net' has 2, which the entry model routes between. Drop --no-router."),
        (["--instance-group", "graph_0"], "Error: --instance-group: expected GRAPH=KIND:COUNT[:GPUS]"),
        (["--instance-group", "graph_0=tpu:1"], "Error: instance_kind: expected one of 'auto', 'cpu', 'gpu', got 'tpu'"),
        (["--instance-group", "graph_9=cpu:1"], "Error: instance_groups: expected graph names or graph model names"),
        (["--intra-op-threads", "many"], "Error: --intra-op-threads: expected an integer >= 1, 'auto' or 'measured', got 'many'"),
        (["--intra-op-threads", "0"], "Error: intra_op_threads: expected an integer >= 1, got 0"),
        (["--priority-levels", "2", "--default-priority-level", "5"], "Error: default_priority_level: expected a level in 1..2"),
        (["--max-queue-size", "-1"], "Error: default_queue_policy.max_queue_size: expected an integer >= 0, got -1"),
        (["--version-policy", "newest"], "Error: version_policy: expected 'latest:N' (N >= 1), 'all' or 'specific:V1,V2' (versions >= 1), got 'newest'"),
        (["--parameter", "novalue"], "Error: --parameter: expected KEY=VALUE, got 'novalue'"),
        (["--gpus", "a,b"], "Error: --gpus: expected comma-separated integers, got 'a,b'"),
        (["--version", "0"], "Error: version: expected an integer >= 1, got 0"),
    ],
)
def test_export_with_a_bad_option_value_exits_1_naming_it(runner, checkpoint, tmp_path, extra, message):
    result = runner.invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "repo"), *extra])

    assert result.exit_code == 1
    assert message in result.output
    assert not (tmp_path / "repo").exists()


def test_export_without_an_output_is_a_usage_error(runner, checkpoint):
    result = runner.invoke(main, ["export", str(checkpoint)])

    assert result.exit_code == 2
    assert "Missing option '-o' / '--output'" in result.output


def test_inspect_prints_each_graph_spec_with_inputs_backend_and_max_batch(runner, checkpoint):
    result = runner.invoke(main, ["inspect", str(checkpoint)])

    assert result.exit_code == 0, result.output
    assert "nets.TwoInputNet" in result.output and MODULE_NAME in result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in result.output.splitlines() if line.count("│") == 7]
    assert rows == [
        ["graph_0", "x float32 [1, 8]..[5, 8], y float32 [1, 4]..[5, 4]", "-", "scale=1.0", "onnxruntime", "5"],
        ["graph_1", "x float32 [1, 8]..[5, 8]", "-", "y=null, scale=1.0", "onnxruntime", "5"],
    ]
    assert f"torch {torch.__version__}" in result.output


def test_check_of_a_checkpoint_exits_1_saying_it_is_a_checkpoint_and_to_export_it(runner, checkpoint):
    result = runner.invoke(main, ["check", str(checkpoint)])

    assert result.exit_code == 1
    assert result.output.startswith(f"Error: path: {checkpoint.absolute()} is an aitune_triton checkpoint")
    assert f"aitune-triton export {checkpoint.absolute()} -o model_repository/" in " ".join(result.output.split())


def test_export_into_a_directory_that_is_not_a_model_repository_exits_1_naming_its_entries(runner, checkpoint, tmp_path):
    target = tmp_path / "home"
    (target / "photos").mkdir(parents=True)
    (target / "src").mkdir()
    (target / "notes.txt").write_text("mine\n")
    (target / "README.md").write_text("# allowed\n")

    result = runner.invoke(main, ["export", str(checkpoint), "-o", str(target)])

    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"Error: repository: {target} is not a model repository: it holds notes.txt, photos/, src/," in message
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "notes.txt", "photos", "src"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no staging directory either


def test_inspect_of_a_missing_checkpoint_exits_1_with_an_error_line(runner, tmp_path):
    result = runner.invoke(main, ["inspect", str(tmp_path / "nothing")])

    assert result.exit_code == 1
    assert result.output.startswith("Error: checkpoint:")


def test_serve_of_a_missing_repository_exits_1_without_starting_a_server(runner, tmp_path):
    result = runner.invoke(main, ["serve", str(tmp_path / "no_repo")])

    assert result.exit_code == 1
    assert f"Error: repository: {(tmp_path / 'no_repo').absolute()} is not a directory" in result.output


@pytest.mark.parametrize("host", ["example.com", "::1", "127.0.0.300", ""])
def test_serve_with_a_host_that_is_not_an_ipv4_address_exits_1_naming_the_option(runner, tmp_path, host):
    result = runner.invoke(main, ["serve", str(tmp_path), "--host", host])

    assert result.exit_code == 1
    assert "Error: host: expected an IPv4 address to listen on, such as 127.0.0.1" in result.output
    assert repr(host) in result.output


def test_inspect_prints_its_report_on_stdout(runner, checkpoint):
    result = runner.invoke(main, ["inspect", str(checkpoint)])

    assert result.exit_code == 0
    assert "graph_0" in result.stdout


@pytest.mark.parametrize("host", [0, None, "0.0.0.0/8"])
def test_a_triton_server_with_a_host_that_is_not_an_ipv4_address_string_raises_naming_host(tmp_path, host):
    from aitune_triton.errors import InvalidArgumentError
    from aitune_triton.triton.server import TritonServer

    with pytest.raises(InvalidArgumentError, match=r"host: expected an IPv4 address to listen on.*got"):
        TritonServer(tmp_path, host=host)


def test_serve_on_a_non_loopback_host_warns_before_starting_and_reports_a_server_that_exits(runner, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.pbtxt").write_text('name: "model"\n')

    result = runner.invoke(main, ["serve", str(tmp_path), "--host", "0.0.0.0", "--tritonserver", "/bin/false",
                                  "--log-file", str(tmp_path / "server.log"), "--timeout-s", "20"])

    assert result.exit_code == 1
    assert "Warning: host: tritonserver will listen on 0.0.0.0 (every interface)" in result.stderr
    assert "Error: tritonserver exited with code 1 before it was ready" in result.stderr


def test_export_writes_warmup_by_default_and_no_warmup_skips_it(runner, checkpoint, tmp_path):
    default = runner.invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "default"), "--name", "warm", "--quiet"])
    skipped = runner.invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "skipped"), "--name", "warm", "--quiet", "--no-warmup"])

    assert default.exit_code == 0 and skipped.exit_code == 0, default.output + skipped.output
    assert [w.batch_size for w in read_model_config(tmp_path / "default" / "warm.graph_0" / "config.pbtxt").model_warmup] == [1, 5]
    assert not read_model_config(tmp_path / "skipped" / "warm.graph_0" / "config.pbtxt").model_warmup
    assert not (tmp_path / "skipped" / "warm.graph_0" / "warmup").exists()


def test_every_deployment_flag_reaches_the_written_configs(runner, checkpoint, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    repository = tmp_path / "repo"
    result = runner.invoke(main, [
        "export", str(checkpoint), "-o", str(repository), "--name", "flags", "--quiet", "--version", "7",
        "--instance-kind", "cpu", "--instance-count", "2", "--instance-group", "graph_1=cpu:3",
        "--intra-op-threads", "2", "--preferred-batch-size", "2", "--preferred-batch-size", "4",
        "--max-queue-delay-microseconds", "300", "--priority-levels", "2",
        "--default-priority-level", "1", "--queue-timeout-action", "DELAY", "--queue-timeout-microseconds", "9000",
        "--allow-timeout-override", "--max-queue-size", "16", "--version-policy", "latest:2", "--parameter", "team=search",
        "--response-cache", "--warmup",
    ])

    assert result.exit_code == 0, result.output
    graph_0 = read_model_config(repository / "flags.graph_0" / "config.pbtxt")
    graph_1 = read_model_config(repository / "flags.graph_1" / "config.pbtxt")
    assert [(g.kind, g.count) for g in graph_0.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert [(g.kind, g.count) for g in graph_1.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
    batching = graph_0.dynamic_batching
    assert list(batching.preferred_batch_size) == [2, 4] and batching.max_queue_delay_microseconds == 300
    assert not batching.preserve_ordering and (batching.priority_levels, batching.default_priority_level) == (2, 1)
    policy = batching.default_queue_policy
    assert (policy.timeout_action, policy.default_timeout_microseconds, policy.allow_timeout_override, policy.max_queue_size) == (
        mc.ModelQueuePolicy.DELAY, 9000, True, 16)
    assert graph_0.parameters["aitune_triton.intra_op_threads"].string_value == "2"
    assert graph_0.parameters["team"].string_value == "search"
    assert graph_0.response_cache.enable
    assert [w.batch_size for w in graph_0.model_warmup] == [1, 5]  # the smallest and largest recorded call
    assert (repository / "flags.graph_0" / "warmup" / graph_0.model_warmup[0].inputs["x"].input_data_file).is_file()
    entry = read_model_config(repository / "flags" / "config.pbtxt")
    for config in (graph_0, graph_1, entry):
        assert config.version_policy.latest.num_versions == 2
    assert sorted(p.name for p in (repository / "flags").iterdir() if p.is_dir()) == ["7"]
    ordered = runner.invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "ordered"), "--quiet", "--preserve-ordering"])
    assert ordered.exit_code == 0, ordered.output
    assert read_model_config(tmp_path / "ordered" / f"{MODULE_NAME}.graph_0" / "config.pbtxt").dynamic_batching.preserve_ordering
    again = runner.invoke(main, ["export", str(checkpoint), "-o", str(repository), "--name", "flags", "--version", "7"])
    assert again.exit_code == 1 and "Error: version: expected a version that" in again.output
    assert "versions are never overwritten" in again.output


def test_export_takes_its_options_from_a_file_and_explicit_flags_win(runner, checkpoint, tmp_path):
    pytest.importorskip("yaml")
    options = tmp_path / "deploy.yaml"
    options.write_text(
        "name: from_file\ninstance-kind: cpu\ninstance-count: 2\nmax_queue_delay_microseconds: 700\n"
        "preferred-batch-size: [2, 4]\nparameter:\n  team: search\ninstance-group:\n  graph_1: cpu:3\nwarmup: false\n"
    )
    repository = tmp_path / "repo"

    result = runner.invoke(main, ["export", str(checkpoint), "-o", str(repository), "--options", str(options), "--quiet",
                                  "--instance-count", "1", "--max-queue-delay-microseconds", "100"])

    assert result.exit_code == 0, result.output
    graph_0 = read_model_config(repository / "from_file.graph_0" / "config.pbtxt")
    graph_1 = read_model_config(repository / "from_file.graph_1" / "config.pbtxt")
    assert [g.count for g in graph_0.instance_group] == [1]
    assert graph_0.dynamic_batching.max_queue_delay_microseconds == 100  # the flag, although it is the default value
    assert [g.count for g in graph_1.instance_group] == [3]
    assert list(graph_0.dynamic_batching.preferred_batch_size) == [2, 4]
    assert graph_0.parameters["team"].string_value == "search" and not graph_0.model_warmup


def test_export_with_an_unknown_key_in_the_options_file_exits_1_naming_it_and_writes_nothing(runner, checkpoint, tmp_path):
    options = tmp_path / "deploy.json"
    options.write_text('{"instance-count": 2, "instances": 3}')

    result = runner.invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "repo"), "--options", str(options)])

    assert result.exit_code == 1
    assert f"Error: {options}: unknown option 'instances'; known: name, version, instance-count," in result.output
    assert not (tmp_path / "repo").exists()
