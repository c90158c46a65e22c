"""export(target="native"): graph models on Triton's own backends, with the artifact's own tensor names."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format
from nets import IndependentNet, TwoInputNet, record_two_specs
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

import aitune_triton
from aitune_triton import Module, OneBackendStrategy
from aitune_triton.backends import OnnxRuntimeBackend, get_backend_class
from aitune_triton.backends.serving import NativeTarget, onnx_signature
from aitune_triton.cli import main
from aitune_triton.errors import ExportError, InvalidArgumentError
from aitune_triton.triton.config import ROUTES_PARAMETER, TritonModelOptions, read_model_config
from aitune_triton.triton.exporter import export
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.native import ExportTarget, native_model_config
from aitune_triton.triton.options import THREADS_PARAMETER

ORT_MODULE = "native_two_input_net"
AOTI_MODULE = "native_independent_net"
SCALAR_MODULE = "native_scalar_net"


def _ort() -> OnnxRuntimeBackend:
    """ONNX Runtime with fixed session options (no measurement at build: faster tests)."""
    return OnnxRuntimeBackend(graph_optimization_level="all", intra_op_num_threads=1)


class ScalarNet(torch.nn.Module):
    """Never batched (the first axis is always 2); returns a 0-d tensor among its outputs."""

    def forward(self, x: torch.Tensor):
        return {"total": x.sum(), "doubled": x * 2}


@pytest.fixture(scope="module")
def ort(tmp_path_factory):
    """TwoInputNet tuned with ONNX Runtime for (x, y) and (x,), saved, and exported with target='native'."""
    root = tmp_path_factory.mktemp("native_ort")
    torch.manual_seed(0)
    # The recorded batch range 1..5 (no sweep): the tests compare native configs with it.
    module = Module(TwoInputNet().eval(), name=ORT_MODULE, strategy=OneBackendStrategy(_ort(), find_max_batch_size=False),
                    cache_dir=root / "cache")
    record_two_specs(module)
    module.tune()
    checkpoint = aitune_triton.save(module, root / "checkpoint")
    result = export(module, root / "repo", target="native", show_progress=False)
    yield module, checkpoint, result
    del module


@pytest.fixture(scope="module")
def aoti(tmp_path_factory):
    """IndependentNet tuned with AOTInductor (batch 1..3) and exported with target='native'."""
    root = tmp_path_factory.mktemp("native_aoti")
    torch.manual_seed(0)
    module = Module(IndependentNet().eval(), name=AOTI_MODULE, strategy=OneBackendStrategy("aoti", find_max_batch_size=False),
                    cache_dir=root / "cache")
    with torch.no_grad():
        for batch in (1, 3):
            module(torch.randn(batch, 8))
    module.tune()
    result = export(module, root / "repo", target=ExportTarget.NATIVE, show_progress=False)
    yield module, result
    del module


def _config(result, model: str) -> mc.ModelConfig:
    return read_model_config(result.repository / model / "config.pbtxt")


def _routes(result, entry: str) -> dict:
    return json.loads(_config(result, entry).parameters[ROUTES_PARAMETER].string_value)


def _onnx_triton_type(value: onnx.ValueInfoProto) -> str:
    """The Triton data type of an ONNX graph tensor, through numpy (not the exporter's own table)."""
    return "TYPE_" + np_to_triton_dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


# ------------------------------------------------------------------------------ the seam
def test_onnxruntime_and_aoti_declare_their_triton_backend_and_eager_and_inductor_declare_none():
    declared = {name: get_backend_class(name).triton_native for name in ("onnxruntime", "aoti", "eager", "inductor")}

    assert (declared["onnxruntime"].platform, declared["onnxruntime"].default_model_filename) == ("onnxruntime_onnx", "model.onnx")
    assert (declared["aoti"].platform, declared["aoti"].default_model_filename) == ("torch_aoti", "model.pt2")
    assert declared["eager"] is None and declared["inductor"] is None


def test_a_native_target_without_platform_or_backend_is_refused_naming_both():
    with pytest.raises(InvalidArgumentError, match="expected a platform .* or a backend name .* got neither"):
        NativeTarget(default_model_filename="model.plan", signature=onnx_signature)


def test_a_native_target_with_a_path_as_file_name_is_refused():
    with pytest.raises(InvalidArgumentError, match="default_model_filename must be a plain file name, got '1/model.plan'"):
        NativeTarget(default_model_filename="1/model.plan", signature=onnx_signature, backend="tensorrt")


def test_a_tensorrt_plan_target_gets_gpu_instances_and_its_optimization_profiles(ort):
    """The dataclass carries what a TensorRT backend needs: platform, model.plan, KIND_GPU, profiles."""
    module, _, result = ort
    entry = module.to_dict()["graphs"][0]
    artifact = Path(entry["backend"]["artifacts"]["model"])
    plan = NativeTarget(
        default_model_filename="model.plan", signature=onnx_signature, platform="tensorrt_plan", backend="tensorrt",
        requires_gpu=True, profiles=lambda path: ["0", "1"] if path == artifact else [],
    )
    io = ModelIO.from_graph(f"{ORT_MODULE}.graph_0", entry["graph"], entry["backend"])
    signature = plan.signature(artifact, entry["graph"])
    options = TritonModelOptions()

    config = native_model_config(io, plan, signature, options, "cpu", plan.requires_gpu, artifact)

    assert (config.platform, config.backend, config.default_model_filename) == ("tensorrt_plan", "tensorrt", "model.plan")
    assert [(g.kind, list(g.profile)) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, ["0", "1"])]
    assert THREADS_PARAMETER not in config.parameters  # only a generated model.py reads it
    assert text_format.Parse(text_format.MessageToString(config), mc.ModelConfig()) == config


# ------------------------------------------------------------------------------ target argument
@pytest.mark.parametrize("value", ["tensorrt", "NATIVE", None, 1])
def test_an_unknown_target_is_refused_naming_the_argument_and_the_values_and_nothing_is_written(ort, tmp_path, value):
    module, _, _ = ort

    with pytest.raises(InvalidArgumentError, match=r"target: expected one of \['python', 'native'\] .* got " + repr(value)):
        export(module, tmp_path / "repo", target=value, show_progress=False)
    assert not (tmp_path / "repo").exists()


# ------------------------------------------------------------------------------ onnxruntime
def test_native_onnxruntime_configs_parse_into_model_config_and_round_trip(ort):
    _, _, result = ort

    for model in result.graph_models:
        text = (result.repository / model / "config.pbtxt").read_text()
        config = text_format.Parse(text, mc.ModelConfig())
        assert text_format.MessageToString(config) == text
        assert (config.platform, config.backend, config.default_model_filename) == ("onnxruntime_onnx", "onnxruntime", "model.onnx")
        assert config.max_batch_size == 5 and config.HasField("dynamic_batching")
        assert sorted(p.name for p in (result.repository / model / "1").iterdir()) == ["io.json", "manifest.json", "model.onnx"]
    assert result.targets == {model: "native" for model in result.graph_models}
    assert result.python_reasons == {}


def test_the_onnx_graph_inputs_and_outputs_are_the_config_inputs_and_outputs_names_and_dtypes(ort):
    _, _, result = ort

    for model in result.graph_models:
        config = _config(result, model)
        graph = onnx.load(str(result.repository / model / "1" / config.default_model_filename)).graph
        initializers = {i.name for i in graph.initializer}
        onnx_inputs = [(v.name, _onnx_triton_type(v)) for v in graph.input if v.name not in initializers]
        onnx_outputs = [(v.name, _onnx_triton_type(v)) for v in graph.output]
        assert onnx_inputs == [(t.name, mc.DataType.Name(t.data_type)) for t in config.input]
        assert onnx_outputs == [(t.name, mc.DataType.Name(t.data_type)) for t in config.output]


def _full_shape(config: mc.ModelConfig, tensor) -> list[int]:
    """The shape the model sees: the batch axis (-1) when the model batches, then reshape or dims."""
    own = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    return ([-1] if config.max_batch_size > 0 else []) + own


def test_the_onnx_graph_shapes_fit_the_config_shapes_axis_by_axis(ort):
    """Where both fix an axis the sizes are equal; a dynamic axis (-1, or a symbol in ONNX) may meet either."""
    _, _, result = ort

    for model in result.graph_models:
        config = _config(result, model)
        graph = onnx.load(str(result.repository / model / "1" / "model.onnx")).graph
        initializers = {i.name for i in graph.initializer}
        values = [v for v in graph.input if v.name not in initializers] + list(graph.output)
        for value, tensor in zip(values, list(config.input) + list(config.output)):
            onnx_shape = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            declared = _full_shape(config, tensor)
            assert len(onnx_shape) == len(declared), (value.name, onnx_shape, declared)
            assert all(a == b or -1 in (a, b) for a, b in zip(onnx_shape, declared)), (value.name, onnx_shape, declared)
            assert onnx_shape[0] == -1  # the batch axis stays dynamic in the artifact


def test_the_native_dims_and_batching_are_the_python_backend_models(ort, tmp_path):
    module, _, native = ort
    python = export(module, tmp_path / "repo", show_progress=False)

    for model in native.graph_models:
        ours, theirs = _config(native, model), _config(python, model)
        assert [(t.dims, t.HasField("reshape")) for t in ours.input] == [(t.dims, t.HasField("reshape")) for t in theirs.input]
        assert [(t.dims, t.HasField("reshape")) for t in ours.output] == [(t.dims, t.HasField("reshape")) for t in theirs.output]
        assert ours.max_batch_size == theirs.max_batch_size and ours.dynamic_batching == theirs.dynamic_batching
        assert ours.instance_group == theirs.instance_group
        assert theirs.backend == "python" and not theirs.platform


def test_the_entry_model_keeps_the_leaf_names_and_maps_them_to_the_native_models_own(ort, tmp_path):
    module, _, native = ort
    python = export(module, tmp_path / "repo", show_progress=False)
    routes, python_routes = _routes(native, ORT_MODULE), _routes(python, ORT_MODULE)

    assert [t.name for t in _config(native, ORT_MODULE).input] == [t.name for t in _config(python, ORT_MODULE).input] == ["x", "y"]
    for graph, python_graph in zip(routes["graphs"], python_routes["graphs"]):
        config = _config(native, graph["model_name"])
        names = [t["name"] for t in graph["inputs"] + graph["outputs"]]
        assert [graph["served_names"].get(n, n) for n in names] == [t.name for t in list(config.input) + list(config.output)]
        assert "served_names" not in python_graph
        assert {k: v for k, v in graph.items() if k != "served_names"} == python_graph  # the same contract and IO otherwise


def test_a_remote_module_reads_the_native_names_from_the_entry_models_routes(ort):
    _, _, result = ort
    graphs = [ModelIO.from_dict(g) for g in _routes(result, ORT_MODULE)["graphs"]]

    assert graphs[0].served_names == {"x": "input_0", "y": "input_1", "hidden.0": "output_0", "hidden.1": "output_1", "logits": "output_2"}
    assert graphs[0].artifact == "model.onnx"


def test_each_graph_models_manifest_says_how_it_is_served(ort, tmp_path):
    module, _, native = ort
    python = export(module, tmp_path / "repo", show_progress=False)

    for model in native.graph_models:
        manifest = json.loads((native.repository / model / "1" / "manifest.json").read_text())
        assert {k: manifest[k] for k in ("target", "platform", "backend", "default_model_filename")} == {
            "target": "native", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "default_model_filename": "model.onnx",
        }
        assert json.loads((python.repository / model / "1" / "manifest.json").read_text())["target"] == "python"
    assert python.targets == {model: "python" for model in python.graph_models}


def test_a_graph_spec_with_a_0d_tensor_in_a_model_that_does_not_batch_stays_a_python_backend_model_saying_why(tmp_path, capsys):
    module = Module(ScalarNet().eval(), name=SCALAR_MODULE, strategy=OneBackendStrategy(_ort()), cache_dir=tmp_path / "cache")
    for columns in (3, 5, 4):
        module(torch.randn(2, columns))
    module.tune()
    capsys.readouterr()

    result = export(module, tmp_path / "repo", target="native")

    graph_model = f"{SCALAR_MODULE}.graph_0"
    assert result.targets == {graph_model: "python"}
    assert "0-d tensors ['total'] in a model that does not batch" in result.python_reasons[graph_model]
    assert _config(result, graph_model).backend == "python"
    assert (result.repository / graph_model / "1" / "model.py").is_file()
    manifest = json.loads((result.repository / graph_model / "1" / "manifest.json").read_text())
    assert manifest["target"] == "python" and manifest["reason"] == result.python_reasons[graph_model]
    assert "Python backend: 0-d tensors ['total']" in capsys.readouterr().err


# ------------------------------------------------------------------------------ aoti
def test_an_aoti_graph_model_is_a_torch_aoti_model_named_as_the_pytorch_backend_names_tensors(aoti):
    module, result = aoti
    (model,) = result.graph_models
    config = _config(result, model)
    graph = module.to_dict()["graphs"][0]["graph"]

    assert (config.platform, config.backend, config.default_model_filename) == ("torch_aoti", "pytorch", "model.pt2")
    assert [t.name for t in config.input] == ["INPUT__0"]
    assert [t.name for t in config.output] == ["OUTPUT__0", "OUTPUT__1"]
    dtypes = [np_to_triton_dtype(torch.empty(0, dtype=getattr(torch, t["dtype"])).numpy().dtype) for t in graph["inputs"] + graph["outputs"]]
    assert [mc.DataType.Name(t.data_type) for t in list(config.input) + list(config.output)] == [f"TYPE_{d}" for d in dtypes]
    assert sorted(p.name for p in (result.repository / model / "1").iterdir()) == ["io.json", "manifest.json", "model.pt2"]
    text = (result.repository / model / "config.pbtxt").read_text()
    assert text_format.MessageToString(text_format.Parse(text, mc.ModelConfig())) == text


def test_the_aoti_package_takes_and_returns_what_its_config_declares(aoti):
    """Run the copied model.pt2 itself on inputs of the config's shapes and dtypes."""
    _, result = aoti
    (model,) = result.graph_models
    config = _config(result, model)
    runner = torch._inductor.aoti_load_package(str(result.repository / model / "1" / "model.pt2"))
    torch_dtype = {"TYPE_FP32": torch.float32, "TYPE_INT64": torch.int64}

    inputs = [torch.randn(2, *t.dims).to(torch_dtype[mc.DataType.Name(t.data_type)]) for t in config.input]
    outputs = runner(*inputs)

    assert len(outputs) == len(config.output)
    for output, declared in zip(outputs, config.output):
        assert output.dtype == torch_dtype[mc.DataType.Name(declared.data_type)]
        assert tuple(output.shape) == (2, *(declared.reshape.shape if declared.HasField("reshape") else declared.dims))


# ------------------------------------------------------------------------------ command line
def test_the_command_line_exports_native_models_and_says_which_graph_model_is_served_by_what(ort, tmp_path):
    _, checkpoint, _ = ort
    repository = tmp_path / "repo"

    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["export", str(checkpoint), "-o", str(repository), "--target", "native"])

    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in result.output.splitlines() if line.count("│") == 4}
    assert rows == {f"{ORT_MODULE}.graph_0": "native", f"{ORT_MODULE}.graph_1": "native", f"{ORT_MODULE}  (entry)": "python"}
    assert "native onnxruntime_onnx" in result.output  # the progress line of each graph model
    assert read_model_config(repository / f"{ORT_MODULE}.graph_0" / "config.pbtxt").platform == "onnxruntime_onnx"


def test_the_command_line_refuses_an_unknown_target_listing_the_choices(ort, tmp_path):
    _, checkpoint, _ = ort

    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "repo"), "--target", "tensorrt"])

    assert result.exit_code == 2
    assert "Invalid value for '--target': 'tensorrt' is not one of 'python', 'native'." in result.output
    assert not (tmp_path / "repo").exists()


def test_a_gpu_only_target_with_cpu_instances_is_refused_naming_instance_kind(ort, tmp_path, monkeypatch):
    """A backend may declare a target that runs on GPU only; asking for KIND_CPU then fails before writing."""
    module, _, _ = ort
    gpu_only = NativeTarget(default_model_filename="model.onnx", signature=onnx_signature, backend="onnxruntime", requires_gpu=True)
    monkeypatch.setattr(OnnxRuntimeBackend, "triton_native", gpu_only)

    with pytest.raises(ExportError, match=r"instance_kind: .*graph_0 is served by onnxruntime, which runs this artifact on GPU only, but 'cpu' was given"):
        export(module, tmp_path / "repo", options=TritonModelOptions(instance_kind="cpu"), target="native", show_progress=False)
    assert not (tmp_path / "repo").exists()
    result = export(module, tmp_path / "repo", target="native", show_progress=False)
    assert [g.kind for g in _config(result, f"{ORT_MODULE}.graph_0").instance_group] == [mc.ModelInstanceGroup.KIND_GPU]


def test_a_graph_spec_whose_backend_declares_no_native_target_stays_a_python_backend_model(ort, tmp_path, monkeypatch):
    """As eager and inductor do; here ONNX Runtime's declaration is taken away for the export."""
    module, _, _ = ort
    monkeypatch.setattr(OnnxRuntimeBackend, "triton_native", None)

    result = export(module, tmp_path / "repo", target="native", show_progress=False)

    reason = "backend 'onnxruntime' declares no Triton backend of its own (triton_native is None)"
    assert result.targets == {model: "python" for model in result.graph_models}
    assert result.python_reasons == {model: reason for model in result.graph_models}
    for model in result.graph_models:
        assert _config(result, model).backend == "python"
        assert json.loads((result.repository / model / "1" / "manifest.json").read_text())["reason"] == reason
    assert all("served_names" not in graph for graph in _routes(result, ORT_MODULE)["graphs"])


def test_the_command_line_says_why_a_graph_model_stays_a_python_backend_model(ort, tmp_path, monkeypatch):
    _, checkpoint, _ = ort
    monkeypatch.setattr(OnnxRuntimeBackend, "triton_native", None)

    result = CliRunner(env={"COLUMNS": "240"}).invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "repo"), "--target", "native", "--quiet"])

    assert result.exit_code == 0, result.output
    for graph in ("graph_0", "graph_1"):
        assert (
            f"{ORT_MODULE}.{graph} stays a Python-backend model: backend 'onnxruntime' declares no Triton backend of its own"
            in result.output
        )


@pytest.mark.parametrize(
    ("threads", "tuned", "parameters", "level"),
    [
        (1, {"intra_op_num_threads": 2, "graph_optimization_level": "basic"}, {"intra_op_thread_count": "1"}, -1),
        (None, {"intra_op_num_threads": 2, "graph_optimization_level": "disable"}, {"intra_op_thread_count": "2"}, 2),
        (None, {"graph_optimization_level": "extended"}, {}, 1),
        (3, {"graph_optimization_level": "all"}, {"intra_op_thread_count": "3"}, 0),
    ],
)
def test_a_native_onnxruntime_model_gets_the_tuned_session_options_as_its_triton_backend_reads_them(ort, threads, tuned, parameters, level):
    module, _, _ = ort
    entry = module.to_dict()["graphs"][0]
    artifact = Path(entry["backend"]["artifacts"]["model"])
    target = get_backend_class("onnxruntime").triton_native
    io = ModelIO.from_graph(f"{ORT_MODULE}.graph_0", entry["graph"], entry["backend"])

    config = native_model_config(io, target, target.signature(artifact, entry["graph"]), TritonModelOptions(intra_op_threads=threads),
                                 "cpu", False, artifact, tuned)

    assert {k: v.string_value for k, v in config.parameters.items()} == parameters
    assert config.optimization.graph.level == level  # 0: unset, ONNX Runtime's default (all)
    assert not config.optimization.HasField("cuda")  # TensorRT options stay out of other platforms


def test_a_native_aoti_model_gets_its_threads_as_the_pytorch_backend_reads_them(aoti):
    _, result = aoti
    config = _config(result, f"{AOTI_MODULE}.graph_0")

    assert {k: v.string_value for k, v in config.parameters.items()} == {"INTRA_OP_THREAD_COUNT": "1"}
