"""OpenVINO graph models in an export: Triton's ``openvino`` backend (``model.xml`` + ``model.bin``)
with target="native", and the weights beside ``model.xml`` in the Python-backend model.

The tritonserver embedded here ships only the Python backend, so the native configuration is
validated through the official protobuf schema and the copied IR is run with OpenVINO on inputs of
the configured shapes; no Triton OpenVINO backend loads it here.
"""

from __future__ import annotations

import json

import numpy as np
import openvino
import pytest
import torch
from google.protobuf import text_format
from nets import TwoInputNet, record_two_specs
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton import Module, OneBackendStrategy
from aitune_triton.backends import OpenVINOBackend
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.exporter import export

MODULE = "native_openvino_net"
TRITON_TO_NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """TwoInputNet tuned with OpenVINO for (x, y) and (x,), batch 1..5."""
    root = tmp_path_factory.mktemp("native_openvino")
    torch.manual_seed(0)
    module = Module(TwoInputNet().eval(), name=MODULE, cache_dir=root / "cache",
                    strategy=OneBackendStrategy(OpenVINOBackend(inference_num_threads=1), find_max_batch_size=False))
    record_two_specs(module)
    module.tune()
    yield module, root
    del module


def test_native_openvino_configs_parse_into_model_config_and_name_the_irs_tensors_and_parameters(tuned):
    module, root = tuned
    result = export(module, root / "native", target="native", show_progress=False)

    assert result.targets == {model: "native" for model in result.graph_models} and len(result.graph_models) == 2
    for model in result.graph_models:
        text = (result.repository / model / "config.pbtxt").read_text()
        config = text_format.Parse(text, mc.ModelConfig())
        assert text_format.MessageToString(config) == text
        assert (config.platform, config.backend, config.default_model_filename) == ("", "openvino", "model.xml")
        assert config.max_batch_size == 5 and config.HasField("dynamic_batching")
        assert {k: v.string_value for k, v in config.parameters.items()} == {
            "PERFORMANCE_HINT": "LATENCY", "SKIP_OV_DYNAMIC_BATCHSIZE": "YES", "INFERENCE_NUM_THREADS": "1",
        }
        version = result.repository / model / "1"
        assert sorted(p.name for p in version.iterdir()) == ["io.json", "manifest.json", "model.bin", "model.xml"]
        manifest = json.loads((version / "manifest.json").read_text())
        assert {"model.xml", "model.bin"} <= set(manifest["sha256"])
        ir = openvino.Core().read_model(str(version / "model.xml"))  # reads model.bin beside it
        assert [p.get_any_name() for p in ir.inputs] == [t.name for t in config.input]
        assert [p.get_any_name() for p in ir.outputs] == [t.name for t in config.output]


def test_the_copied_ir_takes_and_returns_what_its_config_declares(tuned):
    module, root = tuned
    result = export(module, root / "native_run", target="native", show_progress=False)

    for model in result.graph_models:
        config = read_model_config(result.repository / model / "config.pbtxt")
        compiled = openvino.Core().compile_model(str(result.repository / model / "1" / "model.xml"), "CPU")
        inputs = {t.name: np.ones((3, *t.dims), TRITON_TO_NUMPY[mc.DataType.Name(t.data_type)]) for t in config.input}
        outputs = compiled(inputs)
        for declared in config.output:
            shape = declared.reshape.shape if declared.HasField("reshape") else declared.dims
            assert outputs[declared.name].shape == (3, *shape)
            assert outputs[declared.name].dtype == TRITON_TO_NUMPY[mc.DataType.Name(declared.data_type)]


def test_a_python_backend_model_gets_the_weights_beside_the_ir(tuned):
    module, root = tuned
    result = export(module, root / "python", show_progress=False)

    for model in result.graph_models:
        files = sorted(p.name for p in (result.repository / model / "1").iterdir() if p.is_file())
        assert {"model.xml", "model.bin", "model.py", "io.json"} <= set(files)
