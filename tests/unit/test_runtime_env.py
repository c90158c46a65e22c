"""runtime-env and check's environment comparison, on a real export: the pins are the versions that built
it, a conflict between models names both, the output directory is complete or absent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement
from repo_helpers import tuned_two_spec_net

from aitune_triton.cli import main
from aitune_triton.deployment.images import NGC_RELEASES, embedded_server_version, ngc_image
from aitune_triton.deployment.runtime_env import (
    RuntimeEnvironment,
    RuntimeRequirement,
    RuntimeEnvironmentError,
    environment_mismatches,
    runtime_environment,
    write_runtime_environment,
)
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.triton.exporter import export

NAME = "test_runtime_env_net"
GRAPHS = (f"{NAME}.graph_0", f"{NAME}.graph_1")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime_env")
    export(tuned_two_spec_net(NAME, root), root / "pristine", show_progress=False)
    return root / "pristine"


@pytest.fixture
def repository(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "repo")


def _edit_manifest(repository, model, **versions):
    path = repository / model / "1" / "manifest.json"
    data = json.loads(path.read_text())
    data["versions"].update(versions)
    path.write_text(json.dumps(data))


def test_the_pins_are_the_installed_versions_that_built_the_export(repository):
    environment = runtime_environment(repository)

    pins = environment.pins()
    assert pins["numpy"] == metadata.version("numpy")
    assert pins["onnxruntime"] == metadata.version("onnxruntime")  # the graph models run ONNX Runtime sessions
    required_by = {r.package: r.models for r in environment.requirements}
    assert set(GRAPHS) <= set(required_by["onnxruntime"])
    assert environment.server_version == embedded_server_version(metadata.version("nvidia-pytriton"))


def test_write_gives_requirements_pip_parses_a_dockerfile_on_the_matching_image_and_a_dockerignore(repository, tmp_path):
    files = write_runtime_environment(repository, tmp_path / "env", server_version="2.53.0")

    assert [p.name for p in files] == [".dockerignore", "Dockerfile", "requirements.txt", "runtime.json"]
    lines = [line for line in (tmp_path / "env" / "requirements.txt").read_text().splitlines()
             if line and not line.startswith(("#", "--"))]
    parsed = {Requirement(line.split("  #")[0]).name: Requirement(line.split("  #")[0]) for line in lines}
    assert str(parsed["numpy"].specifier) == f"=={metadata.version('numpy')}"
    dockerfile = (tmp_path / "env" / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.12-py3\n" in dockerfile
    assert "pip install --no-cache-dir -r /opt/aitune_triton/requirements.txt" in dockerfile
    assert (tmp_path / "env" / ".dockerignore").read_text().splitlines()[-2:] == ["*", "!requirements.txt"]
    assert json.loads((tmp_path / "env" / "runtime.json").read_text())["image"] == ngc_image("2.53.0")


def test_the_export_and_the_runtime_env_are_readable_by_another_uid(exported, tmp_path):
    """Triton's images, its chart and KServe run the server as uid 1000, not as the exporting user."""
    write_runtime_environment(exported, tmp_path / "env")

    for root in (exported, tmp_path / "env"):
        for path in [root, *root.rglob("*")]:
            wanted = 0o005 if path.is_dir() else 0o004
            assert path.stat().st_mode & wanted == wanted, path


def test_a_local_torch_build_brings_its_pytorch_index_and_a_plain_pin_none(tmp_path):
    environment = RuntimeEnvironment(tmp_path, [RuntimeRequirement("numpy", "1.26.4", ("m",)),
                                                RuntimeRequirement("torch", "2.13.0+cpu", ("m", "m.graph_0"))])

    lines = environment.requirements_txt().splitlines()

    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "torch==2.13.0+cpu  # m, m.graph_0" in lines
    assert RuntimeRequirement("torch", "2.13.0", ("m",)).index_url is None
    assert RuntimeRequirement("numpy", "1.26.4+local", ("m",)).index_url is None


def test_two_models_built_with_different_versions_are_refused_naming_both(repository):
    _edit_manifest(repository, GRAPHS[1], onnxruntime="0.0.1")

    with pytest.raises(RuntimeEnvironmentError) as raised:
        runtime_environment(repository)

    message = str(raised.value)
    assert GRAPHS[0] in message and GRAPHS[1] in message and "0.0.1" in message
    assert metadata.version("onnxruntime") in message


def test_a_model_served_by_a_native_backend_needs_no_python_package(repository):
    config = repository / GRAPHS[1] / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "python"', 'platform: "onnxruntime_onnx"'))
    _edit_manifest(repository, GRAPHS[1], onnxruntime="0.0.1")  # would conflict if it counted

    environment = runtime_environment(repository)

    assert all(GRAPHS[1] not in r.models for r in environment.requirements)


def test_an_existing_output_dir_or_unknown_server_is_refused_and_nothing_is_written(repository, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(InvalidArgumentError, match="output_dir"):
        write_runtime_environment(repository, tmp_path / "taken")
    assert list((tmp_path / "taken").iterdir()) == []

    for model in GRAPHS + (NAME,):
        _edit_manifest(repository, model, **{"nvidia-pytriton": "9.9.9"})
    with pytest.raises(RuntimeEnvironmentError, match="server_version"):
        write_runtime_environment(repository, tmp_path / "env")
    assert not (tmp_path / "env").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".aitune_triton-staging")]


def test_ngc_image_maps_server_versions_and_refuses_unknown_ones():
    assert ngc_image("2.51.0") == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert ngc_image("2.51") == ngc_image("2.51.0")
    assert len(set(NGC_RELEASES.values())) == len(NGC_RELEASES)
    with pytest.raises(InvalidArgumentError, match="server_version.*'1.0'"):
        ngc_image("1.0")


def test_environment_mismatches_name_the_package_both_versions_and_the_models(repository, tmp_path):
    assert environment_mismatches(repository) == []  # this environment built it

    _edit_manifest(repository, GRAPHS[0], onnxruntime="0.0.1")
    _edit_manifest(repository, GRAPHS[1], onnxruntime="0.0.1")
    [line] = environment_mismatches(repository)
    assert line.startswith(f"onnxruntime: {metadata.version('onnxruntime')} here") and "0.0.1" in line

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = environment_mismatches(repository, tmp_path / "bare" / "bin" / "python")
    assert {line.split(":")[0] for line in bare} >= {"numpy", "onnxruntime"}
    assert all("not installed in" in line for line in bare)


def test_cli_runtime_env_and_check_strict(repository, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["runtime-env", str(repository), "-o", str(tmp_path / "env")])
    assert result.exit_code == 0, result.output
    assert f"numpy=={metadata.version('numpy')}" in result.output
    again = runner.invoke(main, ["runtime-env", str(repository), "-o", str(tmp_path / "env")])
    assert again.exit_code == 1 and "output_dir" in again.output

    _edit_manifest(repository, GRAPHS[0], numpy="0.0.1")
    _edit_manifest(repository, GRAPHS[1], numpy="0.0.1")
    _edit_manifest(repository, NAME, numpy="0.0.1")
    lenient = runner.invoke(main, ["check", str(repository)])
    assert lenient.exit_code == 0 and "Warning: numpy:" in lenient.output
    strict = runner.invoke(main, ["check", str(repository), "--strict"])
    assert strict.exit_code == 1 and "--strict" in strict.output
    missing = runner.invoke(main, ["check", str(repository), "--environment", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "environment:" in missing.output


def test_versions_read_elsewhere_are_compared_the_same_way(repository):
    """What check --image does with the versions an image's python3 reports."""
    pins = runtime_environment(repository).pins()
    image = {**pins, "numpy": "0.0.1"}

    [line] = environment_mismatches(repository, installed=image, where="in image my/triton:1")

    assert line.startswith("numpy: 0.0.1 in image my/triton:1") and pins["numpy"] in line
    assert environment_mismatches(repository, installed=dict(pins)) == []


def test_check_image_needs_an_engine_and_excludes_environment(repository, tmp_path):
    from aitune_triton.triton.container import docker_client
    from aitune_triton.errors import TritonServerError

    runner = CliRunner()
    both = runner.invoke(main, ["check", str(repository), "--image", "x", "--environment", sys.executable])
    assert both.exit_code == 2 and "--environment, --image" in both.output
    try:
        docker_client().close()
    except TritonServerError:
        result = runner.invoke(main, ["check", str(repository), "--image", "nvcr.io/nvidia/tritonserver:24.10-py3"])
        assert result.exit_code == 1 and "Docker engine" in result.output
    else:
        pytest.skip("a Docker engine answers here: pulling an NGC image is not a unit test")


def test_a_steps_own_imports_are_pinned_at_the_versions_installed_here_even_inside_functions(tmp_path):
    import importlib.metadata

    from aitune_triton.deployment.step_requirements import step_requirements

    version_dir = tmp_path / "net.preprocess" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "step_module.py").write_text(
        "import os\nimport numpy as np\nfrom aitune_triton.triton.steps import step\n\n"
        "def tokenizer():\n    import yaml\n    import not_a_package_anywhere_xyz\n    return yaml\n"
    )

    with pytest.warns(UserWarning, match="not_a_package_anywhere_xyz.*not installed here"):
        requirements = step_requirements([tmp_path / "net.preprocess"], pinned={"numpy"})

    assert requirements == [("PyYAML", importlib.metadata.version("PyYAML"), ("net.preprocess",))]  # requires nothing


def test_what_a_steps_import_requires_is_pinned_too(tmp_path):
    import importlib.metadata

    from aitune_triton.deployment.step_requirements import step_requirements

    version_dir = tmp_path / "net.preprocess" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "step_module.py").write_text("import jinja2\n")  # Jinja2 requires MarkupSafe

    requirements = step_requirements([tmp_path / "net.preprocess"], pinned=set())

    assert ("MarkupSafe", importlib.metadata.version("MarkupSafe"), ("net.preprocess (through Jinja2)",)) in requirements
    assert ("Jinja2", importlib.metadata.version("Jinja2"), ("net.preprocess",)) in requirements


def test_a_steps_package_installed_here_is_not_reported_as_missing(tmp_path):
    """A regression: check read only torch, onnxruntime and numpy, so every package a step needs
    (installed or not) was reported as "not installed"."""
    import importlib.metadata


    installed = importlib.metadata.version("PyYAML")
    environment = RuntimeEnvironment(tmp_path, [RuntimeRequirement("PyYAML", installed, ("net.preprocess",), True),
                                                RuntimeRequirement("PyYAML-not-here-xyz", "1.0", ("net.preprocess",), True)])

    lines = environment_mismatches(tmp_path, environment=environment)

    assert len(lines) == 1 and lines[0].startswith("PyYAML-not-here-xyz: not installed here")
