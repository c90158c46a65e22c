"""Explicit dynamic dimensions: ranges the user declares per input path instead of inferring them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

from aitune_triton.errors import InvalidArgumentError, RecordingError

__all__ = ["BatchDim", "DimDecl", "DynamicDim", "validate_dynamic_shapes"]


def _check_range(kind: str, low: int, high: int, opt: int | None) -> None:
    for label, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"{kind}: expected a non-negative integer {label}, got {value!r}")
    if low > high:
        raise InvalidArgumentError(f"{kind}: expected min <= max, got min={low}, max={high}")
    if opt is not None and not (isinstance(opt, int) and low <= opt <= high):
        raise InvalidArgumentError(f"{kind}: expected opt between min={low} and max={high}, got {opt!r}")


@dataclass(frozen=True)
class DynamicDim:
    """A dynamic axis with a declared size range.

    Axes that share a name must have equal sizes in every call (``input_ids`` and
    ``attention_mask`` sequence axes, say); exporters then treat them as one dimension.

    Attributes:
        name: Dimension name (not ``"batch"``; use :class:`BatchDim` for the batch axis).
        min: Smallest size allowed.
        max: Largest size allowed.
        opt: Size to optimize for (TensorRT optimization profiles); None = unspecified.

    Raises:
        InvalidArgumentError: (a ValueError) empty or reserved name, negative sizes, ``min > max`` or ``opt`` outside the range.
    """

    name: str
    min: int
    max: int
    opt: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == "batch":
            raise InvalidArgumentError(f"DynamicDim: expected a non-empty name other than 'batch', got {self.name!r}")
        _check_range(f"DynamicDim({self.name!r})", self.min, self.max, self.opt)


@dataclass(frozen=True)
class BatchDim:
    """The batch axis with a declared size range: Triton's ``max_batch_size`` is ``max``.

    Attributes:
        min: Smallest batch size allowed.
        max: Largest batch size allowed.
        opt: Batch size to optimize for; None = unspecified.

    Raises:
        InvalidArgumentError: (a ValueError) negative sizes, ``min > max`` or ``opt`` outside the range.
    """

    min: int
    max: int
    opt: int | None = None

    name = "batch"

    def __post_init__(self) -> None:
        _check_range("BatchDim", self.min, self.max, self.opt)


DimDecl = Union[DynamicDim, BatchDim]


def validate_dynamic_shapes(dynamic_shapes: Mapping[str, Mapping[int, DimDecl]] | None) -> dict[str, dict[int, DimDecl]]:
    """Check a ``{input path: {axis: DynamicDim | BatchDim}}`` mapping.

    Raises:
        InvalidArgumentError: (a ValueError) a key is not a string path, an axis is not a non-negative integer, a value is
            not a DynamicDim/BatchDim, or one name is declared with two different ranges.
    """
    if dynamic_shapes is None:
        return {}
    if not isinstance(dynamic_shapes, Mapping):
        raise InvalidArgumentError(
            f"dynamic_shapes: expected a mapping {{input path: {{axis: DynamicDim | BatchDim}}}}, got {type(dynamic_shapes).__name__}"
        )
    result: dict[str, dict[int, DimDecl]] = {}
    by_name: dict[str, DimDecl] = {}
    for path, axes in dynamic_shapes.items():
        if not isinstance(path, str) or not isinstance(axes, Mapping):
            raise InvalidArgumentError(f"dynamic_shapes: expected str keys with {{axis: dim}} values, got {path!r}: {axes!r}")
        for axis, decl in axes.items():
            if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
                raise InvalidArgumentError(f"dynamic_shapes[{path!r}]: expected non-negative integer axes, got {axis!r}")
            if not isinstance(decl, (DynamicDim, BatchDim)):
                raise InvalidArgumentError(f"dynamic_shapes[{path!r}][{axis}]: expected DynamicDim or BatchDim, got {decl!r}")
            known = by_name.setdefault(decl.name, decl)
            if (known.min, known.max) != (decl.min, decl.max):
                raise InvalidArgumentError(
                    f"dynamic_shapes: dimension {decl.name!r} is declared with ranges {known.min}..{known.max} and "
                    f"{decl.min}..{decl.max}; one name needs one range"
                )
            result.setdefault(path, {})[axis] = decl
    return result


def check_declared(paths: list[str], shapes: list[tuple[int, ...]], declared: Mapping[str, Mapping[int, DimDecl]]) -> None:
    """Check one call's tensor input shapes against the declared dims.

    Args:
        paths: Tensor input leaf paths of the call.
        shapes: Their shapes.
        declared: Output of :func:`validate_dynamic_shapes`.

    Raises:
        RecordingError: a declared axis is beyond the tensor's rank, a size is outside the
            declared range, or axes declared with one name have different sizes.
    """
    sizes_by_name: dict[str, tuple[str, int, int]] = {}
    for path, shape in zip(paths, shapes):
        for axis, decl in declared.get(path, {}).items():
            if axis >= len(shape):
                raise RecordingError(
                    f"dynamic_shapes[{path!r}]: axis {axis} is declared, but this call passes a tensor of rank "
                    f"{len(shape)} (shape {list(shape)}). Declare an axis below {len(shape)}."
                )
            if not decl.min <= shape[axis] <= decl.max:
                raise RecordingError(
                    f"dynamic_shapes[{path!r}]: axis {axis} ({decl.name}) has size {shape[axis]} in this call, outside "
                    f"the declared range {decl.min}..{decl.max}. Widen the declared range or change the call."
                )
            other = sizes_by_name.setdefault(decl.name, (path, axis, shape[axis]))
            if other[2] != shape[axis]:
                raise RecordingError(
                    f"dynamic_shapes: {path!r} axis {axis} and {other[0]!r} axis {other[1]} share the dimension "
                    f"{decl.name!r} but have sizes {shape[axis]} and {other[2]} in this call. Give them different names "
                    "or pass equal sizes."
                )
