"""One recorded call's tensor shapes checked against the declared dims (``dynamic_shapes``).

Recording calls :func:`check_declared` before it keeps a call: a rank, a fixed size, a range or a
shared name that the call breaks is refused with advice for the declaration.
"""

from __future__ import annotations

import sys
from typing import Mapping, Sequence

from aitune_triton.contract import InputContract
from aitune_triton.errors import RecordingError
from aitune_triton.module.dims import AxisDecl, BatchDim, DeclaredShapes, DimDecl, DynamicDim

__all__ = ["check_declared"]


def check_declared(paths: list[str], shapes: list[tuple[int, ...]], declared: Mapping[str, Mapping[int, DimDecl]]) -> None:
    """Check one call's tensor input shapes against the declared dims.

    The ranges, fixed sizes and shared names are checked by the one shape check of
    :meth:`aitune_triton.contract.InputContract.shape_problems` (a declared name is the symbol of
    the axes it ties); the rank checks are this function's own. The first problem found, input by
    input, is raised with advice for the declaration.

    Args:
        paths: Tensor input leaf paths of the call.
        shapes: Their shapes.
        declared: Output of :func:`validate_dynamic_shapes`.

    Raises:
        RecordingError: a tensor's rank differs from its full-rank declaration, a fixed axis has
            another size than declared, a declared axis is beyond the tensor's rank, a size is
            outside the declared range, or axes declared with one name have different sizes.
    """
    full_rank = declared.full_rank if isinstance(declared, DeclaredShapes) else {}
    # (input position, phase, declared axis order, check) -> message; the smallest key is the problem
    # met first checking input by input: its rank, its fixed sizes, then each declared axis.
    problems: dict[tuple[int, int, int, int], str] = {}
    ranges: list[list[tuple[int, int]]] = []
    axes: list[list[int | str | None]] = []
    for position, (path, shape) in enumerate(zip(paths, shapes)):
        entries = full_rank.get(path)
        order = {axis: index for index, axis in enumerate(declared.get(path, {}))}
        if entries is not None and len(shape) != len(entries):
            problems[(position, 0, 0, 0)] = (
                f"dynamic_shapes[{path!r}]: declared with rank {len(entries)} {_describe(entries)}, but this call "
                f"passes a tensor of rank {len(shape)} (shape {list(shape)}). Declare one entry per axis of the tensor, "
                "or change the call."
            )
        tensor_ranges: list[tuple[int, int]] = [(0, sys.maxsize)] * len(shape)
        tensor_axes: list[int | str | None] = [None] * len(shape)
        for axis, size in enumerate(entries if entries is not None and len(entries) == len(shape) else ()):
            if isinstance(size, int) and not isinstance(size, bool):
                tensor_axes[axis] = size
        for axis, decl in declared.get(path, {}).items():
            if axis >= len(shape):
                problems[(position, 2, order[axis], 0)] = (
                    f"dynamic_shapes[{path!r}]: axis {axis} is declared, but this call passes a tensor of rank "
                    f"{len(shape)} (shape {list(shape)}). Declare an axis below {len(shape)}."
                )
                continue
            tensor_ranges[axis] = (decl.min, decl.max)
            tensor_axes[axis] = decl.name
        ranges.append(tensor_ranges)
        axes.append(tensor_axes)
    for problem in InputContract(names=list(paths), ranges=ranges, axes=axes).shape_problems(shapes):
        path, shape, axis = paths[problem.input], shapes[problem.input], problem.axis
        if problem.kind == "fixed":
            problems[(problem.input, 1, axis, 0)] = (
                f"dynamic_shapes[{path!r}]: axis {axis} is declared with the fixed size {problem.expected}, but has size "
                f"{problem.size} in this call (shape {list(shape)}). Declare a DynamicDim (or None) for that axis, "
                "or change the call."
            )
            continue
        decl = declared[path][axis]
        declared_at = list(declared[path]).index(axis)
        if problem.kind == "range":
            problems[(problem.input, 2, declared_at, 1)] = (
                f"dynamic_shapes[{path!r}]: axis {axis} ({decl.name}) has size {problem.size} in this call, outside "
                f"the declared range {decl.min}..{decl.max}. Widen the declared range or change the call."
            )
        else:
            other, other_axis, other_size = problem.tied
            problems[(problem.input, 2, declared_at, 2)] = (
                f"dynamic_shapes: {path!r} axis {axis} and {paths[other]!r} axis {other_axis} share the dimension "
                f"{decl.name!r} but have sizes {problem.size} and {other_size} in this call. Give them different names "
                "or pass equal sizes."
            )
    if problems:
        raise RecordingError(problems[min(problems)])


def _describe(entries: Sequence[AxisDecl]) -> str:
    parts = []
    for entry in entries:
        if isinstance(entry, (DynamicDim, BatchDim)):
            parts.append(f"{entry.name} {entry.min}..{entry.max}")
        else:
            parts.append("inferred" if entry is None else str(entry))
    return "(" + ", ".join(parts) + ")"
