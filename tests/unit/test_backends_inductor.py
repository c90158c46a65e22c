"""The inductor backend (torch.compile of a saved torch.export program) and AOTInductor freezing."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import aitune_triton
from aitune_triton import AOTInductorBackend, InductorBackend, Module, OneBackendStrategy
from aitune_triton.backends import Backend, BuildContext, LoadContext, get_backend_class
from aitune_triton.backends.inductor import check_program_archive
from aitune_triton.backends.precision import weights_in
from aitune_triton.errors import BackendUnavailableError, CheckpointError, InvalidArgumentError
from aitune_triton.module.recording import Recorder
from aitune_triton.spec import ForwardSignature, flatten_call
from nets import eager

#: (batch, sequence length) of the recorded calls; RANGE_SIZES are inside the range, never recorded.
RECORDED = ((1, 3), (4, 7), (2, 5))
UNRECORDED = ((3, 6), (1, 4), (4, 3), (1, 7))


class SeqNet(torch.nn.Module):
    """Token ids and features with batch and sequence axes in, nested outputs (a dict holding a list) out."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(30, 8)
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor, features: torch.Tensor):
        hidden = torch.relu(self.linear(self.embedding(ids) + features))
        return {"hidden": hidden, "pooled": [hidden.mean(1), hidden.sum(-1)]}


def _seq_net() -> SeqNet:
    torch.manual_seed(0)
    return SeqNet().eval()


def _call(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (batch, length), generator=generator), torch.randn(batch, length, 8, generator=generator)


def _assert_equal_to_eager(output, expected) -> None:
    assert sorted(output) == ["hidden", "pooled"] and isinstance(output["pooled"], list) and len(output["pooled"]) == 2
    for got, want in ((output["hidden"], expected["hidden"]), *zip(output["pooled"], expected["pooled"])):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@dataclass
class Tuned:
    module: Module
    reference: torch.nn.Module
    recorded: list[tuple[torch.Tensor, torch.Tensor]]
    root: Path
    graphs_compiled_by_tune: int


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One SeqNet tuned with OneBackendStrategy('inductor'), shared by the tests below."""
    root = tmp_path_factory.mktemp("inductor")
    net = _seq_net()
    reference = eager(net)
    module = Module(net, name="test_backends_inductor_seq", strategy=OneBackendStrategy("inductor"), cache_dir=root / "cache")
    recorded = [_call(batch, length, seed) for seed, (batch, length) in enumerate(RECORDED)]
    with torch.no_grad():
        for ids, features in recorded:
            module(ids, features)
    before = counters["stats"]["unique_graphs"]
    module.tune()
    yield Tuned(module, reference, recorded, root, counters["stats"]["unique_graphs"] - before)
    module.deactivate()


# ------------------------------------------------------------------------------ options
def test_inductor_is_registered_and_its_options_survive_clone_and_to_dict():
    backend = InductorBackend(mode="max-autotune-no-cudagraphs", dynamic=True, fullgraph=False, freezing=True)

    clone = backend.clone()

    assert get_backend_class("inductor") is InductorBackend
    assert InductorBackend.ahead_of_time and InductorBackend.triton_runtime == "inductor"
    expected = {"mode": "max-autotune-no-cudagraphs", "dynamic": True, "fullgraph": False, "freezing": True, "precision": "fp32"}
    assert clone is not backend and clone.options == expected
    assert clone.to_dict()["options"] == expected and not clone.active
    assert InductorBackend().options == {"mode": None, "dynamic": None, "fullgraph": True, "freezing": None, "precision": "fp32"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "fastest"}, r"option 'mode' must be None or one of \['default', 'reduce-overhead', .*got 'fastest'"),
        ({"dynamic": "yes"}, r"option 'dynamic' must be None, True or False, got 'yes'"),
        ({"freezing": 1}, r"option 'freezing' must be None, True or False, got 1"),
        ({"fullgraph": None}, r"option 'fullgraph' must be True or False, got None"),
        ({"precision": "fp8"}, r"option 'precision' must be one of \['fp32', 'fp16', 'bf16', 'int8'\], got 'fp8'"),
    ],
)
def test_inductor_refuses_a_bad_option_naming_it_the_allowed_values_and_the_value_given(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        InductorBackend(**options)


def test_aoti_freezing_is_validated_and_persisted():
    with pytest.raises(InvalidArgumentError, match=r"aoti: option 'freezing' must be True or False, got 'on'"):
        AOTInductorBackend(freezing="on")  # type: ignore[arg-type]

    assert AOTInductorBackend().options == {"freezing": False}
    assert AOTInductorBackend(freezing=True).clone().to_dict()["options"] == {"freezing": True}


def _cpu_build_context(tmp_path) -> BuildContext:
    """What a backend gets to build the small sequence net's one graph spec (one recorded call) on CPU."""
    net = _seq_net()
    signature = ForwardSignature.from_callable(net.forward)
    recorder = Recorder(signature)
    with torch.no_grad():
        recorder.record(net, _call(2, 4, seed=0), {})
    (graph,) = recorder.graph_specs()
    sample = recorder.largest_sample(graph)
    return BuildContext(net, signature, graph, flatten_call(signature, sample.args, sample.kwargs), tmp_path, torch.device("cpu"))


@pytest.mark.parametrize(("precision", "reason"), [("fp16", "CUDA devices only"), ("int8", "no inductor path")])  # bf16: test_cpu_bf16.py
def test_inductor_precisions_it_cannot_build_on_cpu_are_unavailable_before_anything_is_built(tmp_path, precision, reason):
    context = _cpu_build_context(tmp_path)

    with pytest.raises(BackendUnavailableError, match=f"inductor: precision {precision!r}.*{reason}"):
        InductorBackend(precision=precision).build(context)

    assert list(tmp_path.iterdir()) == []


def test_inductor_half_precision_export_gives_the_module_its_exact_fp32_weights_back():
    net = _seq_net()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    weight = net.linear.weight

    with weights_in(net, torch.float16):
        assert net.linear.weight.dtype == torch.float16 and net.embedding.weight.dtype == torch.float16

    assert net.linear.weight is weight  # the same Parameter objects, as optimizers and hooks hold them
    for name, tensor in net.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, before[name]), name


# ------------------------------------------------------------------------------- tuned
def test_inductor_matches_eager_on_every_recorded_call_and_on_unrecorded_sizes_inside_the_range(tuned):
    (graph,) = tuned.module.tuned_graphs
    assert graph.backend.name == "inductor" and graph.report.chosen == "inductor"
    dims = tuned.module.graph_specs[0].dims
    # Recorded 1..4; the default batch size sweep sets the served max (never below the recorded one).
    assert dims["dim0"].bounds == (3, 7) and dims["batch"].min == 1
    assert dims["batch"].max == graph.report.batch_sweep.max_batch_size >= 4

    with torch.no_grad():
        for ids, features in tuned.recorded:
            _assert_equal_to_eager(tuned.module(ids, features), tuned.reference(ids, features))
        for seed, (batch, length) in enumerate(UNRECORDED, start=10):
            ids, features = _call(batch, length, seed)
            _assert_equal_to_eager(tuned.module(ids, features), tuned.reference(ids, features))


def test_inductor_runs_every_size_in_the_range_without_compiling_again(tuned):
    # Tuning compiled once (the warm-up) and then ran the recorded calls, batch 1 among them.
    assert tuned.graphs_compiled_by_tune == 1
    with torch.no_grad():
        before = counters["stats"]["unique_graphs"]
        for seed, (batch, length) in enumerate(((1, 3), (4, 7), (3, 5), (1, 6), (2, 3), (4, 4)), start=21):
            tuned.module(*_call(batch, length, seed))

    assert counters["stats"]["unique_graphs"] == before


def test_inductor_backend_to_dict_from_dict_round_trip(tuned):
    (graph,) = tuned.module.tuned_graphs
    backend = graph.backend

    data = json.loads(json.dumps(backend.to_dict()))

    assert data["name"] == "inductor" and data["device"] == "cpu"
    assert data["options"] == {"mode": None, "dynamic": None, "fullgraph": True, "freezing": None, "precision": "fp32"}
    assert list(data["artifacts"]) == ["model", "warmup_min", "warmup_max"] and Path(data["artifacts"]["model"]).name == "program.pt2"
    batch, length = data["input_axes"][0]
    assert isinstance(batch, str) and isinstance(length, str) and data["input_axes"][1] == [batch, length, 8]
    assert data["index_ranges"][0] == [{"op": "aten.embedding", "size": 30, "negative": False}]
    restored = Backend.from_dict(
        data, LoadContext(tuned.reference, graph.spec, torch.device("cpu"), {k: Path(v) for k, v in data["artifacts"].items()})
    )
    assert isinstance(restored, InductorBackend) and restored is not backend and restored.active
    ids, features = _call(3, 6, seed=30)
    call = flatten_call(tuned.module.signature, (ids, features), {})
    with torch.no_grad():
        for got, want in zip(restored.infer(call), backend.infer(call)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    restored.deactivate()


def test_inductor_survives_save_and_load_into_a_fresh_module_equal_to_eager(tuned):
    checkpoint = aitune_triton.save(tuned.module, tuned.root / "checkpoint", overwrite=True)
    fresh_net = _seq_net()
    fresh = Module(fresh_net, name="test_backends_inductor_fresh")

    aitune_triton.load(fresh, checkpoint)

    try:
        assert [g.backend.name for g in fresh.tuned_graphs] == ["inductor"]
        with torch.no_grad():
            for seed, (batch, length) in enumerate(UNRECORDED, start=40):
                ids, features = _call(batch, length, seed)
                _assert_equal_to_eager(fresh(ids, features), tuned.reference(ids, features))
    finally:
        fresh.deactivate()


def test_inductor_artifact_holds_the_weights_but_no_recorded_inputs_and_no_pickles(tuned):
    path = tuned.module.tuned_graphs[0].backend.artifacts["model"]

    with zipfile.ZipFile(path) as archive:
        sizes = {name.split("/", 1)[1]: archive.getinfo(name).file_size for name in archive.namelist()}
        weights = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))))

    assert sizes["data/sample_inputs/model.pt"] == 0
    assert sorted(weights["config"]) == ["module.embedding.weight", "module.linear.bias", "module.linear.weight"]
    assert not any(entry["use_pickle"] for entry in weights["config"].values())
    check_program_archive(path)  # the check load runs passes


def test_inductor_refuses_an_archive_that_would_unpickle_a_weight_or_a_constant(tuned, tmp_path):
    source = tuned.module.tuned_graphs[0].backend.artifacts["model"]
    tampered = tmp_path / "program.pt2"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(tampered, "w") as copy:
        for item in original.infolist():
            data = original.read(item)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["module.linear.bias"]["use_pickle"] = True
                data = json.dumps(config).encode()
            copy.writestr(item, data)

    with pytest.raises(CheckpointError, match=r"\['module.linear.bias'\] as pickles .* loads plain tensors only"):
        check_program_archive(tampered)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(tampered, "w") as copy:
        for item in original.infolist():
            data = original.read(item)
            if item.filename.endswith("model_constants_config.json"):
                data = json.dumps({"config": {"hook": {"path_name": "opaque_obj_0"}}}).encode()
            copy.writestr(item, data)
    with pytest.raises(CheckpointError, match=r"\['hook'\] as pickles"):
        check_program_archive(tampered)
    not_a_zip = tmp_path / "broken.pt2"
    shutil.copyfile(Path(__file__), not_a_zip)
    with pytest.raises(CheckpointError, match="is not a torch.export archive"):
        check_program_archive(not_a_zip)


def test_inductor_module_keeps_working_after_its_weights_are_offloaded_to_meta(tmp_path):
    net = _seq_net()
    reference = eager(net)
    module = Module(net, name="test_backends_inductor_offload", strategy=OneBackendStrategy("inductor"), offload="meta", cache_dir=tmp_path)
    with torch.no_grad():
        for seed, (batch, length) in enumerate(RECORDED):
            module(*_call(batch, length, seed))
    module.tune()

    try:
        assert net.linear.weight.device.type == "meta"
        ids, features = _call(3, 4, seed=50)
        with torch.no_grad():
            _assert_equal_to_eager(module(ids, features), reference(ids, features))
    finally:
        module.deactivate()


# ------------------------------------------------------------------------------- aoti
def test_aoti_with_freezing_matches_eager_inside_the_recorded_range(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    reference = eager(net)
    module = Module(net, name="test_backends_aoti_freezing", strategy=OneBackendStrategy(AOTInductorBackend(freezing=True)), cache_dir=tmp_path)
    with torch.no_grad():
        for batch in (1, 5):
            module(torch.randn(batch, 6))
    module.tune()

    try:
        assert module.tuned_graphs[0].backend.to_dict()["options"] == {"freezing": True}
        x = torch.randn(3, 6)
        with torch.no_grad():
            torch.testing.assert_close(module(x), reference(x), atol=1e-5, rtol=1e-5)
    finally:
        module.deactivate()


def test_the_served_runtime_moves_a_program_with_the_pass_it_imports_itself(tuned):
    """``torch.export.passes`` is not loaded by ``import torch``: a GPU instance of the served model
    moved its program with ``torch.export.passes.move_to_device_pass`` and died of AttributeError."""
    from aitune_triton.served.runtimes import inductor as served

    program = torch.export.load(str(tuned.module.tuned_graphs[0].backend.artifacts["model"]))
    moved = served.move_to_device_pass(program, torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in moved.state_dict.values())
    source = Path(served.__file__).read_text()
    assert "from torch.export.passes import move_to_device_pass" in source


@pytest.mark.parametrize("precision", ["fp16"])  # bf16 builds on a CPU with native bf16: test_cpu_bf16.py
def test_aoti_half_precision_is_cuda_only_and_refused_on_cpu_before_anything_is_built(tmp_path, precision):
    context = _cpu_build_context(tmp_path)
    backend = AOTInductorBackend(precision=precision)

    with pytest.raises(BackendUnavailableError, match=f"aoti: precision {precision!r} is built for CUDA devices only"):
        backend.build(context)
    assert backend.options == {"freezing": False, "precision": precision}
    assert not any(tmp_path.iterdir())


def test_aoti_refuses_a_precision_it_has_no_path_for_saying_where_int8_is():
    with pytest.raises(InvalidArgumentError, match=r"aoti: option 'precision' must be one of .*OnnxRuntimeBackend\(precision='int8'\)"):
        AOTInductorBackend(precision="int8")
