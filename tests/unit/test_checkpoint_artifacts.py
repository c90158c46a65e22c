"""What a checkpoint's artifacts must be, and where a load may run: artifact kinds checked at save,
load and export (without loading them), manifest files no backend uses reported, data-less devices
(``meta``) and meta tensors refused with errors naming them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import aitune_triton
from aitune_triton import Module, OneBackendStrategy
from aitune_triton._versions import sha256_file
from aitune_triton.backends import AOTInductorBackend, EagerBackend, InductorBackend, OnnxRuntimeBackend
from aitune_triton.checkpoint import MANIFEST_NAME
from aitune_triton.cli import main
from aitune_triton.errors import ArtifactKindError, CheckpointError, InvalidArgumentError

REPO = Path(__file__).resolve().parents[2]


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def _tune(backend: str, name: str, cache_dir: Path) -> Module:
    module = Module(Small().eval(), name=name, strategy=OneBackendStrategy(backend), cache_dir=cache_dir)
    with torch.no_grad():
        for batch in (1, 4):
            module(torch.randn(batch, 4))
    module.tune()
    return module


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny module per backend with an artifact of its own (aoti, onnxruntime), saved once."""
    root = tmp_path_factory.mktemp("artifact_kinds")
    saved = {}
    for backend in ("aoti", "onnxruntime"):
        module = _tune(backend, f"artifact_kinds_{backend}", root / "cache")
        saved[backend] = aitune_triton.save(module, root / backend)
        del module
    return saved


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / checkpoint.name
    shutil.copytree(checkpoint, copy)
    return copy


def _pickle_in_place_of(checkpoint: Path, relative: str) -> None:
    """Replace an artifact with a ``torch.save`` pickle and update the manifest's hashes, as the
    hostile-input trial did (issue 16)."""
    target = checkpoint / relative
    torch.save({"weights": torch.randn(3)}, target)
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    manifest["files"][relative] = {"sha256": sha256_file(target), "size_bytes": target.stat().st_size}
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------------- artifact kinds
@pytest.mark.parametrize("backend, relative", [("aoti", "graph_0/model.pt2"), ("onnxruntime", "graph_0/model.onnx")])
def test_load_and_export_refuse_a_torch_save_pickle_in_place_of_the_artifact(checkpoints, tmp_path, backend, relative):
    checkpoint = _copy(checkpoints[backend], tmp_path)
    _pickle_in_place_of(checkpoint, relative)

    with pytest.raises(ArtifactKindError) as caught:
        aitune_triton.load(Small().eval(), checkpoint)
    message = str(caught.value)
    assert str(checkpoint / relative) in message and f"backend {backend!r}" in message
    assert "expected" in message and "found a torch.save pickle" in message
    assert isinstance(caught.value, CheckpointError)

    repository = tmp_path / "repository"
    with pytest.raises(ArtifactKindError, match="found a torch.save pickle"):
        aitune_triton.export(checkpoint, repository)
    assert not repository.exists()
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "cli_repository")])
    assert result.exit_code != 0 and "found a torch.save pickle" in result.output
    assert not (tmp_path / "cli_repository").exists()


def test_a_replaced_warmup_file_is_refused_too(checkpoints, tmp_path):
    checkpoint = _copy(checkpoints["onnxruntime"], tmp_path)
    target = checkpoint / "graph_0" / "warmup_min.pt"
    target.write_bytes(b"not a torch.save file")
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    manifest["files"]["graph_0/warmup_min.pt"] = {"sha256": sha256_file(target), "size_bytes": target.stat().st_size}
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactKindError, match=r"warmup_min.*expected recorded call tensors written by torch.save"):
        aitune_triton.load(Small().eval(), checkpoint)


def test_save_refuses_an_artifact_replaced_after_tuning_and_writes_nothing(tmp_path):
    module = _tune("onnxruntime", "artifact_kinds_save", tmp_path / "cache")
    artifact = Path(module.tuned_graphs[0].backend.artifacts["model"])
    torch.save({"weights": torch.randn(3)}, artifact)
    with pytest.raises(ArtifactKindError, match=r"model\.onnx.*'onnxruntime'.*expected an ONNX model"):
        aitune_triton.save(module, tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_each_backend_accepts_what_it_builds_and_refuses_a_pickle(checkpoints, tmp_path):
    pickle = tmp_path / "pickle.pt"
    torch.save({"weights": torch.randn(3)}, pickle)
    aoti, onnx = checkpoints["aoti"] / "graph_0" / "model.pt2", checkpoints["onnxruntime"] / "graph_0" / "model.onnx"
    program = tmp_path / "program.pt2"
    torch.export.save(torch.export.export(Small().eval(), (torch.randn(2, 4),)), program)
    assert AOTInductorBackend.artifact_problem("model", aoti) is None
    assert OnnxRuntimeBackend.artifact_problem("model", onnx) is None
    assert InductorBackend.artifact_problem("model", program) is None
    assert EagerBackend.artifact_problem("warmup_min", checkpoints["aoti"] / "graph_0" / "warmup_min.pt") is None
    for backend, other in ((AOTInductorBackend, program), (InductorBackend, aoti), (OnnxRuntimeBackend, aoti)):
        assert backend.artifact_problem("model", pickle) is not None
        assert backend.artifact_problem("model", other) is not None  # another backend's artifact
    assert EagerBackend.artifact_problem("warmup_max", onnx) is not None


# ------------------------------------------------------------------------------ manifest file list
def test_load_reports_a_manifest_listing_a_file_no_backend_uses_and_loads(checkpoints, tmp_path):
    checkpoint = _copy(checkpoints["onnxruntime"], tmp_path)
    extra = checkpoint / "graph_0" / "extra.bin"
    extra.write_bytes(b"payload")
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    manifest["files"]["graph_0/extra.bin"] = {"sha256": sha256_file(extra), "size_bytes": extra.stat().st_size}
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"lists files that no stored backend uses: \['graph_0/extra.bin'\].*ignored"):
        module = aitune_triton.load(Small().eval(), checkpoint)
    x = torch.randn(3, 4)
    with torch.no_grad():
        torch.testing.assert_close(module(x), Small().eval()(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- meta device
def test_load_and_tune_refuse_the_meta_device_naming_the_argument(checkpoints, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"^device: expected a device that holds data.*got 'meta'"):
        aitune_triton.load(Small().eval(), checkpoints["onnxruntime"], device="meta")
    with pytest.raises(InvalidArgumentError, match=r"^device_map\[''\]: expected a device that holds data.*got 'meta'"):
        aitune_triton.load(Small().eval(), checkpoints["onnxruntime"], device_map={"": torch.device("meta")})
    module = Module(Small().eval(), name="artifact_kinds_meta_tune", cache_dir=tmp_path)
    module(torch.randn(2, 4))
    with pytest.raises(InvalidArgumentError, match=r"^device: .*got 'meta'"):
        module.tune(device="meta")


def test_meta_device_and_meta_inputs_are_refused_before_an_aoti_package_runs(checkpoints, tmp_path):
    """In a subprocess: an AOTInductor package loaded for meta, or called with meta tensors, may kill
    the process (SIGSEGV in the trial of issue 16)."""
    script = textwrap.dedent(
        f"""
        import sys, torch, aitune_triton
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint_artifacts import Small
        from aitune_triton.errors import InvalidArgumentError
        try:
            aitune_triton.load(Small().eval(), {str(checkpoints["aoti"])!r}, device="meta")
        except InvalidArgumentError as error:
            print("load:", error)
        module = aitune_triton.load(Small().eval(), {str(checkpoints["aoti"])!r})
        try:
            module(torch.randn(2, 4, device="meta"))
        except InvalidArgumentError as error:
            print("call:", error)
        torch.testing.assert_close(module(torch.ones(2, 4)), Small().eval()(torch.ones(2, 4)))
        print("done")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "AITUNE_TRITON_CACHE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("load: device: expected a device that holds data") and "'meta'" in line for line in lines)
    assert any(line.startswith("call: Module 'artifact_kinds_aoti': x: expected tensors that hold data") for line in lines)
    assert lines[-1] == "done"
