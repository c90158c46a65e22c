"""Checkpoints: save/load round trip, overwrite rules, integrity checks, atomic writes."""

from __future__ import annotations

import copy

import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import aitune_triton
from aitune_triton import Module, ModuleState, OneBackendStrategy
from aitune_triton._atomic import STAGING_PREFIX
from aitune_triton.checkpoint import MANIFEST_NAME, read_checkpoint
from aitune_triton.errors import CheckpointError, ModuleStateError, UnknownBackendError
from aitune_triton.module.routing import live_wrapper_of


class NestedNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = torch.nn.Linear(6, 5)
        self.b = torch.nn.Linear(2, 5)

    def forward(self, x, extra=None):
        hidden = torch.tanh(self.a(x) + (self.b(extra) if extra is not None else 0))
        return {"hidden": hidden, "pooled": [hidden.mean(-1)]}


def _inputs():
    torch.manual_seed(11)
    return [(torch.randn(3, 6),), (torch.randn(5, 6), torch.randn(5, 2))]


def _tune(net, name, cache_dir=None, strategy="onnxruntime") -> Module:
    module = Module(net, name=name, strategy=OneBackendStrategy(strategy), cache_dir=cache_dir)
    with torch.no_grad():
        for batch in (1, 6):
            module(torch.randn(batch, 6))
            module(torch.randn(batch, 6), torch.randn(batch, 2))
    module.tune()
    return module


def _outputs(module, inputs):
    with torch.no_grad():
        return [module(*args) for args in inputs]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One tuned module (two graph specs on ONNX Runtime) saved once; tests copy the checkpoint before changing it."""
    net = NestedNet().eval()
    module = _tune(net, "test_checkpoint_shared", cache_dir=tmp_path_factory.mktemp("cache"))
    path = aitune_triton.save(module, tmp_path_factory.mktemp("saved") / "checkpoint")
    return net, module, path, _outputs(module, _inputs())


@pytest.fixture
def checkpoint_copy(saved, tmp_path) -> Path:
    copy = tmp_path / "checkpoints" / "copy"
    shutil.copytree(saved[2], copy)
    return copy


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ round trip
def test_save_writes_a_manifest_and_one_folder_per_graph_spec(saved):
    _, _, path, _ = saved

    # Each graph spec: its artifact and its recorded warmup inputs (smallest and largest call).
    assert sorted(_tree(path)) == ["graph_0/model.onnx", "graph_0/warmup_max.pt", "graph_0/warmup_min.pt", "graph_1/model.onnx", "graph_1/warmup_max.pt", "graph_1/warmup_min.pt", MANIFEST_NAME]


def test_save_load_round_trip_gives_the_same_outputs_without_retuning(saved, unique_name, tmp_path):
    net, original, path, expected = saved
    fresh = Module(copy.deepcopy(net), name=unique_name, cache_dir=tmp_path / "unused_cache")

    loaded = aitune_triton.load(fresh, path)

    assert loaded is fresh
    assert loaded.state is ModuleState.TUNED
    assert [g.backend.name for g in loaded.tuned_graphs] == ["onnxruntime", "onnxruntime"]
    assert [g.backend.artifacts["model"] for g in loaded.tuned_graphs] == [
        path / "graph_0" / "model.onnx",
        path / "graph_1" / "model.onnx",
    ]
    # the reports are the ones written at tuning time, nothing was rebuilt
    assert [g.report for g in loaded.tuned_graphs] == [g.report for g in original.tuned_graphs]
    assert [g.spec for g in loaded.tuned_graphs] == [g.spec for g in original.tuned_graphs]
    assert not (tmp_path / "unused_cache").exists()
    for got, want in zip(_outputs(loaded, _inputs()), expected):
        assert list(got) == ["hidden", "pooled"] and isinstance(got["pooled"], list)
        torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)
    with torch.no_grad():
        x = torch.randn(4, 6)  # never recorded, inside the range
        torch.testing.assert_close(loaded(x)["hidden"], copy.deepcopy(net)(x)["hidden"], atol=1e-5, rtol=1e-5)


def test_a_checkpoint_whose_description_is_version_1_with_min_max_dims_loads_with_opt_derived(saved, checkpoint_copy, unique_name):
    net, original, _, expected = saved

    def to_version_1(manifest: dict) -> None:
        description = manifest["modules"][0]["module"]
        description["format_version"] = 1
        for entry in description["graphs"]:
            entry["graph"]["dims"] = {name: [low, high] for name, (low, _, high) in entry["graph"]["dims"].items()}

    _edit_manifest(checkpoint_copy, to_version_1)
    loaded = aitune_triton.load(Module(copy.deepcopy(net), name=unique_name), checkpoint_copy)

    for got, want in zip(loaded.tuned_graphs, original.tuned_graphs):
        preferred = want.spec.preferred_batch_size
        assert {name: dim.bounds for name, dim in got.spec.dims.items()} == {name: dim.bounds for name, dim in want.spec.dims.items()}
        assert all(dim.opt == (preferred if name == "batch" and preferred else dim.max) for name, dim in got.spec.dims.items())
    for got_output, want_output in zip(_outputs(loaded, _inputs()), expected):
        torch.testing.assert_close(got_output, want_output, atol=0.0, rtol=0.0)


def test_load_with_a_plain_module_works_after_the_tuning_cache_is_gone(unique_name, tmp_path):
    net = NestedNet().eval()
    module = _tune(net, unique_name, cache_dir=tmp_path / "cache")
    expected = _outputs(module, _inputs())
    path = aitune_triton.save(module, tmp_path / "ckpt")
    del module
    gc.collect()  # frees the name for the loaded module
    shutil.rmtree(tmp_path / "cache")

    loaded = aitune_triton.load(net, path)

    assert isinstance(loaded, Module) and loaded.name == unique_name and loaded.module is net
    for got, want in zip(_outputs(loaded, _inputs()), expected):
        torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)


def test_load_into_an_already_tuned_module_raises(saved):
    _, original, path, _ = saved

    with pytest.raises(ModuleStateError, match="Module is already tuned"):
        aitune_triton.load(original, path)


def test_save_of_an_untuned_module_raises_and_writes_nothing(unique_name, tmp_path):
    module = Module(NestedNet(), name=unique_name)

    with pytest.raises(ModuleStateError, match="is not tuned"):
        aitune_triton.save(module, tmp_path / "ckpt")

    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- manifest
def test_manifest_records_library_versions_and_artifact_hashes(saved):
    _, module, path, _ = saved

    manifest = json.loads((path / MANIFEST_NAME).read_text())

    assert manifest["format"] == "aitune_triton.checkpoint" and manifest["format_version"] == 2
    versions = manifest["versions"]
    assert versions["torch"] == metadata.version("torch") == torch.__version__
    assert versions["onnxruntime"] == metadata.version("onnxruntime")
    assert versions["numpy"] == metadata.version("numpy")
    assert versions["python"].count(".") == 2
    assert sorted(manifest["files"]) == ["graph_0/model.onnx", "graph_0/warmup_max.pt", "graph_0/warmup_min.pt", "graph_1/model.onnx", "graph_1/warmup_max.pt", "graph_1/warmup_min.pt"]
    for relative, entry in manifest["files"].items():
        data = (path / relative).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    (stored,) = manifest["modules"]
    assert stored["path"] == ""  # a Module saved on its own
    description = stored["module"]
    assert description["name"] == "test_checkpoint_shared"
    assert [g["backend"]["artifacts"] for g in description["graphs"]] == [
        {"model": "graph_0/model.onnx", "warmup_min": "graph_0/warmup_min.pt", "warmup_max": "graph_0/warmup_max.pt"},
        {"model": "graph_1/model.onnx", "warmup_min": "graph_1/warmup_min.pt", "warmup_max": "graph_1/warmup_max.pt"},
    ]
    # the artifact is a copy of the one tuning wrote
    original = module.tuned_graphs[0].backend.artifacts["model"]
    assert (path / "graph_0/model.onnx").read_bytes() == original.read_bytes()


def test_read_checkpoint_returns_absolute_artifact_paths(saved):
    _, _, path, _ = saved

    manifest = read_checkpoint(path)

    assert [g["backend"]["artifacts"]["model"] for g in manifest["module"]["graphs"]] == [
        str(path / "graph_0" / "model.onnx"),
        str(path / "graph_1" / "model.onnx"),
    ]


# ------------------------------------------------------------------------------- overwrite
def test_save_to_an_existing_path_without_overwrite_raises_and_keeps_the_old_checkpoint(saved, checkpoint_copy):
    _, module, _, _ = saved
    before = _tree(checkpoint_copy)

    with pytest.raises(CheckpointError, match="already exists. Pass overwrite=True to replace it"):
        aitune_triton.save(module, checkpoint_copy)

    assert _tree(checkpoint_copy) == before
    assert sorted(p.name for p in checkpoint_copy.parent.iterdir()) == ["copy"]


def test_save_with_overwrite_replaces_the_old_checkpoint(saved, checkpoint_copy, unique_name):
    net, _, _, _ = saved
    eager = _tune(copy.deepcopy(net), unique_name, strategy="eager")
    (checkpoint_copy / "stray.txt").write_text("left over")

    result = aitune_triton.save(eager, checkpoint_copy, overwrite=True)

    assert result == checkpoint_copy.absolute()
    assert sorted(_tree(checkpoint_copy)) == [MANIFEST_NAME]  # old artifacts and stray files are gone
    manifest = json.loads((checkpoint_copy / MANIFEST_NAME).read_text())
    assert manifest["modules"][0]["module"]["name"] == unique_name
    assert manifest["files"] == {}
    assert sorted(p.name for p in checkpoint_copy.parent.iterdir()) == ["copy"]  # no staging/old dirs


def test_save_over_a_file_raises_even_with_overwrite(saved, tmp_path):
    _, module, _, _ = saved
    target = tmp_path / "a_file"
    target.write_text("keep me")

    with pytest.raises(CheckpointError, match="already exists"):
        aitune_triton.save(module, target, overwrite=True)

    assert target.read_text() == "keep me"


def test_failed_save_leaves_no_partial_directory(unique_name, tmp_path):
    module = _tune(NestedNet().eval(), unique_name, cache_dir=tmp_path / "cache")
    artifact = module.tuned_graphs[1].backend.artifacts["model"]
    artifact.unlink()
    target = tmp_path / "out" / "ckpt"

    with pytest.raises((CheckpointError, OSError)) as info:
        aitune_triton.save(module, target)

    assert "model.onnx" in str(info.value)
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no .ckpt.partial-* left behind


def test_failed_overwrite_keeps_the_old_checkpoint(saved, checkpoint_copy, unique_name, tmp_path):
    module = _tune(NestedNet().eval(), unique_name, cache_dir=tmp_path / "cache")
    module.tuned_graphs[0].backend.artifacts["model"].unlink()
    before = _tree(checkpoint_copy)

    with pytest.raises((CheckpointError, OSError)):
        aitune_triton.save(module, checkpoint_copy, overwrite=True)

    assert _tree(checkpoint_copy) == before
    assert sorted(p.name for p in checkpoint_copy.parent.iterdir()) == ["copy"]


_KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_checkpoint import NestedNet
import aitune_triton

source, target = Path(sys.argv[1]), Path(sys.argv[2])
module = aitune_triton.load(NestedNet().eval(), source, name="killed_save")


def kill_after(step):
    def run(*args):
        result = step(*args)
        if any(Path(arg) == target for arg in args):  # the step that touched the checkpoint path
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return run


os.rename = kill_after(os.rename)  # Path.rename goes through os.rename
try:
    from aitune_triton import _atomic
    _atomic.exchange = kill_after(_atomic.exchange)
except ImportError:
    pass
aitune_triton.save(module, target, overwrite=True)
"""


def test_a_save_killed_right_after_it_touched_the_checkpoint_path_leaves_a_loadable_checkpoint_there(
    saved, checkpoint_copy, unique_name, tmp_path
):
    net, _, path, expected = saved
    script = tmp_path / "killed_save.py"
    script.write_text(_KILLED_SAVE)

    killed = subprocess.run(
        [sys.executable, str(script), str(path), str(checkpoint_copy), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=300,
    )

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The old checkpoint or the new one (the exchange happened): complete either way.
    assert read_checkpoint(checkpoint_copy)["module"]["name"] in ("test_checkpoint_shared", "killed_save")
    loaded = aitune_triton.load(copy.deepcopy(net), checkpoint_copy, name=unique_name)
    for got, want in zip(_outputs(loaded, _inputs()), expected):
        torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)
    # What the killed save left (the old checkpoint under a staging name) goes with the next save.
    aitune_triton.save(loaded, checkpoint_copy, overwrite=True)
    assert sorted(p.name for p in checkpoint_copy.parent.iterdir()) == ["copy"]


def test_save_removes_the_staging_directory_a_dead_process_left_and_keeps_a_live_ones(saved, tmp_path):
    _, module, _, _ = saved
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f"{STAGING_PREFIX}{finished.pid}-x1"
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-x2"  # another save running in this process
    for staging in (dead, live):
        (staging / "graph_0").mkdir(parents=True)
        (staging / "graph_0" / "model.onnx").write_bytes(b"half written")

    aitune_triton.save(module, tmp_path / "ckpt")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", live.name])
    read_checkpoint(tmp_path / "ckpt")


# -------------------------------------------------------------------------- load failures
def test_load_of_a_missing_path_raises(tmp_path, two_input_net):
    missing = tmp_path / "nowhere"

    with pytest.raises(CheckpointError, match=f"checkpoint: {missing} is not a directory"):
        aitune_triton.load(two_input_net, missing)


def test_load_of_a_directory_without_manifest_raises(tmp_path, two_input_net):
    (tmp_path / "empty").mkdir()

    with pytest.raises(CheckpointError, match="has no manifest.json; it was not written by aitune_triton.save()"):
        aitune_triton.load(two_input_net, tmp_path / "empty")


def test_load_of_a_tampered_artifact_raises(saved, checkpoint_copy):
    net = saved[0]
    artifact = checkpoint_copy / "graph_1" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="artifact graph_1/model.onnx does not match its SHA-256 in the manifest"):
        aitune_triton.load(net, checkpoint_copy)


def test_load_of_a_truncated_artifact_raises(saved, checkpoint_copy):
    net = saved[0]
    artifact = checkpoint_copy / "graph_0" / "model.onnx"
    size = artifact.stat().st_size
    artifact.write_bytes(artifact.read_bytes()[: size - 10])

    with pytest.raises(CheckpointError, match=f"artifact graph_0/model.onnx is {size - 10} bytes, the manifest says {size}"):
        aitune_triton.load(net, checkpoint_copy)


def test_load_of_a_missing_artifact_raises(saved, checkpoint_copy):
    (checkpoint_copy / "graph_0" / "model.onnx").unlink()

    with pytest.raises(CheckpointError, match="artifact graph_0/model.onnx is missing"):
        aitune_triton.load(saved[0], checkpoint_copy)


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    edit(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_load_of_an_unreadable_or_foreign_manifest_raises(saved, checkpoint_copy):
    net = saved[0]
    manifest = checkpoint_copy / MANIFEST_NAME
    original = manifest.read_text()

    manifest.write_text(original[:-20])
    with pytest.raises(CheckpointError, match="cannot read"):
        aitune_triton.load(net, checkpoint_copy)

    manifest.write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(CheckpointError, match="is not an aitune_triton checkpoint manifest"):
        aitune_triton.load(net, checkpoint_copy)

    manifest.write_text(original)
    _edit_manifest(checkpoint_copy, lambda m: m.update(format_version=99))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        aitune_triton.load(net, checkpoint_copy)


def test_load_rejects_a_file_entry_outside_the_checkpoint(saved, checkpoint_copy):
    (checkpoint_copy.parent / "outside.onnx").write_bytes(b"x")
    _edit_manifest(
        checkpoint_copy,
        lambda m: m["files"].update({"../outside.onnx": {"sha256": hashlib.sha256(b"x").hexdigest(), "size_bytes": 1}}),
    )

    with pytest.raises(CheckpointError, match="points outside the checkpoint"):
        aitune_triton.load(saved[0], checkpoint_copy)


def test_load_rejects_an_artifact_not_listed_in_the_manifest_files(saved, checkpoint_copy):
    _edit_manifest(checkpoint_copy, lambda m: m["files"].pop("graph_1/model.onnx"))

    with pytest.raises(CheckpointError, match="artifact 'graph_1/model.onnx' is not listed in the manifest's files"):
        aitune_triton.load(saved[0], checkpoint_copy)


def test_load_rejects_an_invalid_module_description(saved, checkpoint_copy):
    _edit_manifest(checkpoint_copy, lambda m: m["modules"][0]["module"].update(type="other"))

    with pytest.raises(CheckpointError, match="holds an invalid module description"):
        aitune_triton.load(saved[0], checkpoint_copy)


# ---------------------------------------------------------------------- failed loads, kept
def _wrappers_of(module: torch.nn.Module) -> list[Module]:
    """Every Module object still alive that wraps ``module``, retired or not (a kept traceback holds some)."""
    gc.collect()
    return [obj for obj in gc.get_objects() if isinstance(obj, Module) and obj.__wrapped__ is module]


def _saved_and_broken(unique_name: str, tmp_path: Path) -> tuple[NestedNet, Path, Path]:
    """A NestedNet tuned and saved under ``unique_name`` (its wrapper gone, so the name is free), and
    a copy of the checkpoint whose second graph spec names a backend this installation lacks."""
    net = NestedNet().eval()
    module = _tune(net, unique_name, cache_dir=tmp_path / "cache")
    path = aitune_triton.save(module, tmp_path / "ckpt")
    del module
    gc.collect()
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    _edit_manifest(broken, lambda m: m["modules"][0]["module"]["graphs"][1]["backend"].update(name="not_registered_here"))
    return net, path, broken


def test_a_failed_load_whose_exception_is_kept_leaves_the_module_unwrapped_unrecorded_and_loadable(unique_name, tmp_path):
    net, path, broken = _saved_and_broken(unique_name, tmp_path)
    eager = copy.deepcopy(net)
    x = torch.randn(4, 6)

    with pytest.raises(UnknownBackendError, match="not_registered_here") as excinfo:
        aitune_triton.load(net, broken)

    assert excinfo.value.__traceback__ is not None  # kept, with every frame of the failed load
    assert type(net) is NestedNet and live_wrapper_of(net) is None
    with torch.no_grad():
        torch.testing.assert_close(net(x), eager(x), atol=0.0, rtol=0.0)
    assert [w._recorded_calls() for w in _wrappers_of(net)] in ([], [0])  # the wrapper the load made recorded nothing
    loaded = aitune_triton.load(net, path)
    assert loaded.name == unique_name and loaded.state is ModuleState.TUNED  # the failed load freed the name
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["hidden"], eager(x)["hidden"], atol=1e-5, rtol=1e-5)


def test_a_failed_load_into_a_module_a_live_wrapper_of_that_name_holds_gives_it_back_to_that_wrapper(unique_name, tmp_path):
    net, _, broken = _saved_and_broken(unique_name, tmp_path)
    older = Module(net, name=unique_name)

    with pytest.warns(UserWarning, match="the older one is retired"), pytest.raises(UnknownBackendError) as excinfo:
        aitune_triton.load(net, broken)

    assert excinfo.value.__traceback__ is not None
    assert live_wrapper_of(net) is older
    with torch.no_grad():
        older(torch.randn(2, 6))  # callable again: it was not left retired
        net(torch.randn(3, 6))  # the bare module still routes to it
    assert older.state is ModuleState.RECORDING and older.graph_specs[0].num_calls == 2
