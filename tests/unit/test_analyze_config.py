"""analyze_config / `aitune-triton analyze-config`: Model Analyzer YAML and perf_analyzer command lines from a real export."""

from __future__ import annotations

import shlex

import json

import pytest
import torch
from click.testing import CliRunner
from repo_helpers import fast_onnxruntime, tuned_two_spec_net

import aitune_triton
from aitune_triton.cli import main
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.triton.analyze import analyze_config
from aitune_triton.triton.exporter import export

NAME = "test_analyze_net"
TOKENS = "test_analyze_tokens"


class TokenNet(torch.nn.Module):
    """Token ids (int64) of a dynamic length into an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(20, 4)

    def forward(self, ids: torch.Tensor):
        return self.embedding(ids).sum(1)


def _parse(text: str):
    """The YAML parsed with PyYAML when installed, else as the JSON analyze_config writes then."""
    try:
        import yaml
    except ImportError:
        return json.loads(text)
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """NAME (graph_0: x [1..5, 8], y [1..5, 4]; graph_1: x) and TOKENS (ids [1..3, 2..7]) in one repository."""
    root = tmp_path_factory.mktemp("analyze")
    export(tuned_two_spec_net(NAME, root), root / "repo", show_progress=False)
    tokens = aitune_triton.Module(TokenNet().eval(), name=TOKENS, strategy=fast_onnxruntime(), cache_dir=root / "cache")
    with torch.no_grad():
        for batch, length in ((1, 2), (3, 7), (2, 5)):
            tokens(torch.randint(0, 20, (batch, length)))
    tokens.tune()
    export(tokens, root / "repo", show_progress=False)
    return root / "repo"


def test_the_yaml_parses_and_holds_the_largest_shapes_and_the_composing_models(repository, tmp_path):
    configs = analyze_config(repository, tmp_path / "ma")

    assert [c.entry_model for c in configs] == [NAME, TOKENS]
    config = configs[0]
    assert config.path == tmp_path / "ma" / f"{NAME}.model_analyzer.yaml"
    loaded = _parse(config.path.read_text())
    assert loaded == {
        "model_repository": str(repository),
        "profile_models": {NAME: {"perf_analyzer_flags": {"shape": ["x:5,8", "y:5,4"]}, "cpu_only": True}},
        "bls_composing_models": f"{NAME}.graph_0,{NAME}.graph_1",
    }
    assert config.graph_model == f"{NAME}.graph_0"  # the graph spec with the most inputs


def test_integer_inputs_get_zero_input_data_and_their_dynamic_axes_the_largest_size(repository):
    config = {c.entry_model: c for c in analyze_config(repository)}[TOKENS]

    flags = _parse(config.yaml())["profile_models"][TOKENS]["perf_analyzer_flags"]
    # One graph spec, no router: TOKENS batches itself, and perf_analyzer's --shape leaves the batch axis out.
    assert flags == {"shape": ["ids:7"], "input-data": "zero"}


def test_a_single_graph_model_without_a_router_has_no_composing_models(repository):
    config = {c.entry_model: c for c in analyze_config(repository)}[TOKENS]

    assert config.graph_model == TOKENS and config.composing_models == []
    assert "bls_composing_models" not in config.config
    assert not any(arg.startswith("--bls-composing-models") for arg in config.perf_analyzer_args)
    assert config.perf_analyzer_args[:3] == ["perf_analyzer", "-m", TOKENS]


def test_the_perf_analyzer_command_names_the_model_shapes_and_pinned_composing_versions(repository):
    config = analyze_config(repository)[0]

    assert shlex.split(config.perf_analyzer_command) == [
        "perf_analyzer", "-m", NAME, "-u", "<host:http_port>", "--shape", "x:5,8", "--shape", "y:5,4",
        f"--bls-composing-models={NAME}.graph_0:1,{NAME}.graph_1:1",
    ]


def test_the_command_lines_take_the_url_of_the_protocol_asked_for_as_a_placeholder(repository):
    """`serve` picks free ports, so perf_analyzer's default localhost:8000 is rarely the server: -u is left to fill in."""
    (config,) = [c for c in analyze_config(repository, protocol="grpc") if c.entry_model == TOKENS]

    assert config.perf_analyzer_args[:7] == ["perf_analyzer", "-m", TOKENS, "-i", "grpc", "-u", "<host:grpc_port>"]
    with pytest.raises(InvalidArgumentError, match=r"^protocol: expected one of \['grpc', 'http'\], got 'https'"):
        analyze_config(repository, protocol="https")


def test_the_command_ends_with_one_line_saying_where_perf_analyzer_comes_from(repository):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["analyze-config", str(repository), "--protocol", "grpc"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all("-i grpc -u '<host:grpc_port>'" in line for line in lines if line.startswith("perf_analyzer "))
    assert lines[-1].startswith("# perf_analyzer is not installed with aitune-triton")
    assert "Triton SDK container" in lines[-1] and "pip install tritonclient==2.51.0" in lines[-1]


def test_the_command_prints_one_perf_analyzer_line_per_entry_model_and_writes_the_files(repository, tmp_path):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["analyze-config", str(repository), "-o", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("perf_analyzer ")]
    assert [shlex.split(line)[2] for line in lines] == [NAME, TOKENS]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{NAME}.model_analyzer.yaml", f"{TOKENS}.model_analyzer.yaml"]


def test_without_output_the_command_prints_the_yaml(repository):
    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["analyze-config", str(repository)])

    assert result.exit_code == 0, result.output
    assert "bls_composing_models" in result.output and f"{NAME}.graph_0,{NAME}.graph_1" in result.output
    assert "model_repository" in result.output


def test_a_repository_without_entry_models_is_refused_naming_the_argument(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')

    with pytest.raises(InvalidArgumentError, match=r"^repository: .* holds no entry model"):
        analyze_config(tmp_path)
    result = CliRunner().invoke(main, ["analyze-config", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "Error: repository: " in result.output and "is not a directory" in result.output
