"""Dimension inference: the batch axis and the dynamic dimensions of a graph spec, found from the
shapes of its recorded calls and the declared dims, each with its ``DimRange(min, opt, max)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from aitune_triton.module.dims import BatchDim, DimDecl, DynamicDim
from aitune_triton.spec import DimRange

__all__ = ["DimAnalysis", "infer_dims"]

Shape = tuple[int, ...]


@dataclass
class DimAnalysis:
    """Result of :func:`infer_dims`: per leaf batch axis and per-axis dimension names, plus ranges."""

    input_batch_axes: list[int | None]
    output_batch_axes: list[int | None]
    input_dim_names: list[tuple[str | None, ...]]
    output_dim_names: list[tuple[str | None, ...]]
    ranges: dict[str, DimRange]


def _declared_range(decl: DimDecl, sizes: Sequence[int]) -> DimRange:
    """A declared dim's range: its opt when declared, else the size recorded most often."""
    if decl.opt is not None:
        return DimRange(decl.min, decl.opt, decl.max)
    return DimRange.of_sizes(sizes, decl.min, decl.max) if sizes else DimRange(decl.min, decl.max, decl.max)


def infer_dims(
    input_shapes: Sequence[Sequence[Shape]],
    output_shapes: Sequence[Sequence[Shape]],
    declared: Mapping[tuple[int, int], DimDecl] | None = None,
    fixed: Collection[tuple[int, int]] = (),
) -> DimAnalysis:
    """Find the batch axis and the dynamic dimensions of a graph spec from the shapes of its calls.

    Declared dims (``{(input leaf index, axis): DynamicDim | BatchDim}``) win: their axes are
    dynamic with the declared names and ranges even when the size never varied, and a declared
    :class:`BatchDim` fixes the batch size of each call; axes declared with a fixed size (``fixed``)
    are static and never the batch axis. An output axis whose size equals, in every call, that of a
    declared :class:`DynamicDim` recorded at one size only takes its name: it is taken to follow it
    (a served output is then declared dynamic there rather than fixed at the one size recorded).
    Otherwise the call's batch size is the size of axis 0 of its first tensor input of rank >= 1;
    when that size varied across calls, each leaf's batch axis is its first axis whose size
    equalled the batch size in every call (axis 0 where possible). With one batch size seen, axis 0 of each leaf whose axis 0 had that size in
    every call is a *candidate* batch axis: tuning keeps it only when the module's outputs prove
    independent along it (see :func:`aitune_triton.module.tuning.check_batch_independence`) and
    otherwise fixes the size again. Other axes whose size varied are dynamic; axes with the same
    sizes in every call share one name (``dim0``, ``dim1``...); the batch is ``batch``, with an
    inferred range from 1 to the largest batch seen. Ranges are the sizes seen, or as declared;
    each range's opt is the declared one, else the size recorded most often (ties: the larger).

    Args:
        input_shapes: Per call, the shape of each tensor input leaf.
        output_shapes: Per call, the shape of each tensor output leaf.
        declared: Declared dims of input axes.
        fixed: ``(input leaf index, axis)`` of the input axes declared with a fixed size.

    Returns:
        Batch axes, dimension names and ``{name: DimRange(min, opt, max)}`` size ranges.
    """
    declared = dict(declared or {})
    fixed = set(fixed)

    def series(calls: Sequence[Sequence[Shape]], leaf: int, axis: int) -> tuple[int, ...]:
        return tuple(call[leaf][axis] for call in calls)

    names: dict[tuple[int, ...], str] = {}
    ranges = {decl.name: _declared_range(decl, series(input_shapes, *position)) for position, decl in declared.items()}
    batch_position = next((position for position, decl in declared.items() if isinstance(decl, BatchDim)), None)
    if batch_position is not None:
        batch_series: tuple[int, ...] | None = series(input_shapes, *batch_position)
    else:
        first = next((i for i, shape in enumerate(input_shapes[0]) if len(shape) >= 1), None) if input_shapes else None
        batch_series = series(input_shapes, first, 0) if first is not None else None
        if batch_series is not None and len(set(batch_series)) < 2 and ((first, 0) in declared or (first, 0) in fixed):
            batch_series = None  # that axis is a declared DynamicDim or fixed size, not a batch candidate
    batch_varies = batch_series is not None and len(set(batch_series)) > 1
    if batch_varies:
        names[batch_series] = "batch"  # type: ignore[index]
    unvaried: dict[tuple[int, ...], str] = {}  # declared dims recorded at one size, for the outputs that follow them
    for (leaf, axis), decl in declared.items():
        varying = series(input_shapes, leaf, axis)
        if len(set(varying)) > 1:
            names.setdefault(varying, decl.name)
        elif isinstance(decl, DynamicDim):
            unvaried.setdefault(varying, decl.name)

    def analyse(calls: Sequence[Sequence[Shape]], inputs: bool) -> tuple[list[int | None], list[tuple[str | None, ...]]]:
        batch_axes: list[int | None] = []
        dim_names: list[tuple[str | None, ...]] = []
        for leaf, shape in enumerate(calls[0] if calls else []):
            per_axis = [series(calls, leaf, axis) for axis in range(len(shape))]
            own = {axis: decl for (l, axis), decl in declared.items() if l == leaf} if inputs else {}
            batch_axis = next((axis for axis, decl in own.items() if isinstance(decl, BatchDim)), None)
            if batch_axis is None and batch_series is not None:
                if batch_varies:
                    batch_axis = next((a for a, s in enumerate(per_axis) if s == batch_series), None)
                elif per_axis and per_axis[0] == batch_series and not (inputs and (leaf, 0) in fixed):
                    batch_axis = 0  # a batch that never varied (declared or a candidate): the axis-0 convention
            leaf_names: list[str | None] = []
            for axis, s in enumerate(per_axis):
                if axis in own:
                    leaf_names.append(own[axis].name)
                elif axis == batch_axis:
                    leaf_names.append("batch")
                elif len(set(s)) == 1:
                    leaf_names.append(None if inputs else unvaried.get(s))
                else:
                    leaf_names.append(names.setdefault(s, f"dim{sum(1 for n in names.values() if n.startswith('dim'))}"))
            batch_axes.append(batch_axis)
            dim_names.append(tuple(leaf_names))
        return batch_axes, dim_names

    in_batch, in_names = analyse(input_shapes, True)
    out_batch, out_names = analyse(output_shapes, False)
    for s, name in names.items():
        ranges.setdefault(name, DimRange.of_sizes(s))
    if batch_series is not None and batch_position is None:
        # Samples along a batch axis are independent: any batch from 1 up to the largest seen.
        ranges["batch"] = DimRange.of_sizes(batch_series, low=1)
    return DimAnalysis(in_batch, out_batch, in_names, out_names, ranges)
