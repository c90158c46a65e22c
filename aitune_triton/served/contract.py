"""The input contract of a built artifact, and the one check of a call against it.

Compiled artifacts (AOTInductor packages, ONNX Runtime sessions) trust their inputs: a size outside
the exported range, two axes the export assumed equal but that are not, or a token id past the end
of an embedding table is read out of bounds, returns garbage or aborts the whole process. An
:class:`InputContract` holds what the artifact accepts:

* ``ranges``: per input, per axis, the ``(min, max)`` size;
* ``axes``: per input, per axis, the size ``torch.export`` fixed (an integer) or the symbol of the
  size (a string; axes sharing a symbol must be equal);
* ``index_ranges``: per input, the :class:`IndexRange` values its elements must lie in, for inputs
  that reach the index argument of an indexing op (``aten.embedding``, ``index_select``,
  ``gather``, ``index.Tensor``).

The same :meth:`InputContract.violations` runs in process (before a tuned call), in
``RemoteModule`` (before a request travels) and in the served graph and router models. It is part
of :mod:`aitune_triton.served`, which the exporter copies beside each ``model.py``, so it imports
nothing but the standard library. Arrays may be numpy arrays or torch tensors (anything with
``shape``, comparisons, boolean masks, ``min``, ``max`` and ``tolist``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["IndexRange", "InputContract", "ShapeProblem"]

#: How many offending values a message lists.
_SHOWN_VALUES = 5


@dataclass(frozen=True)
class IndexRange:
    """The values an index-valued input may hold.

    Attributes:
        op: The indexing op the input reaches (``aten.embedding``), for messages.
        size: The size of the indexed dimension (embedding rows, say): an integer, or the symbol
            of an input axis whose size it is (``s12``).
        negative: Whether ``-size..-1`` count from the end (advanced indexing, ``index.Tensor``);
            otherwise only ``0..size-1`` are valid.
    """

    op: str
    size: int | str
    negative: bool = False

    def bounds(self, size: int) -> tuple[int, int]:
        """``(low, high)`` valid values, both inclusive, for the indexed dimension's ``size``."""
        return (-size if self.negative else 0), size - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"op": self.op, "size": self.size, "negative": self.negative}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexRange":
        """Rebuild from :meth:`to_dict`."""
        return cls(op=str(data["op"]), size=data["size"], negative=bool(data.get("negative", False)))


#: The advice given with an index value out of range.
INDEX_HINT = " Pass indices inside that range (token ids: ids of this model's own vocabulary), as eager PyTorch would also refuse these."


def _min_max(array: Any) -> tuple[int, int]:
    """Smallest and largest element; for a tensor on an accelerator with one device-to-host copy (one sync)."""
    torch = sys.modules.get("torch")  # this module imports only the standard library (it runs beside model.py)
    if torch is not None and isinstance(array, torch.Tensor) and array.device.type != "cpu":
        smallest, largest = torch.stack(list(torch.aminmax(array))).tolist()
        return int(smallest), int(largest)
    return int(array.min()), int(array.max())


@dataclass(frozen=True)
class ShapeProblem:
    """One way a shape breaks an :class:`InputContract` (what :meth:`InputContract.shape_problems` finds).

    Attributes:
        kind: ``"range"`` (the size is outside ``low..high``), ``"fixed"`` (the axis must have size
            ``expected``) or ``"tie"`` (the axis shares its symbol with the axis ``tied`` names,
            whose size differs).
        input: Position of the input.
        axis: The axis.
        size: Its size in the call.
        low: ``"range"``: the smallest size accepted.
        high: ``"range"``: the largest size accepted.
        expected: ``"fixed"``: the one size accepted.
        tied: ``"tie"``: ``(input position, axis, size)`` of the first axis with the same symbol.
    """

    kind: str
    input: int
    axis: int
    size: int
    low: int = 0
    high: int = 0
    expected: int = 0
    tied: tuple[int, int, int] = (0, 0, 0)


@dataclass
class InputContract:
    """What one artifact accepts, per input in the artifact's input order.

    Attributes:
        names: Input names used in messages (leaf paths in process, tensor names when served).
        ranges: Per input, per axis, the ``(min, max)`` size accepted; None: not checked.
        axes: Per input, per axis, the size ``torch.export`` fixed or the symbol of its size
            (None for an axis with neither); None: no such contract (eager, or a description
            written before it was recorded).
        index_ranges: Per input, the value ranges its elements must lie in (empty for inputs that
            index nothing); None: not known.
        batch_axes: Per input, its batch axis or None; with ``max_batch_size`` > 0 a batch outside
            its range is named as such in messages.
        max_batch_size: The served model's ``max_batch_size`` (0: it does not batch).
    """

    names: list[str]
    ranges: list[list[tuple[int, int]]] | None = None
    axes: Sequence[Sequence[int | str | None]] | None = None
    index_ranges: list[list[IndexRange]] | None = None
    batch_axes: list[int | None] | None = None
    max_batch_size: int = 0
    _checked: list[tuple[int, list[IndexRange]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._checked = [(i, bounds) for i, bounds in enumerate(self.index_ranges or []) if bounds]

    @classmethod
    def from_io(cls, io: dict[str, Any], name_key: str = "name", batch_hint: bool = True) -> "InputContract":
        """The contract of a graph model's IO mapping (``io.json``, ``ModelIO.to_dict()``).

        Args:
            io: The mapping: ``inputs`` (each with ``name``, ``path``, ``ranges`` and
                ``batch_axis``), ``input_axes``, ``index_ranges`` and ``max_batch_size``.
            name_key: Which input field names inputs in messages (``name`` or ``path``).
            batch_hint: Whether messages name a batch outside its range as the batch axis.
        """
        index_ranges = io.get("index_ranges")
        return cls(
            names=[tensor[name_key] for tensor in io["inputs"]],
            ranges=[[(int(low), int(high)) for low, high in tensor.get("ranges", ())] for tensor in io["inputs"]],
            axes=io.get("input_axes"),
            index_ranges=None if index_ranges is None else [[IndexRange.from_dict(r) for r in per] for per in index_ranges],
            batch_axes=[tensor.get("batch_axis") for tensor in io["inputs"]],
            max_batch_size=int(io.get("max_batch_size", 0)) if batch_hint else 0,
        )

    def shape_violations(self, shapes: Sequence[Sequence[int]]) -> list[str]:
        """One line per axis outside its range, per broken tie and per axis off its fixed size.

        Args:
            shapes: Per input, its shape (module shape, in the artifact's input order).
        """
        return [self.describe(problem) for problem in self.shape_problems(shapes)]

    def shape_problems(self, shapes: Sequence[Sequence[int]]) -> list["ShapeProblem"]:
        """The one shape check: every axis outside its range, every axis off its fixed size (not
        said again for an axis already outside its range) and every axis whose size differs from
        the first axis sharing its symbol; ranges first, then fixed sizes and ties in input order.

        Args:
            shapes: Per input, its shape (module shape, in the artifact's input order; axes past
                the contract's rank are not checked).
        """
        found = []
        reported: set[tuple[int, int]] = set()
        for position, (axis_ranges, shape) in enumerate(zip(self.ranges or [], shapes)):
            for axis, ((low, high), size) in enumerate(zip(axis_ranges, shape)):
                if not low <= size <= high:
                    found.append(ShapeProblem("range", position, axis, size, low=low, high=high))
                    reported.add((position, axis))
        first: dict[str, tuple[int, int, int]] = {}
        for position, (tensor_axes, shape) in enumerate(zip(self.axes or [], shapes)):
            for axis, (expected, size) in enumerate(zip(tensor_axes, shape)):
                if expected is None:
                    continue
                if isinstance(expected, int):
                    if size != expected and (position, axis) not in reported:  # said once per axis
                        found.append(ShapeProblem("fixed", position, axis, size, expected=expected))
                elif expected not in first:
                    first[expected] = (position, axis, size)
                elif first[expected][2] != size:
                    found.append(ShapeProblem("tie", position, axis, size, tied=first[expected]))
        return found

    def describe(self, problem: "ShapeProblem") -> str:
        """The line :meth:`shape_violations` gives for ``problem``."""
        name = self.names[problem.input]
        if problem.kind == "range":
            batch_axes = self.batch_axes or [None] * len(self.names)
            batch = problem.axis == batch_axes[problem.input] and self.max_batch_size > 0
            hint = f" (the batch axis: max_batch_size {self.max_batch_size})" if batch else ""
            return f"{name} axis {problem.axis}: size {problem.size} outside {problem.low}..{problem.high}{hint}"
        if problem.kind == "fixed":
            return f"{name} axis {problem.axis}: size {problem.size}, but the artifact was built for size {problem.expected} only"
        other, other_axis, other_size = problem.tied
        return (
            f"{name} axis {problem.axis}: size {problem.size} differs from {self.names[other]} axis {other_axis} (size "
            f"{other_size}); the exported model needs them equal"
        )

    def value_violations(self, arrays: Sequence[Any]) -> list[str]:
        """One line per index-valued input holding values outside the range its indexing op accepts.

        Call it on arrays whose shapes passed :meth:`shape_violations` (a symbolic size is read
        from the input axis that carries its symbol).

        Args:
            arrays: Per input, its values (numpy arrays or torch tensors).
        """
        return [message for _, message in self._value_problems(arrays)]

    def inputs_with_bad_values(self, arrays: Sequence[Any]) -> list[int]:
        """Positions of the inputs :meth:`value_violations` reports, in input order."""
        return [position for position, _ in self._value_problems(arrays)]

    def _value_problems(self, arrays: Sequence[Any]) -> list[tuple[int, str]]:
        found = []
        for position, bounds in self._checked:
            array = arrays[position]
            if math.prod(array.shape) == 0:
                continue
            smallest, largest = _min_max(array)
            for index_range in bounds:
                size = self._size(index_range.size, arrays)
                if size is None:
                    continue
                low, high = index_range.bounds(size)
                if low <= smallest and largest <= high:
                    continue
                floor = max(low, 0) if smallest >= 0 else low  # no negative bound against unsigned dtypes (they wrap)
                bad = array[(array < floor) | (array > high)].reshape(-1)
                values = sorted(set(bad[: 10 * _SHOWN_VALUES].tolist()))[:_SHOWN_VALUES]
                count = int(bad.shape[0])
                more = f" ({count} values out of range in all)" if count > len(values) else ""
                found.append(
                    (
                        position,
                        f"{self.names[position]}: values must be in {low}..{high} (it indexes a dimension of size "
                        f"{size} in {index_range.op}), got {', '.join(str(v) for v in values)}{more}",
                    )
                )
                break
        return found

    def violations(self, arrays: Sequence[Any]) -> list[str]:
        """Everything in ``arrays`` that breaks the contract: shapes first, values when shapes fit."""
        found = self.shape_violations([tuple(array.shape) for array in arrays])
        return found or self.value_violations(arrays)

    def _size(self, size: int | str, arrays: Sequence[Any]) -> int | None:
        """An indexed dimension's size: ``size`` itself, or the size of the first input axis with that symbol."""
        if isinstance(size, int):
            return size
        for tensor_axes, array in zip(self.axes or [], arrays):
            for axis, symbol in enumerate(tensor_axes):
                if symbol == size and axis < len(array.shape):
                    return int(array.shape[axis])
        return None
