"""The input contract: index value ranges read from real exported programs, and the one check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import aitune_triton
from aitune_triton import Module, OneBackendStrategy
from aitune_triton.backends.flat import index_ranges, input_axes
from aitune_triton.contract import IndexRange, InputContract
from aitune_triton.errors import AITuneTritonError, IndexOutOfRangeError
from nets import eager

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
DYNAMIC = torch.export.Dim.DYNAMIC


class Lookups(torch.nn.Module):
    """Every kind of index the contract reads, each reached through value-preserving ops."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.words = torch.nn.Embedding(30, 4)
        self.table = torch.nn.Parameter(torch.randn(10, 4))

    def forward(self, ids, rows, features, shifted):
        words = self.words(ids.view(-1).unsqueeze(0).to(torch.int32).clone())
        sliced = self.words(shifted[:, 1:])  # part of an input: it may hold data elsewhere, not followed
        picked = self.table[rows]  # advanced indexing: negative rows count from the end
        selected = torch.index_select(self.table, 0, rows.reshape(-1))
        gathered = features.gather(1, rows)  # indexes features' own (dynamic) axis 1
        ignored = self.words(shifted + 1)  # arithmetic: not followed
        return words, picked, selected, gathered, ignored, sliced


def _export_lookups() -> torch.export.ExportedProgram:
    dynamic = {0: DYNAMIC, 1: DYNAMIC}
    example = (torch.randint(0, 30, (2, 5)), torch.randint(0, 3, (2, 5)), torch.randn(2, 5), torch.randint(0, 29, (2, 5)))
    return torch.export.export(Lookups(), example, dynamic_shapes=(dynamic, dynamic, dynamic, dynamic), strict=False)


def test_index_ranges_are_read_from_the_exported_program_through_value_preserving_ops():
    exported = _export_lookups()

    ids, rows, features, shifted = index_ranges(exported)

    assert ids == [{"op": "aten.embedding", "size": 30, "negative": False}]
    feature_axis = input_axes(exported)[2][1]
    assert sorted(rows, key=lambda r: r["op"]) == [
        {"op": "aten.gather", "size": feature_axis, "negative": False},
        {"op": "aten.index", "size": 10, "negative": True},
        {"op": "aten.index_select", "size": 10, "negative": False},
    ]
    assert features == []  # a float input indexes nothing
    assert shifted == []  # reaches the embedding only through arithmetic or a slice


def _contract() -> InputContract:
    return InputContract(
        names=["ids", "rows", "features"],
        ranges=[[(1, 4), (1, 8)], [(1, 4), (1, 8)], [(1, 4), (1, 8)]],
        axes=[["s0", "s1"], ["s0", "s1"], ["s0", "s2"]],
        index_ranges=[
            [IndexRange("aten.embedding", 30)],
            [IndexRange("aten.index", 10, negative=True), IndexRange("aten.gather", "s2")],
            [],
        ],
    )


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_the_contract_names_the_input_the_valid_range_and_the_offending_values(kind):
    ids = np.array([[3, 1_000_000, 4], [-5, 2, 1_000_000]])
    rows = np.zeros((2, 3), dtype=np.int64)
    features = np.zeros((2, 4), dtype=np.float32)
    arrays = [ids, rows, features] if kind == "numpy" else [torch.from_numpy(a) for a in (ids, rows, features)]

    found = _contract().violations(arrays)

    assert found == [
        "ids: values must be in 0..29 (it indexes a dimension of size 30 in aten.embedding), got -5, 1000000 "
        "(3 values out of range in all)"
    ]


def test_a_gather_index_is_checked_against_the_size_of_the_input_axis_it_indexes():
    contract = _contract()
    ids = np.zeros((2, 3), dtype=np.int64)

    inside = contract.violations([ids, np.full((2, 3), 4), np.zeros((2, 5), dtype=np.float32)])
    outside = contract.violations([ids, np.full((2, 3), 4), np.zeros((2, 4), dtype=np.float32)])

    assert inside == []
    assert outside == [
        "rows: values must be in 0..3 (it indexes a dimension of size 4 in aten.gather), got 4 (6 values out of range in all)"
    ]


def test_negative_values_are_valid_only_where_the_indexing_op_counts_them_from_the_end():
    contract = InputContract(names=["rows"], index_ranges=[[IndexRange("aten.index", 10, negative=True)]])

    assert contract.value_violations([np.array([-10, 9])]) == []
    assert contract.value_violations([np.array([-11])]) == [
        "rows: values must be in -10..9 (it indexes a dimension of size 10 in aten.index), got -11"
    ]


def test_shapes_are_reported_before_values_and_an_empty_input_has_no_bad_value():
    contract = _contract()

    assert contract.violations([np.full((2, 9), 99), np.zeros((2, 9)), np.zeros((2, 9))])[0] == "ids axis 1: size 9 outside 1..8"
    assert contract.value_violations([np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3)), np.zeros((0, 3))]) == []


def test_the_contract_module_runs_with_the_standard_library_only_as_model_py_loads_it(tmp_path):
    # model.py loads the copy beside it by path; the served environment may lack aitune_triton,
    # torch and numpy. -I -S: no site-packages, no PYTHONPATH.
    copied = tmp_path / "aitune_triton_contract.py"
    copied.write_text((REPOSITORY_ROOT / "aitune_triton" / "served" / "contract.py").read_text())
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("aitune_triton_contract", {str(copied)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        io = {{"inputs": [{{"name": "ids", "path": "ids", "ranges": [[1, 4]]}}], "input_axes": [["s0"]],
              "index_ranges": [[{{"op": "aten.embedding", "size": 30}}]]}}
        contract = module.InputContract.from_io(io)
        print(contract.shape_violations([(5,)]))
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("numpy", "torch", "aitune_triton")))
        """
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['ids axis 0: size 5 outside 1..4']", "[]"]


class Tokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.words = torch.nn.Embedding(30, 4)
        self.types = torch.nn.Embedding(2, 4)

    def forward(self, input_ids, token_type_ids):
        return self.words(input_ids) + self.types(token_type_ids)


@pytest.fixture
def tuned_tokens(unique_name):
    net = Tokens().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with torch.no_grad():
        for batch, length in ((1, 3), (4, 9)):
            module(torch.randint(0, 30, (batch, length)), torch.randint(0, 2, (batch, length)))
    module.tune()
    return net, module


def test_a_negative_token_id_is_refused_by_a_tuned_onnxruntime_module_as_eager_refuses_it(tuned_tokens):
    # ONNX Runtime's Gather accepts -30..29 and would silently return row 25 for -5.
    net, module = tuned_tokens
    ids, types = torch.tensor([[1, -5, 2]]), torch.zeros(1, 3, dtype=torch.long)

    with pytest.raises(IndexError):
        eager(net)(ids, types)
    with pytest.raises(IndexOutOfRangeError, match=r"input_ids: values must be in 0\.\.29 .*aten\.embedding\), got -5") as raised:
        module(ids, types)

    assert isinstance(raised.value, IndexError) and isinstance(raised.value, AITuneTritonError)
    good = torch.tensor([[1, 29, 0]])
    torch.testing.assert_close(module(good, types), eager(net)(good, types), atol=1e-5, rtol=0)


def test_index_ranges_survive_save_and_load_and_are_written_into_io_json(tuned_tokens, tmp_path):
    _, module = tuned_tokens
    checkpoint = aitune_triton.save(module, tmp_path / "checkpoint")
    loaded = aitune_triton.load(Module(Tokens().eval(), name=f"{module.name}_loaded"), checkpoint)

    (described,) = loaded.to_dict()["graphs"]
    expected = [[{"op": "aten.embedding", "size": 30, "negative": False}], [{"op": "aten.embedding", "size": 2, "negative": False}]]
    assert described["backend"]["index_ranges"] == expected
    with pytest.raises(IndexOutOfRangeError, match=r"token_type_ids: values must be in 0\.\.1 .*got 7"):
        loaded(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 7, 1]]))
    aitune_triton.export(checkpoint, tmp_path / "repository", show_progress=False)
    io = json.loads((tmp_path / "repository" / module.name / "1" / "io.json").read_text())
    assert io["index_ranges"] == expected


_BERT_SCRIPT = """
import sys
import torch
import transformers
from aitune_triton import Module, OneBackendStrategy

config = transformers.BertConfig(
    vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
    type_vocab_size=2, max_position_embeddings=256,
)
torch.manual_seed(0)
bert = transformers.BertModel(config).eval()
module = Module(bert, name="bert_tokens", strategy=OneBackendStrategy("aoti"))
with torch.no_grad():
    for batch, length in ((1, 8), (8, 128)):
        module(input_ids=torch.randint(0, 100, (batch, length)), token_type_ids=torch.randint(0, 2, (batch, length)))
module.tune()
types = torch.zeros(8, 128, dtype=torch.long)
for label, bad_ids, bad_value in (("ids", 10**6, 0), ("negative", -5, 0), ("types", 7, 7)):
    ids = torch.randint(0, 100, (8, 128))
    ids[5, 100] = bad_ids if label != "types" else 3
    token_types = types.clone()
    token_types[6, 17] = bad_value
    try:
        module(input_ids=ids, token_type_ids=token_types)
        print(label, "no error")
    except IndexError as error:
        print(label, type(error).__name__, error)
    sys.stdout.flush()
ids = torch.randint(0, 100, (8, 128))
with torch.no_grad():
    difference = (module(input_ids=ids, token_type_ids=types).last_hidden_state - bert(input_ids=ids, token_type_ids=types).last_hidden_state).abs().max()
print("good call max abs difference", float(difference))
"""


def test_out_of_range_token_ids_raise_index_error_from_a_tuned_aoti_bert_instead_of_aborting(tmp_path):
    # AOTInductor's bounds check fires inside an OpenMP region and aborts the process (SIGABRT):
    # only a subprocess can see that as a failure.
    environment = {**os.environ, "AITUNE_TRITON_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _BERT_SCRIPT], capture_output=True, text=True, timeout=900, env=environment, cwd=tmp_path
    )

    assert result.returncode == 0, f"exit code {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    prefix = "IndexOutOfRangeError Module 'bert_tokens' graph_0:"
    assert lines[0] == f"ids {prefix} input_ids: values must be in 0..99 (it indexes a dimension of size 100 in aten.embedding), got 1000000. Pass indices inside that range (token ids: ids of this model's own vocabulary), as eager PyTorch would also refuse these."
    assert lines[1] == f"negative {prefix} input_ids: values must be in 0..99 (it indexes a dimension of size 100 in aten.embedding), got -5. Pass indices inside that range (token ids: ids of this model's own vocabulary), as eager PyTorch would also refuse these."
    assert lines[2] == f"types {prefix} token_type_ids: values must be in 0..1 (it indexes a dimension of size 2 in aten.embedding), got 7. Pass indices inside that range (token ids: ids of this model's own vocabulary), as eager PyTorch would also refuse these."
    assert lines[3].startswith("good call max abs difference") and float(lines[3].split()[-1]) < 1e-4


class PackedFeatures(torch.nn.Module):
    """Column 0 is a category id (an index), column 1 an age (data): one integer input, two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.category = torch.nn.Embedding(10, 4)
        self.age = torch.nn.Linear(1, 4)

    def forward(self, x: torch.Tensor):
        return self.category(x[:, 0]) + self.age(x[:, 1:2].float())


class WrappingIds(torch.nn.Module):
    """Casts ids to int8 before the lookup: eager accepts 300 (it wraps to 44)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(128, 4)

    def forward(self, ids: torch.Tensor):
        return self.table(ids.to(torch.int8).to(torch.int64))


def test_an_integer_input_used_partly_as_index_and_partly_as_data_is_not_refused(unique_name):
    net = PackedFeatures().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    recorded = torch.tensor([[1, 35], [2, 70], [3, 20]])
    with torch.no_grad():
        for batch in (2, 3):
            module(recorded[:batch])
    module.tune()

    for x in (recorded, torch.tensor([[9, 99], [0, 64]])):
        torch.testing.assert_close(module(x), eager(net)(x))


def test_ids_cast_to_a_narrower_integer_type_get_no_index_range_since_the_cast_wraps_them(unique_name):
    net = WrappingIds().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    with torch.no_grad():
        module(torch.tensor([[1, 20]]))
        module(torch.tensor([[5, 7], [2, 3]]))
    module.tune()

    assert module.tuned_graphs[0].backend.index_ranges == [[]]
    x = torch.tensor([[300, 4]])  # eager wraps 300 to 44, a valid row
    torch.testing.assert_close(module(x), eager(net)(x))


def test_an_index_range_that_a_recorded_call_breaks_is_turned_off_with_a_warning(unique_name, monkeypatch):
    from aitune_triton.backends import onnxruntime as onnxruntime_backend

    def too_strict(exported):  # stands for an analysis that over-approximates what the model indexes
        return [[{"op": "aten.embedding", "size": 2, "negative": False}] for _ in exported.graph_signature.user_inputs]

    monkeypatch.setattr(onnxruntime_backend, "index_ranges", too_strict)
    net = PackedFeatures().eval()
    module = Module(net, name=unique_name, strategy=OneBackendStrategy("onnxruntime"))
    recorded = torch.tensor([[1, 35], [2, 70], [3, 20]])
    with torch.no_grad():
        module(recorded[:2])
        module(recorded)

    with pytest.warns(UserWarning, match="values of input 'x' outside the index range .* the value check of that input is off"):
        module.tune()

    assert module.tuned_graphs[0].backend.index_ranges == [[]]
    torch.testing.assert_close(module(recorded), eager(net)(recorded))
