"""Explicit dynamic dimensions: ranges the user declares per input path instead of inferring them.

``Module(..., dynamic_shapes=...)`` takes one entry per tensor input, in either of two forms:

- per axis: ``{"input_ids": {0: BatchDim(1, 32), 1: DynamicDim("seq", 1, 512)}}``: only the
  listed axes are declared, the others are inferred from the recorded calls;
- full rank (as NVIDIA AITune writes it): ``{"x": (BatchDim("batch", min=1, max=32), 3, None)}``:
  one entry per axis, a :class:`BatchDim`/:class:`DynamicDim` for a dynamic axis, an ``int`` for an
  axis whose size is fixed, ``None`` for an axis left to inference. The tuple's length is the rank
  every recorded call must have.

An input is named by its leaf path, the dotted path :func:`aitune_triton.spec.flatten_call` gives
it (``pixel_values``, ``inputs.pixels``, ``past.0``) or the same path as a tuple of its parts
(``("inputs", "pixels")``, ``("past", 0)``). A path starts with the name of the forward's
parameter that takes the input (a keyword argument that ``**kwargs`` gathers is
``kwargs.mask``); ``Module`` refuses a path that starts with anything else when it is built, and
``tune()`` refuses one that matches no recorded tensor input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError

__all__ = [
    "BatchDim",
    "DeclaredShapes",
    "DimDecl",
    "DynamicDim",
    "check_declared_parameters",
    "dim_from_dict",
    "validate_dynamic_shapes",
]

BATCH_NAME = "batch"


def _check_range(kind: str, low: Any, high: Any, opt: Any) -> None:
    """AITune's rule for a declared range: ``1 <= min < max`` and ``min <= opt <= max``."""
    for label, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{kind}: expected a positive integer {label} (sizes start at 1), got {value!r}")
    if low >= high:
        raise InvalidArgumentError(
            f"{kind}: expected min < max, got min={low}, max={high}. A declared dim varies; declare an axis whose size "
            "never changes with an int (full-rank form) or leave it out"
        )
    if opt is not None and (isinstance(opt, bool) or not isinstance(opt, int) or not low <= opt <= high):
        raise InvalidArgumentError(f"{kind}: expected min <= opt <= max, that is opt between min={low} and max={high}, got {opt!r}")


def _fields_from_dict(kind: str, data: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """The keyword arguments a dim's ``to_dict()`` output holds, or a clear error naming what is wrong."""
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"{kind}.from_dict: expected a dict as {kind}.to_dict() writes it, got {type(data).__name__} {data!r}")
    if data.get("type", kind) != kind:
        raise InvalidArgumentError(f"{kind}.from_dict: expected type {kind!r}, got {data.get('type')!r}; use dim_from_dict() for either kind")
    missing = [key for key in required if key not in data]
    unknown = sorted(str(key) for key in data if key not in (*required, *optional, "type"))
    if missing or unknown:
        raise InvalidArgumentError(
            f"{kind}.from_dict: expected the keys {list(required)} (and optionally {list(optional)}), got {sorted(map(str, data))}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    return {key: data[key] for key in (*required, *optional) if key in data}


@dataclass(frozen=True)
class DynamicDim:
    """A dynamic axis with a declared size range.

    Axes that share a name must have equal sizes in every call (``input_ids`` and
    ``attention_mask`` sequence axes, say, or the height and width of a square image), even when
    each is declared with its own object; exporters then treat them as one dimension.

    Takes ``DynamicDim(name, min, max, opt=None)``, positionally or by keyword
    (``DynamicDim("sequence", min=1, opt=128, max=512)``).

    Attributes:
        name: Dimension name (not ``"batch"``; use :class:`BatchDim` for the batch axis).
        min: Smallest size allowed.
        max: Largest size allowed.
        opt: Size to optimize for (optimization profiles, warmup); None: the size recorded most often.

    Raises:
        InvalidArgumentError: (a ValueError) empty or reserved name, ``min < 1``, ``min >= max`` or
            ``opt`` outside the range.
    """

    name: str
    min: int
    max: int
    opt: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == BATCH_NAME:
            raise InvalidArgumentError(
                f"DynamicDim: expected a non-empty name other than 'batch' (use BatchDim for the batch axis), got {self.name!r}"
            )
        _check_range(f"DynamicDim({self.name!r})", self.min, self.max, self.opt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form: ``{"type": "DynamicDim", "name", "min", "max", "opt"}``."""
        return {"type": "DynamicDim", "name": self.name, "min": self.min, "max": self.max, "opt": self.opt}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DynamicDim":
        """Rebuild from :meth:`to_dict`.

        Raises:
            InvalidArgumentError: (a ValueError) ``data`` is not a dict, names another type, lacks
                ``name``, ``min`` or ``max``, has unknown keys, or holds values the constructor refuses.
        """
        return cls(**_fields_from_dict("DynamicDim", data, ("name", "min", "max"), ("opt",)))


@dataclass(frozen=True, init=False)
class BatchDim:
    """The batch axis with a declared size range: Triton's ``max_batch_size`` is ``max``.

    Takes ``BatchDim(min, max, opt=None)`` or, as NVIDIA AITune writes it, with the name first:
    ``BatchDim("batch", min, max, opt=None)``, each value positionally or by keyword
    (``BatchDim("batch", min=1, opt=8, max=32)``). The batch axis is one dimension named ``"batch"``
    in every graph spec, Triton config and report here, so the name, when given, must be
    ``"batch"``; any other name is refused rather than silently dropped.

    Attributes:
        name: Always ``"batch"``.
        min: Smallest batch size allowed.
        max: Largest batch size allowed.
        opt: Batch size to optimize for; None: the batch size recorded most often.

    Raises:
        InvalidArgumentError: (a ValueError) a name other than ``"batch"``, ``min < 1``,
            ``min >= max`` or ``opt`` outside the range.
        ArgumentTypeError: (a TypeError) ``min`` or ``max`` missing, too many positional
            arguments, a value given both positionally and by keyword, or an unknown keyword.
    """

    name: str
    min: int
    max: int
    opt: int | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = ("name", "min", "max", "opt") if args and isinstance(args[0], str) else ("min", "max", "opt")
        if len(args) > len(fields):
            raise ArgumentTypeError(
                f"BatchDim: expected at most {len(fields)} positional arguments ({', '.join(fields)}), got {len(args)}: {args!r}"
            )
        unknown = sorted(set(kwargs) - {"name", "min", "max", "opt"})
        if unknown:
            raise ArgumentTypeError(f"BatchDim: unexpected keyword arguments {unknown}; it takes name, min, max and opt")
        values = dict(zip(fields, args))
        twice = sorted(set(values) & set(kwargs))
        if twice:
            raise ArgumentTypeError(f"BatchDim: {twice} given both positionally and by keyword")
        values.update(kwargs)
        missing = [key for key in ("min", "max") if key not in values]
        if missing:
            raise ArgumentTypeError(f"BatchDim: missing {' and '.join(missing)}; write BatchDim(min, max) or BatchDim('batch', min=..., max=...)")
        name = values.get("name", BATCH_NAME)
        if name != BATCH_NAME:
            raise InvalidArgumentError(
                f"BatchDim: expected the name 'batch' (the batch axis is one dimension named 'batch' here, on every input "
                f"and output), got {name!r}. Pass 'batch' or leave the name out; use DynamicDim({name!r}, ...) for an axis "
                "that is not the batch."
            )
        _check_range("BatchDim", values["min"], values["max"], values.get("opt"))
        object.__setattr__(self, "name", BATCH_NAME)
        object.__setattr__(self, "min", values["min"])
        object.__setattr__(self, "max", values["max"])
        object.__setattr__(self, "opt", values.get("opt"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form: ``{"type": "BatchDim", "name": "batch", "min", "max", "opt"}``."""
        return {"type": "BatchDim", "name": self.name, "min": self.min, "max": self.max, "opt": self.opt}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BatchDim":
        """Rebuild from :meth:`to_dict`.

        Raises:
            InvalidArgumentError: (a ValueError) ``data`` is not a dict, names another type, lacks
                ``min`` or ``max``, has unknown keys, or holds values the constructor refuses.
        """
        return cls(**_fields_from_dict("BatchDim", data, ("min", "max"), ("name", "opt")))


DimDecl = Union[DynamicDim, BatchDim]
AxisDecl = Union[DynamicDim, BatchDim, int, None]


def dim_from_dict(data: Mapping[str, Any]) -> DimDecl:
    """Rebuild a :class:`BatchDim` or :class:`DynamicDim` from its ``to_dict()`` output (by its ``type`` key).

    Raises:
        InvalidArgumentError: (a ValueError) ``data`` is not a dict, has no known ``type``, or is not
            a valid dict of that type.
    """
    kinds: dict[str, Any] = {"BatchDim": BatchDim, "DynamicDim": DynamicDim}
    kind = data.get("type") if isinstance(data, Mapping) else None
    if kind not in kinds:
        raise InvalidArgumentError(
            f"dim_from_dict: expected a dict with 'type' 'BatchDim' or 'DynamicDim' (a dim's to_dict()), got {data!r}"
        )
    result: DimDecl = kinds[kind].from_dict(data)
    return result


class DeclaredShapes(dict[str, dict[int, DimDecl]]):
    """Validated ``dynamic_shapes``: ``{leaf path: {axis: dim}}`` plus the full-rank declarations.

    A plain dict of the declared dims per input path (what inference and tuning read), with
    ``full_rank``: ``{leaf path: (dim | int | None, ...)}`` for the inputs declared with one entry
    per axis, whose rank and fixed sizes every recorded call is checked against.
    """

    def __init__(
        self,
        dims: Mapping[str, Mapping[int, DimDecl]] | None = None,
        full_rank: Mapping[str, tuple[AxisDecl, ...]] | None = None,
    ):
        super().__init__({path: dict(axes) for path, axes in (dims or {}).items()})
        self.full_rank: dict[str, tuple[AxisDecl, ...]] = dict(full_rank or {})

    def fixed_axes(self, path: str) -> dict[int, int]:
        """``{axis: size}`` of the axes ``path`` declares with a fixed size (full-rank form only)."""
        return {axis: size for axis, size in enumerate(self.full_rank.get(path, ())) if isinstance(size, int)}


def _path_name(path: Any) -> str:
    """A ``dynamic_shapes`` key as a dotted leaf path; a tuple's parts are joined as flattening names them."""
    if isinstance(path, str) and path:
        return path
    if isinstance(path, tuple) and path and all(
        (isinstance(part, str) and part) or (isinstance(part, int) and not isinstance(part, bool) and part >= 0) for part in path
    ):
        return ".".join(str(part) for part in path)
    raise InvalidArgumentError(
        f"dynamic_shapes: expected each key to be an input leaf path, a non-empty string ('inputs.pixels') or a tuple "
        f"of its parts (('inputs', 'pixels'); list positions as ints), got {path!r}"
    )


def _full_rank_axes(path: str, entries: Sequence[Any]) -> tuple[dict[int, DimDecl], tuple[AxisDecl, ...]]:
    dims: dict[int, DimDecl] = {}
    for axis, entry in enumerate(entries):
        if isinstance(entry, (DynamicDim, BatchDim)):
            dims[axis] = entry
        elif entry is not None and (isinstance(entry, bool) or not isinstance(entry, int) or entry < 0):
            raise InvalidArgumentError(
                f"dynamic_shapes[{path!r}][{axis}]: expected a DynamicDim or BatchDim (a dynamic axis), a non-negative int "
                f"(a fixed size) or None (inferred from the recorded calls), got {entry!r}"
            )
    return dims, tuple(entries)


def _axis_map(path: str, axes: Mapping[Any, Any]) -> dict[int, DimDecl]:
    dims: dict[int, DimDecl] = {}
    for axis, decl in axes.items():
        if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
            hint = (
                f" A nested input is named by its whole path: write {{({path!r}, {axis!r}): ...}} or "
                f"{{'{path}.{axis}': ...}}."
                if isinstance(axis, str)
                else ""
            )
            raise InvalidArgumentError(f"dynamic_shapes[{path!r}]: expected non-negative integer axes, got {axis!r}.{hint}")
        if not isinstance(decl, (DynamicDim, BatchDim)):
            raise InvalidArgumentError(f"dynamic_shapes[{path!r}][{axis}]: expected DynamicDim or BatchDim, got {decl!r}")
        dims[axis] = decl
    return dims


def validate_dynamic_shapes(dynamic_shapes: Mapping[Any, Any] | None) -> DeclaredShapes:
    """Check a ``dynamic_shapes`` declaration and bring it to one form.

    Args:
        dynamic_shapes: ``{input path: {axis: DynamicDim | BatchDim}}`` or
            ``{input path: (DynamicDim | BatchDim | int | None, ...)}`` (one entry per axis), the
            two forms mixed freely across inputs; a path is a dotted string or a tuple of its parts.
            None declares nothing.

    Returns:
        The declaration by dotted leaf path (a :class:`DeclaredShapes`; returned as is when it already is one).

    Raises:
        InvalidArgumentError: (a ValueError) a key is not a leaf path, one path is given twice (as a
            string and as a tuple, say), an axis is not a non-negative integer, a value is not a
            DynamicDim/BatchDim (or, in the full-rank form, an int or None), one input declares two
            batch axes, or one name is declared with two different ``(min, opt, max)``.
    """
    if isinstance(dynamic_shapes, DeclaredShapes):
        return dynamic_shapes
    if dynamic_shapes is None:
        return DeclaredShapes()
    if not isinstance(dynamic_shapes, Mapping):
        raise InvalidArgumentError(
            "dynamic_shapes: expected a mapping {input path: {axis: DynamicDim | BatchDim}} or {input path: (dim or int "
            f"per axis, ...)}}, got {type(dynamic_shapes).__name__}"
        )
    dims: dict[str, dict[int, DimDecl]] = {}
    full_rank: dict[str, tuple[AxisDecl, ...]] = {}
    keys: dict[str, Any] = {}
    by_name: dict[str, DimDecl] = {}
    for key, value in dynamic_shapes.items():
        path = _path_name(key)
        if path in keys:
            raise InvalidArgumentError(f"dynamic_shapes: the input {path!r} is declared twice, as {keys[path]!r} and as {key!r}; keep one")
        keys[path] = key
        if isinstance(value, Mapping):
            axes = _axis_map(path, value)
        elif isinstance(value, (tuple, list)):
            axes, full_rank[path] = _full_rank_axes(path, value)
        else:
            raise InvalidArgumentError(
                f"dynamic_shapes[{path!r}]: expected {{axis: DynamicDim | BatchDim}} or a tuple with one entry per axis "
                f"(DynamicDim | BatchDim | int | None), got {value!r}"
            )
        batch_axes = [axis for axis, decl in axes.items() if isinstance(decl, BatchDim)]
        if len(batch_axes) > 1:
            raise InvalidArgumentError(f"dynamic_shapes[{path!r}]: expected at most one BatchDim axis, got axes {batch_axes}")
        for decl in axes.values():
            known = by_name.setdefault(decl.name, decl)
            if (known.min, known.opt, known.max) != (decl.min, decl.opt, decl.max):
                raise InvalidArgumentError(
                    f"dynamic_shapes: dimension {decl.name!r} is declared with (min, opt, max) = "
                    f"({known.min}, {known.opt}, {known.max}) and ({decl.min}, {decl.opt}, {decl.max}); axes that share "
                    "a name are one dimension: declare them with equal min, opt and max, or give them different names"
                )
        dims[path] = axes
    return DeclaredShapes(dims, full_rank)


def check_declared_parameters(
    declared: Mapping[str, Any], parameters: Sequence[str], var_keyword: str | None, forward: str
) -> None:
    """Check that every declared path starts with a parameter of the forward.

    A call's leaf paths start with the name of the parameter that took the value (``x``,
    ``inputs.pixels``; a keyword argument that ``**kwargs`` gathers is ``kwargs.mask``), so a path
    starting with anything else can never match an input.

    Args:
        declared: Output of :func:`validate_dynamic_shapes` (keys are dotted leaf paths).
        parameters: The forward's parameter names, in order.
        var_keyword: The name of its ``**kwargs`` parameter, if it has one.
        forward: The forward's parameter list as written, for the message (``(x, mask=None)``).

    Raises:
        InvalidArgumentError: (a ValueError) a path's first component is not a parameter name.
    """
    for path in declared:
        root = path.split(".", 1)[0]
        if root in parameters:
            continue
        hint = (
            f" A keyword argument that **{var_keyword} gathers is named '{var_keyword}.<key>': write '{var_keyword}.{path}'."
            if var_keyword is not None
            else ""
        )
        raise InvalidArgumentError(
            f"dynamic_shapes: {path!r} names no parameter of the forward, which takes {forward}; expected a leaf path that "
            f"starts with one of {list(parameters)} ('{parameters[0] if parameters else 'x'}', or "
            f"'{parameters[0] if parameters else 'x'}.<key>' for an input nested in it).{hint}"
        )
