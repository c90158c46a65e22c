"""The generated step model.py, run against a small stand-in of triton_python_backend_utils: each
request gets its own answer (outputs, INVALID_ARG for a bad request, INTERNAL for a raising function)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import text_steps
from repo_helpers import tuned_two_spec_net

from aitune_triton.triton.exporter import export


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


class TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code=INTERNAL):
        self.message, self.code = message, code


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error


class Request:
    def __init__(self, **arrays):
        self.tensors = {name: Tensor(name, array) for name, array in arrays.items()}


@pytest.fixture(scope="module")
def step_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("step_model")
    repository = root / "repo"
    export(tuned_two_spec_net("step_model_net", root), repository, show_progress=False, preprocess=text_steps.featurize)
    stand_in = types.ModuleType("triton_python_backend_utils")
    stand_in.Tensor, stand_in.TritonError, stand_in.InferenceResponse = Tensor, TritonError, InferenceResponse
    stand_in.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    sys.modules["triton_python_backend_utils"] = stand_in
    try:
        model_dir = repository / "step_model_net.preprocess"
        spec = importlib.util.spec_from_file_location("generated_step_model", model_dir / "1" / "model.py")
        generated = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generated)
        model = generated.TritonPythonModel()
        model.initialize({"model_repository": str(model_dir), "model_version": "1", "model_name": model_dir.name,
                          "model_config": json.dumps({})})
        yield model, model_dir
    finally:
        sys.modules.pop("triton_python_backend_utils", None)


def test_each_request_gets_its_outputs_or_its_own_error(step_model):
    model, _ = step_model
    good, raising, not_utf8, missing = model.execute([
        Request(text=np.array([b"ab", b"cde"], dtype=object)),
        Request(text=np.array([b"fine", text_steps.BAD_SENTENCE.encode()], dtype=object)),
        Request(text=np.array([b"\xff"], dtype=object)),
        Request(),
    ])
    assert good.error is None and good.outputs["length"].tolist() == [2, 3] and good.outputs["x"].dtype == np.float32
    assert raising.error.code == "INTERNAL"
    assert raising.error.message == ("step_model_net.preprocess: text_steps:featurize raised ValueError: "
                                     "cannot featurize 'boom'")
    assert not_utf8.error.code == "INVALID_ARG" and "is not valid UTF-8" in not_utf8.error.message
    assert missing.error.code == "INVALID_ARG" and "input 'text' is missing" in missing.error.message


def test_a_modified_module_copy_fails_the_load(step_model, tmp_path):
    _, model_dir = step_model
    import shutil

    copied = tmp_path / model_dir.name
    shutil.copytree(model_dir, copied)
    (copied / "1" / "step_module.py").write_text("raise SystemExit('not the exported code')\n")
    spec = importlib.util.spec_from_file_location("generated_step_model_2", copied / "1" / "model.py")
    generated = importlib.util.module_from_spec(spec)
    sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
    try:
        spec.loader.exec_module(generated)
        with pytest.raises(RuntimeError, match=r"step_module.py: SHA-256 mismatch"):
            generated.TritonPythonModel().initialize({"model_repository": str(copied), "model_version": "1",
                                                      "model_name": copied.name})
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
