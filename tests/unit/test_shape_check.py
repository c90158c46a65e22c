"""One shape check: InputContract.shape_problems, used by the served contract and the declared dims."""

from __future__ import annotations

import pytest

from aitune_triton.contract import InputContract, ShapeProblem
from aitune_triton.errors import RecordingError
from aitune_triton.module.declared_check import check_declared
from aitune_triton.module.dims import BatchDim, DynamicDim, validate_dynamic_shapes


def _contract() -> InputContract:
    return InputContract(
        names=["ids", "mask"],
        ranges=[[(1, 8), (1, 16)], [(1, 8), (1, 16)]],
        axes=[["s0", "s1"], ["s0", 4]],
    )


def test_shape_problems_name_each_kind_with_its_numbers():
    problems = _contract().shape_problems([(9, 5), (3, 6)])

    assert problems == [
        ShapeProblem("range", 0, 0, 9, low=1, high=8),
        ShapeProblem("tie", 1, 0, 3, tied=(0, 0, 9)),
        ShapeProblem("fixed", 1, 1, 6, expected=4),
    ]


def test_shape_violations_are_the_described_shape_problems():
    contract = _contract()
    shapes = [(9, 5), (3, 6)]

    assert contract.shape_violations(shapes) == [contract.describe(p) for p in contract.shape_problems(shapes)]
    assert contract.shape_violations(shapes) == [
        "ids axis 0: size 9 outside 1..8",
        "mask axis 0: size 3 differs from ids axis 0 (size 9); the exported model needs them equal",
        "mask axis 1: size 6, but the artifact was built for size 4 only",
    ]


def test_an_axis_with_neither_a_fixed_size_nor_a_symbol_is_not_tied_or_fixed():
    contract = InputContract(names=["x", "y"], ranges=[[(0, 99)], [(0, 99)]], axes=[[None], [None]])

    assert contract.shape_problems([(3,), (7,)]) == []


def test_fitting_shapes_have_no_problem():
    assert _contract().shape_problems([(2, 5), (2, 4)]) == []


def _declared():
    return validate_dynamic_shapes(
        {"x": (BatchDim(1, 4), DynamicDim("seq", min=2, max=8), 3), "mask": {0: BatchDim(1, 4), 1: DynamicDim("seq", min=2, max=8)}}
    )


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([(2, 5, 3), (2, 5)], None),
        ([(5, 5, 3), (5, 5)], r"^dynamic_shapes\['x'\]: axis 0 \(batch\) has size 5 in this call, outside the declared range 1..4"),
        ([(2, 5, 7), (2, 5)], r"^dynamic_shapes\['x'\]: axis 2 is declared with the fixed size 3, but has size 7"),
        ([(2, 5, 3), (2, 6)], r"^dynamic_shapes: 'mask' axis 1 and 'x' axis 1 share the dimension 'seq' but have sizes 6 and 5"),
        ([(2, 5), (2, 5)], r"^dynamic_shapes\['x'\]: declared with rank 3 \(batch 1..4, seq 2..8, 3\)"),
        ([(2, 5, 3), (2,)], r"^dynamic_shapes\['mask'\]: axis 1 is declared, but this call passes a tensor of rank 1"),
    ],
)
def test_declared_dims_are_checked_by_the_contract_check_with_recording_advice(shapes, message):
    if message is None:
        check_declared(["x", "mask"], shapes, _declared())
        return
    with pytest.raises(RecordingError, match=message):
        check_declared(["x", "mask"], shapes, _declared())


def test_of_several_broken_declarations_the_first_input_s_first_problem_is_raised():
    # x: its fixed axis is off (checked before its declared axes); mask: out of range and untied.
    with pytest.raises(RecordingError, match=r"^dynamic_shapes\['x'\]: axis 2 is declared with the fixed size 3") as raised:
        check_declared(["x", "mask"], [(9, 5, 7), (2, 9)], _declared())

    assert "'mask'" not in str(raised.value)
