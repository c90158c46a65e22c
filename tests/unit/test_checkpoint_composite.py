"""Checkpoints of a model or pipeline holding wrapped submodules: one manifest, each submodule under
its attribute path, loaded back tuned into a freshly built object; version-1 checkpoints still load."""

from __future__ import annotations

import copy
import gc
import json
import shutil
from pathlib import Path

import onnxruntime
import pytest
import torch
from click.testing import CliRunner

import aitune_triton
from aitune_triton import Module, ModuleState, OneBackendStrategy, OnnxRuntimeBackend
from aitune_triton.checkpoint import MANIFEST_NAME, read_checkpoint, wrapped_submodules
from aitune_triton.cli import main
from aitune_triton.errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    CheckpointError,
    ExportError,
    InvalidArgumentError,
    InvalidStateDictError,
    ModuleStateError,
    UnknownBackendError,
)
from aitune_triton.module.routing import live_wrapper_of
from aitune_triton.triton.config import read_model_config

# Which forwards ran, by class name. Kept outside the modules: exporting replaces list attributes.
RUNS: list[str] = []


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)

    def forward(self, x):
        RUNS.append("Encoder")
        return torch.tanh(self.lin(x))


class Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 2)

    def forward(self, hidden):
        RUNS.append("Head")
        return self.lin(hidden)


class MaskedHead(Head):
    """A Head whose forward takes another argument: a checkpoint of Head must not load into it."""

    def forward(self, hidden, mask=None):
        return self.lin(hidden)


class Net(torch.nn.Module):
    def __init__(self, head: type[Head] = Head) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.encoder = Encoder()
        self.head = head()

    def forward(self, x):
        return self.head(self.encoder(x)) * 2.0


class Unet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 6)
        self.head = Head()

    def forward(self, hidden):
        return self.head(torch.relu(self.proj(hidden)))


class TinyPipeline:
    """Not a torch module: holds its models as attributes, as diffusers and transformers pipelines do."""

    def __init__(self) -> None:
        torch.manual_seed(9)
        self.text_encoder = Encoder().eval()
        self.unet = Unet().eval()
        self.guidance = 2.0

    def __call__(self, x):
        return self.unet(self.text_encoder(x)) * self.guidance


def _ort() -> OneBackendStrategy:
    return OneBackendStrategy(OnnxRuntimeBackend())


def _wrap_net(net: Net, prefix: str) -> Net:
    net.encoder = Module(net.encoder, name=f"{prefix}_encoder", strategy=_ort())
    net.head = Module(net.head, name=f"{prefix}_head", strategy=_ort())
    return net


def _wrap_pipeline(pipe: TinyPipeline, prefix: str) -> TinyPipeline:
    pipe.text_encoder = Module(pipe.text_encoder, name=f"{prefix}_text_encoder", strategy=_ort())
    pipe.unet.head = Module(pipe.unet.head, name=f"{prefix}_unet_head", strategy=_ort())
    return pipe


def _record_and_tune(run, modules) -> None:
    with torch.no_grad():
        for batch in (1, 5):
            run(torch.randn(batch, 4))
    for module in modules:
        module.tune()


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 4, generator=torch.Generator().manual_seed(batch))


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def saved_net(tmp_path_factory):
    """A Net whose encoder and head are wrapped, tuned on ONNX Runtime and saved once."""
    net = _wrap_net(Net().eval(), "composite_net")
    _record_and_tune(net, [net.encoder, net.head])
    path = aitune_triton.save(net, tmp_path_factory.mktemp("saved") / "net")
    return net, path


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    pipe = _wrap_pipeline(TinyPipeline(), "composite_pipe")
    _record_and_tune(pipe, [pipe.text_encoder, pipe.unet.head])
    path = aitune_triton.save(pipe, tmp_path_factory.mktemp("saved") / "pipeline")
    return pipe, path


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


def _files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ save
def test_a_wrapped_submodule_in_its_parent_is_found_as_the_wrapper_under_its_attribute_path(saved_net):
    net, _ = saved_net

    found = wrapped_submodules(net)

    assert [(path, module.name) for path, module in found] == [
        ("encoder", "composite_net_encoder"),
        ("head", "composite_net_head"),
    ]
    assert found[0][1] is net.encoder and isinstance(net.encoder, Module)
    # named_modules() goes through the proxy and yields the bare module
    assert not isinstance(dict(net.named_modules())["encoder"], Module)


def test_a_parent_with_two_wrapped_children_saves_one_manifest_with_each_under_its_attribute_path(saved_net):
    _, path = saved_net

    manifest = _manifest(path)

    assert manifest["format_version"] == 2
    assert [(e["path"], e["module"]["name"]) for e in manifest["modules"]] == [
        ("encoder", "composite_net_encoder"),
        ("head", "composite_net_head"),
    ]
    assert _files(path) == [
        MANIFEST_NAME,
        "modules/composite_net_encoder/graph_0/model.onnx",
        "modules/composite_net_encoder/graph_0/warmup_max.pt",
        "modules/composite_net_encoder/graph_0/warmup_min.pt",
        "modules/composite_net_head/graph_0/model.onnx",
        "modules/composite_net_head/graph_0/warmup_max.pt",
        "modules/composite_net_head/graph_0/warmup_min.pt",
    ]
    assert sorted(manifest["files"]) == _files(path)[1:]
    assert "module" not in read_checkpoint(path)  # only a Module saved on its own has one


def test_loading_into_a_freshly_built_parent_puts_each_submodule_back_tuned_on_its_backend(saved_net, unique_name):
    _, path = saved_net
    fresh, reference = Net().eval(), Net().eval()
    bare_encoder = fresh.encoder

    loaded = aitune_triton.load(fresh, path)

    assert loaded is fresh
    assert isinstance(fresh.encoder, Module) and isinstance(fresh.head, Module)
    assert fresh.encoder.module is bare_encoder
    assert fresh.encoder.state is ModuleState.TUNED and fresh.head.state is ModuleState.TUNED
    assert [g.backend.name for g in fresh.encoder.tuned_graphs + fresh.head.tuned_graphs] == ["onnxruntime"] * 2
    assert fresh.encoder.tuned_graphs[0].backend.artifacts["model"] == path / "modules/composite_net_encoder/graph_0/model.onnx"
    x = _x(3)  # a batch size never recorded, inside the range
    RUNS.clear()
    with torch.no_grad():
        got = fresh(x)
        assert RUNS == []  # the parent called both wrappers, which ran on ONNX Runtime
        want = reference(x)
        assert RUNS == ["Encoder", "Head"]
    _same(got, want)


def test_the_loaded_submodules_take_their_stored_names_when_no_live_module_holds_them(unique_name, tmp_path):
    net = _wrap_net(Net().eval(), unique_name)
    _record_and_tune(net, [net.encoder, net.head])
    path = aitune_triton.save(net, tmp_path / "ckpt")
    del net
    gc.collect()

    fresh = aitune_triton.load(Net().eval(), path)

    assert (fresh.encoder.name, fresh.head.name) == (f"{unique_name}_encoder", f"{unique_name}_head")


def test_a_pipeline_object_saves_and_loads_its_wrapped_attributes_and_nested_submodules(saved_pipeline):
    pipe, path = saved_pipeline
    assert [(e["path"], e["module"]["name"]) for e in _manifest(path)["modules"]] == [
        ("text_encoder", "composite_pipe_text_encoder"),
        ("unet.head", "composite_pipe_unet_head"),
    ]
    fresh, reference = TinyPipeline(), TinyPipeline()

    loaded = aitune_triton.load(fresh, path)

    assert loaded is fresh
    assert isinstance(fresh.text_encoder, Module) and isinstance(fresh.unet.head, Module)
    assert not isinstance(fresh.unet, Module) and not isinstance(fresh.unet.proj, Module)
    x = _x(4)
    RUNS.clear()
    with torch.no_grad():
        got = fresh(x)
        assert RUNS == []
        _same(got, reference(x))
        _same(got, pipe(x))


def test_a_wrapper_already_in_the_fresh_object_is_used_and_switched_to_tuned(saved_net):
    _, path = saved_net
    fresh = Net().eval()
    fresh.encoder = Module(fresh.encoder, name="composite_prewrapped_encoder")
    prewrapped = fresh.encoder

    aitune_triton.load(fresh, path)

    assert fresh.encoder is prewrapped and prewrapped.name == "composite_prewrapped_encoder"
    assert prewrapped.state is ModuleState.TUNED and fresh.head.state is ModuleState.TUNED


def test_device_map_overrides_device_per_attribute_path_and_refuses_unknown_paths(saved_net):
    _, path = saved_net
    fresh = Net().eval()

    aitune_triton.load(fresh, path, device="cpu", device_map={"head": torch.device("cpu")})
    assert [g.backend.device for g in fresh.encoder.tuned_graphs + fresh.head.tuned_graphs] == [torch.device("cpu")] * 2

    other = Net().eval()
    with pytest.raises(InvalidArgumentError, match=r"device_map: \['decoder'\] are not attribute paths .* \['encoder', 'head'\]"):
        aitune_triton.load(other, path, device_map={"decoder": "cpu"})
    with pytest.raises(ArgumentTypeError, match="device: expected one device .* got a dict. Pass per-submodule devices as device_map"):
        aitune_triton.load(other, path, {"encoder": "cpu"})
    assert not isinstance(other.encoder, Module)


# -------------------------------------------------------------------------------- failed loads
def _unchanged(net: Net, encoder: torch.nn.Module, head: torch.nn.Module) -> None:
    assert net.encoder is encoder and net.head is head
    assert not isinstance(net.encoder, Module) and live_wrapper_of(encoder) is None and live_wrapper_of(head) is None


def test_a_stored_path_missing_in_the_object_is_a_checkpoint_error_naming_it_and_changes_nothing(saved_pipeline):
    _, path = saved_pipeline
    fresh = TinyPipeline()
    del fresh.unet.head
    bare = fresh.text_encoder

    with pytest.raises(CheckpointError, match=r"nothing was loaded into TinyPipeline: 'unet.head' \(Module 'composite_pipe_unet_head'\) is not in it"):
        aitune_triton.load(fresh, path)

    assert fresh.text_encoder is bare and live_wrapper_of(bare) is None  # the path that was there is untouched


def test_a_submodule_with_another_forward_signature_is_refused_naming_its_path_and_changes_nothing(saved_net):
    _, path = saved_net
    fresh = Net(head=MaskedHead).eval()
    encoder, head = fresh.encoder, fresh.head

    with pytest.raises(InvalidStateDictError, match=r"'head' \(MaskedHead\) has a forward taking .*mask.* tuned for one taking"):
        aitune_triton.load(fresh, path)

    _unchanged(fresh, encoder, head)


def test_loading_into_the_object_the_checkpoint_came_from_is_refused_as_already_tuned(saved_net):
    net, path = saved_net

    with pytest.raises(ModuleStateError, match="'encoder' is the Module 'composite_net_encoder', which is already tuned"):
        aitune_triton.load(net, path)

    assert net.encoder.state is ModuleState.TUNED


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="needs an onnxruntime that cannot run on CUDA"
)
def test_a_submodule_whose_backend_fails_to_load_undoes_the_ones_already_loaded(saved_net):
    _, path = saved_net
    fresh = Net().eval()
    fresh.encoder = Module(fresh.encoder, name="composite_undo_encoder")  # an untuned wrapper: gets its state back
    with torch.no_grad():
        fresh(_x(2))
    assert fresh.encoder.state is ModuleState.RECORDING
    encoder, head = fresh.encoder, fresh.head

    with pytest.raises(BackendUnavailableError, match="no CUDAExecutionProvider"):
        aitune_triton.load(fresh, path, device_map={"head": "cuda:0"})  # the encoder loads first, then the head fails

    assert fresh.encoder is encoder and fresh.head is head and not isinstance(fresh.head, Module)
    assert encoder.state is ModuleState.RECORDING and encoder.graph_specs[0].num_calls == 1
    assert live_wrapper_of(head) is None  # the wrapper made for it was retired
    aitune_triton.load(Net().eval(), path)  # nothing left behind blocks a later load


def _wrappers_of(module: torch.nn.Module) -> list[Module]:
    """Every Module object still alive that wraps ``module``, retired or not (a kept traceback holds some)."""
    gc.collect()
    return [obj for obj in gc.get_objects() if isinstance(obj, Module) and obj.__wrapped__ is module]


def test_a_failed_load_whose_exception_is_kept_leaves_every_bare_submodule_unwrapped_unrecorded_and_loadable(
    unique_name, tmp_path
):
    net = _wrap_net(Net().eval(), unique_name)
    _record_and_tune(net, [net.encoder, net.head])
    path = aitune_triton.save(net, tmp_path / "net")
    del net
    gc.collect()  # frees the stored names
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    manifest = _manifest(broken)
    assert [entry["path"] for entry in manifest["modules"]] == ["encoder", "head"]  # the encoder is wrapped first
    manifest["modules"][1]["module"]["graphs"][0]["backend"]["name"] = "not_registered_here"
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    fresh = Net().eval()
    encoder, head = fresh.encoder, fresh.head
    eager = copy.deepcopy(fresh)

    with pytest.raises(UnknownBackendError, match="not_registered_here") as excinfo:
        aitune_triton.load(fresh, broken)

    assert excinfo.value.__traceback__ is not None  # kept, with every frame of the failed load
    _unchanged(fresh, encoder, head)
    assert type(encoder) is Encoder and type(head) is Head
    with torch.no_grad():
        _same(fresh(_x()), eager(_x()))
    assert [w._recorded_calls() for w in _wrappers_of(encoder) + _wrappers_of(head)] in ([], [0], [0, 0])
    aitune_triton.load(fresh, path)  # not refused as "wrapped by the live Module ..."
    assert (fresh.encoder.name, fresh.head.name) == (f"{unique_name}_encoder", f"{unique_name}_head")
    RUNS.clear()
    with torch.no_grad():
        got = fresh(_x())
        assert RUNS == []  # both ran on their loaded backends
        _same(got, eager(_x()))


class HeadPinnedNet(Net):
    """A Net that refuses a new ``head`` once built, as a model guarding its attributes does."""

    def __setattr__(self, name, value):
        if name == "head" and "head" in self.__dict__.get("_modules", {}):
            raise AttributeError("HeadPinnedNet.head cannot be replaced")
        super().__setattr__(name, value)


def test_a_submodule_that_cannot_be_assigned_its_loaded_wrapper_puts_back_the_ones_assigned_and_changes_nothing(saved_net):
    _, path = saved_net
    fresh = HeadPinnedNet().eval()
    encoder, head = fresh.encoder, fresh.head

    with pytest.raises(InvalidArgumentError, match=r"nothing was loaded into HeadPinnedNet: 'head' cannot be assigned its "
                       r"loaded Module \(AttributeError: HeadPinnedNet.head cannot be replaced\)") as excinfo:
        aitune_triton.load(fresh, path)

    assert excinfo.value.__traceback__ is not None
    _unchanged(fresh, encoder, head)  # the encoder, assigned first, is back as it was
    assert type(encoder) is Encoder and type(head) is Head
    aitune_triton.load(Net().eval(), path)  # nothing left behind blocks a later load


# ------------------------------------------------------------------------------- failed saves
def test_saving_with_an_untuned_wrapped_submodule_names_its_path_and_state_and_writes_nothing(unique_name, tmp_path):
    net = _wrap_net(Net().eval(), unique_name)
    with torch.no_grad():
        net(_x(2))
    net.encoder.tune()

    with pytest.raises(ModuleStateError, match=rf"not tuned: 'head' \(Module '{unique_name}_head', state RECORDING\)"):
        aitune_triton.save(net, tmp_path / "out" / "ckpt")

    assert not (tmp_path / "out").exists()


def test_saving_an_object_without_wrapped_submodules_raises_saying_how_to_wrap_them(tmp_path, unique_name):
    tmp_path = tmp_path / "out"
    with pytest.raises(InvalidArgumentError, match="Net holds no aitune_triton.Module.*assign them into their parent"):
        aitune_triton.save(Net(), tmp_path / "a")
    with pytest.raises(InvalidArgumentError, match="TinyPipeline holds no aitune_triton.Module"):
        aitune_triton.save(TinyPipeline(), tmp_path / "b")
    with pytest.raises(ArgumentTypeError, match="obj: expected an aitune_triton.Module.*got int"):
        aitune_triton.save(3, tmp_path / "c")
    net = Net()
    wrapper = Module(net.encoder, name=unique_name)  # never assigned: the parent still calls the bare module
    with pytest.raises(InvalidArgumentError, match=rf"'encoder' \(wrapped by Module '{unique_name}'\); assign it into the parent"):
        aitune_triton.save(net, tmp_path / "d")
    assert wrapper.state is ModuleState.INIT and not tmp_path.exists()


# -------------------------------------------------------------------------------- version 1
def _as_version_1(path: Path) -> None:
    """Rewrite a single-Module checkpoint's manifest as aitune_triton wrote it before format version 2."""
    manifest = _manifest(path)
    (stored,) = manifest.pop("modules")
    manifest.update(format_version=1, module=stored["module"])
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def test_a_version_1_checkpoint_still_reads_and_loads(unique_name, tmp_path):
    torch.manual_seed(3)
    encoder = Encoder().eval()
    module = Module(encoder, name=unique_name, strategy=_ort())
    _record_and_tune(module, [module])
    path = aitune_triton.save(module, tmp_path / "ckpt")
    _as_version_1(path)
    assert _manifest(path)["format_version"] == 1 and "modules" not in _manifest(path)

    manifest = read_checkpoint(path)
    loaded = aitune_triton.load(copy.deepcopy(encoder), path, name=f"{unique_name}_v1")

    assert [e["path"] for e in manifest["modules"]] == [""] and manifest["module"]["name"] == unique_name
    assert manifest["module"]["graphs"][0]["backend"]["artifacts"]["model"] == str(path / "graph_0" / "model.onnx")
    assert loaded.state is ModuleState.TUNED and loaded.name == f"{unique_name}_v1"
    x = _x(3)
    with torch.no_grad():
        _same(loaded(x), copy.deepcopy(encoder)(x))


# ----------------------------------------------------------------------------------- export
def test_exporting_a_two_submodule_checkpoint_writes_each_entry_model_with_its_graph_models(saved_net, tmp_path):
    _, path = saved_net
    repository = tmp_path / "repo"

    result = aitune_triton.export(path, repository, show_progress=False, router=True)

    assert result.entry_models == {"encoder": "composite_net_encoder", "head": "composite_net_head"}
    assert result.graph_models == ["composite_net_encoder.graph_0", "composite_net_head.graph_0"]
    assert sorted(p.name for p in repository.iterdir()) == sorted([*result.entry_models.values(), *result.graph_models])
    for model in [*result.entry_models.values(), *result.graph_models]:
        assert read_model_config(repository / model / "config.pbtxt").name == model
        assert (repository / model / "1" / "model.py").is_file()
    assert (repository / "composite_net_head.graph_0" / "1" / "model.onnx").is_file()
    with pytest.raises(ExportError, match="this export wrote 2 entry models"):
        result.entry_model
    with pytest.raises(ExportError, match="name: applies to an export of one module; .* holds 2 wrapped submodules"):
        aitune_triton.export(path, tmp_path / "other", name="renamed", show_progress=False)
    assert not (tmp_path / "other").exists()


def test_the_cli_inspects_and_exports_a_two_submodule_checkpoint(saved_pipeline, tmp_path):
    _, path = saved_pipeline
    runner = CliRunner(env={"COLUMNS": "240"})

    inspected = runner.invoke(main, ["inspect", str(path)])
    exported = runner.invoke(main, ["export", str(path), "-o", str(tmp_path / "repo"), "--quiet"])

    assert inspected.exit_code == 0, inspected.output
    assert "text_encoder: composite_pipe_text_encoder" in inspected.output
    assert "unet.head: composite_pipe_unet_head" in inspected.output
    assert exported.exit_code == 0, exported.output
    assert "composite_pipe_text_encoder  (entry)" in exported.output
    assert "composite_pipe_unet_head  (entry)" in exported.output
    # One graph spec each: each submodule is one model, without a router in front of it.
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["composite_pipe_text_encoder", "composite_pipe_unet_head"]
    assert (tmp_path / "repo" / "composite_pipe_unet_head" / "1" / "model.onnx").is_file()


def test_the_cli_export_of_a_two_submodule_checkpoint_with_name_says_to_drop_the_option_and_writes_nothing(
    saved_pipeline, tmp_path
):
    _, path = saved_pipeline
    runner = CliRunner(env={"COLUMNS": "240"})

    result = runner.invoke(main, ["export", str(path), "-o", str(tmp_path / "repo"), "--name", "renamed", "--quiet"])

    assert result.exit_code == 1
    assert "Error: name: applies to an export of one module; " in result.output
    assert "holds 2 wrapped submodules ('text_encoder', 'unet.head'), exported under their stored names. Drop --name." in result.output
    assert "name=None" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "repo").exists()


def test_a_single_module_checkpoint_exports_as_before_with_its_entry_model(tmp_path, unique_name):
    module = Module(Encoder().eval(), name=unique_name, strategy=_ort())
    _record_and_tune(module, [module])
    path = aitune_triton.save(module, tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)

    result = aitune_triton.export(path, tmp_path / "repo", show_progress=False)
    routed = aitune_triton.export(path, tmp_path / "routed", show_progress=False, router=True)

    assert result.entry_models == {"": unique_name} and result.entry_model == unique_name
    assert result.graph_models == [unique_name]  # one graph spec: the entry model runs it itself
    assert routed.entry_model == unique_name and routed.graph_models == [f"{unique_name}.graph_0"]
