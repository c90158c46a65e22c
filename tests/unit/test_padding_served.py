"""aitune_triton.served.padding: the functions the served graph model and padded_calls() share.

Layouts here are written by hand in the form tuning writes them (ids + mask padded on axis 1,
per-token states cut back, a pooled vector not), so each function is checked on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import aitune_triton.served.padding as served_padding
from aitune_triton.served.padding import (
    PaddingLayout,
    cut_outputs,
    pad_request,
    pad_run,
    plan_runs,
    request_length,
    request_problem,
    run_padded,
)

LAYOUT = PaddingLayout(
    dim="seq",
    min_length=1,
    max_length=16,
    input_names=("input_ids", "attention_mask", "scale"),
    input_axes=(1, 1, None),
    pad_values=(7, 0, None),
    masks=(False, True, False),
    output_names=("states", "pooled"),
    output_axes=(1, None),
)


def _request(length, rows=1, start=1):
    ids = np.arange(start, start + rows * length, dtype=np.int64).reshape(rows, length)
    return [ids, np.ones((rows, length), dtype=np.int64), np.full((rows, 1), 0.5, dtype=np.float32)]


@pytest.mark.parametrize("file_name", ["padding.py", "padding_check.py"])
def test_the_served_file_imports_nothing_of_aitune_triton_outside_served(file_name):
    tree = ast.parse((Path(served_padding.__file__).parent / file_name).read_text())
    imported = [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [name for name in imported if name.startswith("aitune_triton") and not name.startswith("aitune_triton.served")] == []
    # The request check is its sibling module in the served package (a relative import).
    assert set(imported) <= {"__future__", "dataclasses", "typing", "numpy", "torch", "padding", "padding_check"}


def test_layout_round_trips_through_its_dict_and_refuses_malformed_dicts():
    assert PaddingLayout.from_dict(LAYOUT.to_dict()) == LAYOUT
    broken = LAYOUT.to_dict()
    broken["masks"] = [True]
    with pytest.raises(ValueError, match="equal lengths"):
        PaddingLayout.from_dict(broken)
    broken = LAYOUT.to_dict()
    broken["input_axes"] = [0, 1, None]
    with pytest.raises(ValueError, match="batch axis is 0"):
        PaddingLayout.from_dict(broken)
    with pytest.raises(ValueError, match="expected a dict with the keys"):
        PaddingLayout.from_dict({"dim": "seq"})


def test_a_good_request_has_no_problem_and_its_length_is_read_from_the_padded_axis():
    assert request_problem(LAYOUT, _request(5, rows=2)) is None
    assert request_length(LAYOUT, _request(5, rows=2)) == 5


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: [r[0], r[1][:, :4], r[2]], "input 'attention_mask' has length 4 on axis 1 (seq), but 'input_ids' has 5"),
        (lambda r: [r[0][:1], r[1], r[2]], "input 'attention_mask' has shape [2, 5], but 'input_ids' has 1 rows"),
        (lambda r: [r[0], r[1], r[2][:1]], "input 'scale' has shape [1, 1], but 'input_ids' has 2 rows"),
        (lambda r: [r[0][:, 0], r[1][:, 0], r[2]], "input 'input_ids' has rank 1, but it is padded along axis 1"),
        (lambda r: [r[0], r[1] * 2, r[2]], "input 'attention_mask' is a mask but holds values other than 0 and 1"),
        (lambda r: r[:2], "expected 3 inputs"),
    ],
)
def test_a_bad_request_gets_one_line_naming_the_input(change, message):
    problem = request_problem(LAYOUT, change(_request(5, rows=2)))
    assert problem is not None and message in problem


def test_a_request_length_out_of_range_is_named_with_the_range():
    too_long = _request(17)
    assert "input 'input_ids' has length 17 on axis 1 (seq), outside 1..16" in request_problem(LAYOUT, too_long)
    empty = _request(0)
    assert "outside 1..16" in request_problem(LAYOUT, empty)


def test_pad_positions_must_hold_the_pad_value_where_the_mask_is_0():
    ids, mask, scale = _request(5)
    mask[0, 3:] = 0
    assert "input 'input_ids' holds data at pad positions (where 'attention_mask' is 0); expected its pad value 7" in request_problem(
        LAYOUT, [ids, mask, scale]
    )
    ids[0, 3:] = 7  # a client that padded itself, with the pad value: accepted
    assert request_problem(LAYOUT, [ids, mask, scale]) is None


def test_torch_requests_are_checked_like_numpy_ones():
    ids, mask, scale = (torch.from_numpy(a) for a in _request(4))
    assert request_problem(LAYOUT, [ids, mask, scale]) is None
    mask = mask.clone()
    mask[0, 2:] = 0
    assert "holds data at pad positions" in request_problem(LAYOUT, [ids, mask, scale])
    assert "holds values other than 0 and 1" in request_problem(LAYOUT, [ids, mask * 3, scale])


def test_plan_runs_sorts_by_length_and_closes_a_run_at_max_batch_size():
    sizes = [(1, 9), (1, 3), (1, 12), (1, 4), (1, 10)]
    assert plan_runs(sizes, max_batch_size=2) == [[1, 3], [0, 4], [2]]
    assert plan_runs(sizes, max_batch_size=8) == [[1, 3, 0, 4, 2]]


def test_plan_runs_counts_rows_and_padded_tokens_and_never_drops_a_request():
    sizes = [(3, 4), (2, 4), (5, 2), (9, 1), (1, 16)]
    runs = plan_runs(sizes, max_batch_size=6, max_tokens=24)
    assert sorted(i for run in runs for i in run) == list(range(len(sizes)))
    for run in runs:
        rows = sum(sizes[i][0] for i in run)
        longest = max(sizes[i][1] for i in run)
        assert len(run) == 1 or (rows <= 6 and rows * longest <= 24), (run, sizes)
    assert [3] in runs  # 9 rows, more than max_batch_size: runs alone, not refused
    assert plan_runs([], max_batch_size=4) == []
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        plan_runs(sizes, max_batch_size=0)


def test_pad_run_pads_each_input_with_its_own_pad_value_and_joins_rows_in_order():
    first, second = _request(2, rows=1, start=1), _request(4, rows=2, start=100)
    ids, mask, scale = pad_run(LAYOUT, [first, second])
    assert ids.tolist() == [[1, 2, 7, 7], [100, 101, 102, 103], [104, 105, 106, 107]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert scale.shape == (3, 1) and ids.dtype == np.int64 and mask.dtype == np.int64
    assert [a.shape for a in pad_request(LAYOUT, first, 3)] == [(1, 3), (1, 3), (1, 1)]


def test_pad_run_keeps_bfloat16_tensors_as_tensors():
    layout = PaddingLayout("seq", 1, 8, ("x",), (1,), (0.0,), (False,), ("y",), (1,))
    short, long = torch.ones(1, 2, 3, dtype=torch.bfloat16), torch.full((1, 5, 3), 2.0, dtype=torch.bfloat16)
    (joined,) = pad_run(layout, [[short], [long]])
    assert joined.dtype == torch.bfloat16 and tuple(joined.shape) == (2, 5, 3)
    assert joined[0, 2:].abs().sum().item() == 0 and joined[0, :2].eq(1).all()


def test_cut_outputs_gives_each_request_its_rows_and_its_own_length():
    states = np.arange(3 * 4 * 2).reshape(3, 4, 2)
    pooled = np.arange(3 * 5).reshape(3, 5)
    own = cut_outputs(LAYOUT, [states, pooled], rows=[1, 2], lengths=[2, 4])
    assert own[0][0].tolist() == states[:1, :2].tolist() and own[0][1].tolist() == pooled[:1].tolist()
    assert own[1][0].tolist() == states[1:3, :4].tolist() and own[1][1].tolist() == pooled[1:3].tolist()
    tensor_own = cut_outputs(LAYOUT, [torch.from_numpy(states), torch.from_numpy(pooled)], rows=[1, 2], lengths=[2, 4])
    assert tuple(tensor_own[0][0].shape) == (1, 2, 2)


def _masked_states(inputs):
    """A numpy model on LAYOUT's inputs: per-token states (ids x mask x scale) and their masked sum."""
    ids, mask, scale = inputs
    if (ids == 99).any():
        raise RuntimeError("id 99 breaks this model")
    states = (ids * mask)[..., None] * scale[:, None, :]
    return [states, states.sum(1)]


def test_run_padded_answers_each_request_as_alone_and_isolates_refused_and_failing_requests():
    requests = [_request(n, rows=r, start=10 * i + 1) for i, (n, r) in enumerate([(3, 1), (6, 2), (2, 1), (5, 1), (4, 1)])]
    requests[2][1] = requests[2][1] * 2  # a mask holding 2s: refused
    requests[3][0][0, 0] = 99  # breaks the model: fails alone, after its run failed
    calls = []

    def run(inputs):
        calls.append([a.shape for a in inputs])
        return _masked_states(inputs)

    results = run_padded(LAYOUT, requests, run, max_batch_size=4)
    assert "input 'attention_mask' is a mask but holds values other than 0 and 1" in results[2]
    assert isinstance(results[3], RuntimeError)
    for index in (0, 1, 4):
        expected = _masked_states(requests[index])
        assert [a.shape for a in results[index]] == [a.shape for a in expected]
        assert all(np.array_equal(a, b) for a, b in zip(results[index], expected))
    # Lengths 3, 4, 5 (one row each) padded to 5 in one run; it failed on the 99, so each ran alone;
    # the 2-row request of length 6 would make 5 rows: its own run.
    assert calls == [[(3, 5), (3, 5), (3, 1)], [(1, 3)] * 2 + [(1, 1)], [(1, 4)] * 2 + [(1, 1)], [(1, 5)] * 2 + [(1, 1)], [(2, 6)] * 2 + [(2, 1)]]


def test_a_mask_row_of_only_zeros_is_refused_naming_the_mask():
    ids, mask, scale = _request(5, rows=2)
    mask[1] = 0
    ids[1] = 7  # the pad value everywhere: the row is pads only
    problem = request_problem(LAYOUT, [ids, mask, scale])
    assert problem is not None and "input 'attention_mask' has a row of only 0s along axis 1" in problem
    assert request_problem(LAYOUT, [torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(scale)]) == problem


def test_with_a_run_overhead_the_plan_splits_where_padding_together_costs_more():
    sizes = [(1, 50), (1, 6), (1, 7), (1, 8), (1, 48)]
    assert plan_runs(sizes, 8) == [[1, 2, 3, 4, 0]]  # unmeasured: one run, padded to 50
    # 5 x 50 = 250 positions in one run, against 2 runs: 3 x 8 + 2 x 50 = 124 plus one more overhead.
    assert plan_runs(sizes, 8, run_overhead_tokens=30.0) == [[1, 2, 3], [4, 0]]
    assert plan_runs(sizes, 8, run_overhead_tokens=1000.0) == [[1, 2, 3, 4, 0]]  # a run costs too much to split
    assert plan_runs(sizes, 2, run_overhead_tokens=1000.0) == [[1, 2], [3], [4, 0]]  # the rows limit still holds (3 runs, least padding)
    assert plan_runs(sizes, 8, max_tokens=60, run_overhead_tokens=1000.0) == [[1, 2, 3], [4], [0]]
    assert plan_runs([], 8, run_overhead_tokens=5.0) == []


def test_a_layout_keeps_its_run_overhead_and_refuses_a_negative_one():
    import dataclasses

    measured = dataclasses.replace(LAYOUT, run_overhead_tokens=42.5)
    assert PaddingLayout.from_dict(measured.to_dict()).run_overhead_tokens == 42.5
    older = LAYOUT.to_dict()
    del older["run_overhead_tokens"]
    assert PaddingLayout.from_dict(older).run_overhead_tokens is None
    with pytest.raises(ValueError, match="run_overhead_tokens >= 0"):
        PaddingLayout.from_dict({**LAYOUT.to_dict(), "run_overhead_tokens": -1})
