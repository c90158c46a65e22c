"""Step declarations (StepTensor, Step, @step, resolve_step) and the served step runtime's checks."""

from __future__ import annotations

import numpy as np
import pytest
import text_steps

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.served.step_runtime import StepOutputError, StepRequestError, StepRuntime, load_step_function
from aitune_triton.triton.steps import Step, StepTensor, resolve_step, step


def test_a_step_tensor_keeps_its_declaration_and_rejects_unknown_dtypes_and_bad_dims():
    tensor = StepTensor("text", "TYPE_STRING", [-1])
    assert (tensor.name, tensor.data_type, tensor.dims) == ("text", "TYPE_STRING", (-1,))
    assert tensor.to_dict() == {"name": "text", "data_type": "TYPE_STRING", "dims": [-1]}
    with pytest.raises(InvalidArgumentError, match=r"'x' data_type: expected one of .*TYPE_STRING.*got 'TYPE_BYTES'"):
        StepTensor("x", "TYPE_BYTES", [1])
    with pytest.raises(InvalidArgumentError, match=r"dims: expected integers >= -1 .*got \[2, -3\]"):
        StepTensor("x", "TYPE_FP32", [2, -3])
    with pytest.raises(InvalidArgumentError, match=r"dims: expected integers"):
        StepTensor("x", "TYPE_FP32", [2.0])
    with pytest.raises(InvalidArgumentError, match=r"at least one dim"):
        StepTensor("x", "TYPE_FP32", [])
    with pytest.raises(InvalidArgumentError, match=r"StepTensor name"):
        StepTensor("a/b", "TYPE_FP32", [1])


def test_a_step_refuses_repeated_names_non_identifier_inputs_and_a_function_that_cannot_take_its_inputs():
    def double(x):
        return {"y": x * 2}

    declared = Step(double, [("x", "TYPE_FP32", [-1])], [StepTensor("y", "TYPE_FP32", [-1])])
    assert declared.name == "double" and declared(x=np.ones(2))["y"].tolist() == [2.0, 2.0]
    with pytest.raises(InvalidArgumentError, match=r"tensor names \['x'\] appear more than once"):
        Step(double, [("x", "TYPE_FP32", [-1])], [("x", "TYPE_FP32", [-1])])
    with pytest.raises(InvalidArgumentError, match=r"input name 'x.0' is not a Python identifier"):
        Step(lambda **k: k, [("x.0", "TYPE_FP32", [-1])], [("y", "TYPE_FP32", [-1])])
    with pytest.raises(InvalidArgumentError, match=r"cannot be called with the inputs \['z'\] as keywords"):
        Step(double, [("z", "TYPE_FP32", [-1])], [("y", "TYPE_FP32", [-1])])
    with pytest.raises(InvalidArgumentError, match=r"outputs: expected at least one StepTensor"):
        Step(double, [("x", "TYPE_FP32", [-1])], [])
    with pytest.raises(InvalidArgumentError, match=r"expected a StepTensor or a \(name, data_type, dims\) tuple"):
        Step(double, [("x", "TYPE_FP32")], [("y", "TYPE_FP32", [-1])])
    with pytest.raises(InvalidArgumentError, match=r"Step function: expected a function"):
        Step("double", [("x", "TYPE_FP32", [-1])], [("y", "TYPE_FP32", [-1])])  # type: ignore[arg-type]
    # A nested function cannot be imported by the server: refused when its source is asked for (at export).
    with pytest.raises(InvalidArgumentError, match=r"must be defined at module level"):
        declared.source_file()


def test_the_decorator_gives_a_step_that_knows_its_module_file_and_reference():
    assert isinstance(text_steps.featurize, Step)
    assert text_steps.featurize.reference == "text_steps:featurize"
    assert text_steps.featurize.source_file().name == "text_steps.py"
    assert [t.name for t in text_steps.featurize.outputs] == ["x", "length"]
    renamed = step(inputs=[("a", "TYPE_INT64", [1])], outputs=[("b", "TYPE_INT64", [1])], name="my_step")(lambda a: {"b": a})
    assert renamed.name == "my_step"


def test_resolve_step_finds_module_function_and_names_what_is_wrong():
    assert resolve_step("text_steps:classify") is text_steps.classify
    with pytest.raises(InvalidArgumentError, match=r"preprocess: expected 'module:function'"):
        resolve_step("text_steps.classify", "preprocess")
    with pytest.raises(InvalidArgumentError, match=r"cannot import module 'no_such_steps_module'"):
        resolve_step("no_such_steps_module:f")
    with pytest.raises(InvalidArgumentError, match=r"module 'text_steps' .* has no 'missing'"):
        resolve_step("text_steps:missing")
    with pytest.raises(InvalidArgumentError, match=r"text_steps:LABELS is a tuple, not a step; declare it with"):
        resolve_step("text_steps:LABELS")


def runtime(declared: Step) -> StepRuntime:
    return StepRuntime(declared.to_dict(), declared.function)


def test_the_runtime_decodes_bytes_inputs_to_str_and_encodes_string_outputs():
    featurize = runtime(text_steps.featurize)
    prepared = featurize.prepare({"text": np.array([b"ab", "h\u00e9".encode()], dtype=object)})
    assert prepared["text"].dtype == object and list(prepared["text"]) == ["ab", "h\u00e9"]
    outputs = featurize.call(prepared)
    assert outputs["x"].dtype == np.float32 and outputs["x"].shape == (2, 8)
    assert outputs["length"].tolist() == [2, 3]
    classify = runtime(text_steps.classify)
    result = classify.call({"logits": np.array([[0, 1, 3]], dtype=np.float32), "length": np.array([4])})
    assert result["label"].tolist() == [b"long"] and result["label"].dtype == object


def test_the_runtime_refuses_bad_requests_and_undeclared_outputs_with_clear_messages():
    featurize = runtime(text_steps.featurize)
    with pytest.raises(StepRequestError, match=r"input 'text' is missing"):
        featurize.prepare({})
    with pytest.raises(StepRequestError, match=r"input 'text' has rank 2 .*declared rank 1"):
        featurize.prepare({"text": np.array([[b"a"]], dtype=object)})
    with pytest.raises(StepRequestError, match=r"item \[0\] is not valid UTF-8"):
        featurize.prepare({"text": np.array([b"\xff\xfe"], dtype=object)})
    with pytest.raises(StepOutputError, match=r"output 'probs' has dtype float64, declared TYPE_FP32"):
        runtime(text_steps.wrong_dtype).call({"logits": np.zeros((1, 3), dtype=np.float32)})
    with pytest.raises(StepOutputError, match=r"output 'probs' has size 2 on axis 1 .*declared 3"):
        runtime(text_steps.wrong_dtype).check({"probs": np.zeros((1, 2), dtype=np.float32)})
    with pytest.raises(StepOutputError, match=r"returned no output 'length'"):
        featurize.check({"x": np.zeros((1, 8), dtype=np.float32)})
    with pytest.raises(StepOutputError, match=r"returned a list; expected a dict"):
        featurize.check([1])
    with pytest.raises(StepOutputError, match=r"output 'label' item \[0\] is a int"):
        runtime(text_steps.classify).check({"probs": np.zeros((1, 3), np.float32), "label": np.array([1], dtype=object),
                                            "score": np.zeros(1)})


def test_the_served_loader_imports_the_copied_module_file_and_unwraps_the_step(tmp_path):
    (tmp_path / "step_module.py").write_text(text_steps.featurize.source_file().read_text())
    function = load_step_function(str(tmp_path), "step_module.py", "text_steps", "featurize")
    assert function.__name__ == "featurize" and callable(function)
    assert function(text=np.array(["a"], dtype=object))["length"].tolist() == [1]
