"""Output structures: every output leaf is computed for the call, containers are flattened and rebuilt."""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import textwrap
import typing
import warnings
from pathlib import Path

import pytest
import torch
from output_nets import DataclassNet, Encoded, cache_tensors, record_gpt2, tiny_gpt2

import aitune_triton
from aitune_triton import Module, OneBackendStrategy
from aitune_triton.errors import RecordingError, TuningError, UnknownOutputTypeError
from aitune_triton.spec import flatten_output, holds_tensor, rebuild_output, treespec_from_json, treespec_to_json
from aitune_triton.strategies.validation import compare_outputs
from nets import eager

TESTS = Path(__file__).resolve().parents[1]


def _run_fresh(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a new interpreter (nothing imported yet) with tests/ importable."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=300, env=env
    )


def _assert_close_to_eager(output, expected) -> None:
    assert torch.allclose(output["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
    tuned, eager = cache_tensors(output), cache_tensors(expected)
    assert [t.shape for t in tuned] == [t.shape for t in eager]
    for got, want in zip(tuned, eager):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tuned_gpt2(tmp_path_factory):
    """A tiny GPT-2 with its default use_cache=True, recorded and tuned with ONNX Runtime; and a directory."""
    root = tmp_path_factory.mktemp("gpt2")
    net = tiny_gpt2()
    module = Module(net, name="outputs_unit_gpt2", strategy=OneBackendStrategy("onnxruntime"), cache_dir=root / "cache")
    record_gpt2(module)
    module.tune()
    return net, module, root


def test_tuned_gpt2_returns_the_cache_of_this_call_not_a_recorded_one(tuned_gpt2):
    net, module, _ = tuned_gpt2
    ids = torch.randint(0, 100, (2, 5))  # a sequence length never recorded

    with torch.no_grad():
        output, expected = module(ids), eager(net)(ids)

    assert type(output) is type(expected)
    assert type(output["cache"]) is type(expected["cache"])
    assert cache_tensors(output)[0].shape == (2, 2, 5, 16)
    _assert_close_to_eager(output, expected)


def test_the_cache_a_tuned_gpt2_returns_continues_decoding_like_the_eager_cache(tuned_gpt2):
    net, module, _ = tuned_gpt2
    ids, next_ids = torch.randint(0, 100, (2, 5)), torch.randint(0, 100, (2, 1))

    with torch.no_grad():
        tuned_step = eager(net)(next_ids, cache=module(ids)["cache"])
        eager_step = eager(net)(next_ids, cache=eager(net)(ids)["cache"])

    assert tuned_step["cache"].get_seq_length() == eager_step["cache"].get_seq_length() == 6
    assert torch.allclose(tuned_step["logits"], eager_step["logits"], atol=1e-4, rtol=1e-4)


def test_holds_tensor_looks_into_containers_and_attributes_at_any_depth():
    def nested(leaf, depth: int = 5000) -> list:  # deeper than the recursion limit
        tree = [leaf]
        for _ in range(depth):
            tree = [tree]
        return tree

    cyclic: dict = {"text": "x"}
    cyclic["self"] = cyclic

    assert holds_tensor(_Box([{"a": (1, torch.ones(1))}])) and holds_tensor(nested(torch.ones(1)))
    assert not holds_tensor(nested("text")) and not holds_tensor(cyclic) and not holds_tensor(_Box(torch.float32))


def test_gpt2_cache_tensors_are_output_leaves_with_stable_paths(tuned_gpt2):
    _, module, _ = tuned_gpt2
    (graph,) = module.graph_specs

    assert [spec.path for spec in graph.outputs] == ["logits", "cache.0", "cache.1", "cache.2", "cache.3"]
    assert graph.output_paths == ["logits", "cache.0", "cache.1", "cache.2", "cache.3"]
    assert graph.output_template == [None] * 5


def test_gpt2_checkpoint_loads_in_a_fresh_process_where_the_cache_type_was_never_registered(tuned_gpt2):
    _, module, root = tuned_gpt2
    checkpoint = aitune_triton.save(module, root / "checkpoint", overwrite=True)
    result = _run_fresh(
        """
        import sys, torch
        import torch.utils._pytree as pytree
        from transformers.cache_utils import DynamicCache
        import aitune_triton
        from output_nets import cache_tensors, tiny_gpt2

        assert DynamicCache not in pytree.SUPPORTED_NODES  # only recording registers it
        net = tiny_gpt2()
        module = aitune_triton.load(net, sys.argv[1])
        ids = torch.randint(0, 100, (3, 7))
        with torch.no_grad():
            output, expected = module(ids), net(ids)
        assert isinstance(output["cache"], DynamicCache), type(output["cache"])
        assert torch.allclose(output["logits"], expected["logits"], atol=1e-4, rtol=1e-4)
        for got, want in zip(cache_tensors(output), cache_tensors(expected)):
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        print("ok")
        """,
        str(checkpoint),
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_a_stored_model_output_structure_is_rebuilt_in_a_process_that_never_imported_transformers(tuned_gpt2):
    _, module, _ = tuned_gpt2
    stored = treespec_to_json(module.graph_specs[0].output_treespec)
    result = _run_fresh(
        """
        import sys, torch
        from aitune_triton.spec import rebuild_output, treespec_from_json

        assert "transformers" not in sys.modules
        treespec = treespec_from_json(sys.argv[1])
        output = rebuild_output(treespec, [None] * 5, [torch.full((1, 2, 3, 16), float(i)) for i in range(5)])
        print(type(output).__name__, type(output["cache"]).__name__, float(output["cache"].layers[1].values[0, 0, 0, 0]))
        """,
        stored,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["CausalLMOutputWithCrossAttentions", "DynamicCache", "4.0"]


def test_a_dataclass_output_is_rebuilt_around_the_tensors_of_this_call(unique_name):
    torch.manual_seed(0)
    net = DataclassNet().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with torch.no_grad():
        for batch in (1, 3, 5):
            module(torch.randn(batch, 4))
    module.tune()
    x = torch.randn(4, 4)

    with torch.no_grad():
        output, expected = module(x), eager(net)(x)

    assert isinstance(output, Encoded) and output.kind == "encoded"
    assert [spec.path for spec in module.graph_specs[0].outputs] == ["hidden", "pooled"]
    assert torch.allclose(output.hidden, expected.hidden, atol=1e-5) and torch.allclose(output.pooled, expected.pooled, atol=1e-5)


def test_a_dataclass_output_structure_is_rebuilt_in_a_fresh_process_by_importing_its_module():
    flat = flatten_output(DataclassNet()(torch.ones(2, 4)))
    assert flat.template == [None, None, "encoded"]  # the str field is a constant leaf
    result = _run_fresh(
        """
        import sys, torch
        from aitune_triton.spec import rebuild_output, treespec_from_json

        assert "output_nets" not in sys.modules
        output = rebuild_output(treespec_from_json(sys.argv[1]), [None, None, "encoded"], [torch.ones(1), torch.zeros(1)])
        print(type(output).__module__, type(output).__name__, output.kind)
        """,
        treespec_to_json(flat.treespec),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["output_nets", "Encoded", "encoded"]


class _Box:
    """An object that is no pytree node, holding a tensor."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class BoxNet(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return {"y": x * 2, "extras": [_Box(x + 1)]}


def test_an_output_object_holding_tensors_is_refused_at_tune_time_naming_its_leaf_and_type(unique_name):
    module = Module(BoxNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with pytest.warns(UserWarning, match=r"output leaf 'extras.0' is a .*_Box that holds tensors"):
        module(torch.ones(2, 3))
    module(torch.ones(4, 3))

    with pytest.raises(RecordingError, match=r"output leaf 'extras.0' is a test_outputs\._Box that holds tensors") as info:
        module.tune()
    assert "register_dataclass" in str(info.value) and "use_cache=False" in str(info.value)


def test_a_non_tensor_output_that_changes_between_calls_is_refused_naming_the_leaf(unique_name):
    class CountingNet(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return {"y": x + 1, "rows": int(x.shape[0])}

    module = Module(CountingNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    module(torch.ones(2, 3))
    with pytest.warns(UserWarning, match=r"output leaf 'rows' was 2 \(int\) in an earlier call and 4 \(int\) in this one"):
        module(torch.ones(4, 3))

    with pytest.raises(RecordingError, match=r"returned different non-tensor outputs: output leaf 'rows' was 2 \(int\)"):
        module.tune()


def test_an_equal_non_tensor_output_is_a_constant_of_the_tuned_module(unique_name):
    class TaggedNet(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return {"y": x + 1, "tag": "v1", "sizes": [3, 4]}

    module = Module(TaggedNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    for batch in (1, 2, 3):
        module(torch.ones(batch, 3))
    module.tune()

    output = module(torch.full((2, 3), 5.0))
    assert output["tag"] == "v1" and output["sizes"] == [3, 4] and torch.equal(output["y"], torch.full((2, 3), 6.0))


_FLAG = {"tag": "v1"}


class FlagNet(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return {"y": x + 1, "tag": _FLAG["tag"]}


def test_tuning_checks_non_tensor_outputs_against_eager_on_every_sample(unique_name):
    module = Module(FlagNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    for batch in (1, 2):
        module(torch.ones(batch, 3))
    _FLAG["tag"] = "v2"  # eager now answers otherwise than the recorded constant
    try:
        with pytest.raises(TuningError, match=r"sample 0: tag: str 'v1' != eager str 'v2'"):
            module.tune()
    finally:
        _FLAG["tag"] = "v1"


def test_compare_outputs_compares_non_tensor_leaves_by_type_and_value():
    same, worst = compare_outputs([torch.ones(1), "a", 3], [torch.ones(1), "a", 3], ["t", "s", "n"], 1e-4, 1e-4)
    differ, worst_differ = compare_outputs(["a", 3, 1.0], ["b", 3.0, torch.ones(1)], ["s", "n", "x"], 1e-4, 1e-4)

    assert same == [] and worst == 0.0
    assert differ == [
        "s: str 'b' != eager str 'a'",
        "n: float 3.0 != eager int 3",
        "x: tensor(float32, shape=(1,)) != eager float 1.0",
    ]
    assert worst_differ == float("inf")


def test_treespec_from_json_names_a_type_that_no_importable_module_defines():
    stored = json.dumps(
        [1, {"type": "no_such_package.outputs.Thing", "context": "null", "children_spec": []}]
    )

    with pytest.raises(UnknownOutputTypeError, match=r"\['no_such_package.outputs.Thing'\]") as info:
        treespec_from_json(stored)
    assert isinstance(info.value, RecordingError)


def test_rebuild_output_of_a_cache_structure_uses_the_new_tensors():
    net = tiny_gpt2()
    with torch.no_grad():
        flat = flatten_output(net(torch.randint(0, 100, (1, 3))))
    new = [torch.full_like(t, float(i)) for i, t in enumerate(flat.tensors)]

    rebuilt = rebuild_output(flat.treespec, flat.template, new)

    assert [float(t.flatten()[0]) for t in cache_tensors(rebuilt)] == [1.0, 2.0, 3.0, 4.0]


def test_a_numpy_array_output_is_refused_since_no_backend_computes_it(unique_name):
    class ArrayNet(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return x + 1, x.numpy().copy()

    module = Module(ArrayNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with pytest.warns(UserWarning, match="output leaf 'output.1' is a numpy array"):
        module(torch.ones(2, 3))

    with pytest.raises(RecordingError, match="output leaf 'output.1' is a numpy array, which no backend computes"):
        module.tune()


def test_changing_a_returned_constant_does_not_change_later_outputs(unique_name):
    class ListNet(torch.nn.Module):
        def forward(self, x: torch.Tensor):
            return {"y": x * 3, "labels": ["a", "b"]}

    module = Module(ListNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    for batch in (1, 2):
        module(torch.ones(batch, 3))
    module.tune()

    module(torch.ones(1, 3))["labels"].append("mutated")
    assert module(torch.ones(1, 3))["labels"] == ["a", "b"]


class Pair(typing.NamedTuple):
    y: torch.Tensor
    count: int


class PairNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        return Pair(self.linear(x), 7)


def test_a_namedtuple_output_tunes_saves_and_loads_as_the_same_namedtuple(unique_name, tmp_path):
    net = PairNet().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with torch.no_grad():
        for batch in (1, 2, 3):
            module(torch.randn(batch, 4))
    module.tune()
    aitune_triton.save(module, tmp_path / "checkpoint")

    reloaded = Module(PairNet().eval(), name=unique_name + "_reloaded")
    aitune_triton.load(reloaded, tmp_path / "checkpoint")
    x = torch.randn(2, 4)
    for output in (module(x), reloaded(x)):
        assert type(output) is Pair and output.count == 7
        torch.testing.assert_close(output.y, eager(net)(x).y, atol=1e-5, rtol=1e-5)


class Kind(enum.Enum):
    PLAIN = 1


class EnumNet(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return {"y": x * 2, "kind": Kind.PLAIN}


def test_an_output_leaf_a_checkpoint_cannot_store_is_refused_at_tune_time_not_at_save(unique_name):
    module = Module(EnumNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with pytest.warns(UserWarning, match="tune\\(\\) will refuse"):
        module(torch.randn(2, 4))
    module(torch.randn(3, 4))
    with pytest.raises(RecordingError, match="output leaf 'kind' is a .*Kind, which a checkpoint cannot store"):
        module.tune()


def test_a_dataclass_defined_in_the_running_script_is_rebuilt_from_a_checkpoint_that_script_saved(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import dataclasses, sys, torch, aitune_triton

            @dataclasses.dataclass
            class Out:
                y: torch.Tensor

            class Net(torch.nn.Module):
                def forward(self, x):
                    return Out(x * 2)

            module = aitune_triton.Module(Net(), name="script_net", strategy=aitune_triton.OneBackendStrategy("onnxruntime"))
            if sys.argv[1] == "save":
                module(torch.ones(2, 3)); module(torch.ones(3, 3))
                module.tune()
                aitune_triton.save(module, sys.argv[2])
            else:
                aitune_triton.load(module, sys.argv[2])
                output = module(torch.ones(2, 3))
                print(type(output).__qualname__, float(output.y.sum()))
            """
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for step in ("save", "load"):
        result = subprocess.run(
            [sys.executable, str(script), step, str(tmp_path / "checkpoint")], capture_output=True, text=True, timeout=300, env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["Out", "12.0"]


def test_a_type_name_a_server_sends_never_imports_a_file_from_the_current_directory(tmp_path):
    (tmp_path / "setup.py").write_text("open('imported', 'w').write('yes')\nclass Out:\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-c", "from aitune_triton.spec import import_serialized_type; print(import_serialized_type('setup.Out'))"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "None"
    assert not (tmp_path / "imported").exists()


def test_recording_a_call_that_returns_the_cache_it_was_given_warns_to_use_the_returned_value(unique_name):
    model = tiny_gpt2()
    module = Module(model, name=unique_name)
    with torch.no_grad():
        first = eager(model)(torch.randint(0, 100, (1, 4)))
        cache = first["past_key_values"] if "past_key_values" in first else first["cache"]
        with pytest.warns(UserWarning, match="returns the DynamicCache object it was given as an argument") as caught:
            module(torch.randint(0, 100, (1, 1)), past_key_values=cache)
            module(torch.randint(0, 100, (1, 1)), past_key_values=cache)  # the same structure: no second warning
    assert sum("returns the DynamicCache object" in str(warning.message) for warning in caught) == 1


def test_the_returned_cache_warning_is_said_once_per_module_across_input_structures_and_names_what_to_do(unique_name):
    model = tiny_gpt2()
    module = Module(model, name=unique_name)
    with torch.no_grad():
        first = eager(model)(torch.randint(0, 100, (1, 4)))
        cache = first["past_key_values"] if "past_key_values" in first else first["cache"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module(torch.randint(0, 100, (1, 1)), past_key_values=cache)
            mask = torch.ones(1, cache.get_seq_length() + 1, dtype=torch.long)
            module(torch.randint(0, 100, (1, 1)), past_key_values=cache, attention_mask=mask)  # another graph spec
    assert len(module.graph_specs) == 2
    said = [str(w.message) for w in caught if "object it was given" in str(w.message)]
    assert len(said) == 1 and "in your own loop, pass the returned value" in said[0]


def test_a_cache_passed_as_an_argument_is_flattened_into_tensor_inputs_not_baked_in_as_a_constant(unique_name):
    model = tiny_gpt2()
    module = Module(model, name=unique_name)
    with torch.no_grad():
        first = eager(model)(torch.randint(0, 100, (1, 4)))
        cache = first["past_key_values"] if "past_key_values" in first else first["cache"]
        module(torch.randint(0, 100, (1, 1)), past_key_values=cache)

    (spec,) = module.graph_specs
    assert [t.path for t in spec.inputs][0] == "input_ids"
    assert len(spec.inputs) == 1 + 4  # input_ids and each layer's keys and values
    assert not any("DynamicCache" in value for value in spec.constants.values())


class BoxArgNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, box: object):
        return x * box.tensor  # type: ignore[attr-defined]


def test_an_argument_object_holding_tensors_that_pytree_cannot_flatten_is_refused_at_tune_time(unique_name):
    module = Module(BoxArgNet().eval(), name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with pytest.warns(UserWarning, match="tune\\(\\) will refuse"):
        module(torch.ones(2, 3), _Box(torch.full((2, 3), 2.0)))
    with pytest.raises(RecordingError, match="input leaf 'box' is a .*_Box that holds tensors.*would keep this call's tensors"):
        module.tune()
