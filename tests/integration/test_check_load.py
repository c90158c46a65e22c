"""`check --load`: a real tritonserver loads every model of a real export (ONNX Runtime and AOTInductor
graph models, an entry model) and says READY or why not."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from click.testing import CliRunner
from nets import TwoInputNet, record_two_specs
from repo_helpers import fast_onnxruntime
from triton_helpers import require_tritonserver

import aitune_triton
from aitune_triton.cli import main
from aitune_triton.deployment import repository_facts
from aitune_triton.triton.check import ERROR, OK, check_repository
from aitune_triton.triton.exporter import export
from aitune_triton.triton.manifest import read_manifest

pytestmark = pytest.mark.triton

NAME = "test_check_load_net"
MODELS = [NAME, f"{NAME}.graph_0", f"{NAME}.graph_1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """TwoInputNet with graph_0 (x, y) on ONNX Runtime and graph_1 (x,) on AOTInductor, exported."""
    require_tritonserver()
    root = tmp_path_factory.mktemp("check_load")
    torch.manual_seed(0)
    module = aitune_triton.Module(TwoInputNet().eval(), name=NAME, cache_dir=root / "cache",
                                  strategies=[fast_onnxruntime(), aitune_triton.OneBackendStrategy("aoti")])
    record_two_specs(module)
    module.tune()
    export(module, root / "pristine", show_progress=False)
    return root / "pristine"


def test_loading_a_good_export_reports_every_model_ready(exported):
    report = check_repository(exported, load=True, timeout_s=120)

    assert report.ok and report.loaded
    assert [m.backend for m in (read_manifest(exported / model / "1") for model in MODELS)] == [None, "onnxruntime", "aoti"]
    for model in MODELS:
        assert [(f.severity, f.message) for f in report.model(model).findings] == [
            (OK, "files, config.pbtxt and manifest agree"), (OK, "load: READY")
        ]
    # What the load measured is kept in the repository for the deployment targets, and the repository still checks.
    facts = repository_facts(exported)
    assert facts.server_version == "2.51.0" and facts.image == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert 0 < facts.load_time_s < 120
    assert facts.peak_memory_bytes is not None and facts.peak_memory_bytes > 50 << 20  # server + 3 stubs importing numpy
    assert check_repository(exported).ok


def test_loading_a_corrupted_artifact_reports_the_servers_own_reason(exported, tmp_path):
    repository = shutil.copytree(exported, tmp_path / "repo")
    artifact = repository / f"{NAME}.graph_0" / "1" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0xFF
    artifact.write_bytes(bytes(data))

    result = CliRunner(env={"COLUMNS": "400"}).invoke(main, ["check", str(repository), "--load", "--timeout-s", "120"])

    assert result.exit_code == 1, result.output
    report = check_repository(repository)  # the same static findings, as the table showed them
    assert [f.message.split(":")[0] for f in report.model(f"{NAME}.graph_0").findings if f.severity == ERROR] == ["model.onnx"]
    text = re.sub(r"[\s│]+", " ", result.output)  # table cells unwrapped
    # The server's reason: the load failed in the generated model.py's own SHA-256 check.
    assert f"load: the server refused it: load failed for model '{NAME}.graph_0'" in text
    assert "SHA-256 mismatch, expected" in text and "(manifest.json)" in text
    assert text.count("load: READY") == 2  # the entry model and graph_1 still load
    assert f"{NAME}.graph_0 (graph): ERROR" in text and f"{NAME} (entry): OK" in text

