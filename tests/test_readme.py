"""README examples run: every ```python block of README.md is executed, in order, in a fresh directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert python_blocks(), "README.md should show the life cycle in a python block"


@pytest.mark.triton
def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "model_repository" / "readme_net" / "config.pbtxt").is_file()
    assert (tmp_path / "checkpoints" / "readme_net" / "manifest.json").is_file()
    # the AITune-style block: a pipeline's two wrapped submodules, saved together and exported
    assert (tmp_path / "checkpoints" / "readme_pipe" / "manifest.json").is_file()
    # the ensemble block: step models and the ensemble around readme_net's checkpoint
    for model in ("readme_text", "readme_text_net.preprocess", "readme_text_net.postprocess"):
        assert (tmp_path / "model_repository" / model / "config.pbtxt").is_file()
    for entry_model in ("readme_encoder", "readme_decoder"):
        assert (tmp_path / "model_repository" / entry_model / "config.pbtxt").is_file()
    # the Deploy beyond one machine block: the kubernetes target's files, and the runtime environment
    # of the Python-backend models beside them
    assert sorted(p.name for p in (tmp_path / "deploy" / "kubernetes").iterdir()) == [
        "autoscaler.yaml", "deployment.yaml", "runtime", "service.yaml"]
    assert (tmp_path / "deploy" / "kubernetes" / "runtime" / "Dockerfile").is_file()
