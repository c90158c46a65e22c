"""The size range of one dynamic dimension: ``DimRange(min, opt, max)``.

A graph spec keeps one :class:`DimRange` per dynamic dimension name (``batch``, ``seq``,
``dim0``...): the smallest and largest sizes its artifacts accept and the size to optimize for
(the declared ``opt`` of a :class:`~aitune_triton.module.dims.DynamicDim` / ``BatchDim``, else the
size recorded most often; after a batch size sweep, the batch dimension's opt is the preferred
batch size it measured). A recorded range may hold one size (``min == max``); a declared one may
not (see :mod:`aitune_triton.module.dims`).

Stored as JSON ``[min, opt, max]``; descriptions written before opt was kept store ``[min, max]``
and are read with opt derived (:meth:`DimRange.from_json`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["DimRange"]


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class DimRange:
    """Sizes of one dynamic dimension: smallest, to optimize for, largest.

    Attributes:
        min: Smallest size accepted (elements along the axis).
        opt: Size to optimize for (optimization profiles, the dynamic batcher's preferred batch
            size, warmup); ``min <= opt <= max``.
        max: Largest size accepted.

    Raises:
        InvalidArgumentError: (a ValueError) a size is not a non-negative integer, or
            ``min <= opt <= max`` does not hold; the message names the values.
    """

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not all(_is_size(value) for value in (self.min, self.opt, self.max)) or not self.min <= self.opt <= self.max:
            from aitune_triton.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"DimRange: expected non-negative integer sizes with min <= opt <= max, got min={self.min!r}, "
                f"opt={self.opt!r}, max={self.max!r}. Pass sizes in that order."
            )

    @classmethod
    def of_sizes(cls, sizes: Iterable[int], low: int | None = None, high: int | None = None) -> "DimRange":
        """The range of recorded ``sizes``: from their smallest (or ``low``) to their largest (or
        ``high``), opt the size recorded most often (ties: the larger), kept within the range.

        Raises:
            InvalidArgumentError: ``sizes`` is empty, or the result breaks ``min <= opt <= max``.
        """
        counts = collections.Counter(int(size) for size in sizes)
        if not counts:
            from aitune_triton.errors import InvalidArgumentError

            raise InvalidArgumentError("DimRange.of_sizes: expected at least one recorded size, got none.")
        low = min(counts) if low is None else low
        high = max(counts) if high is None else high
        opt = max(counts, key=lambda size: (counts[size], size))
        return cls(low, min(max(opt, low), high), high)

    @classmethod
    def from_json(cls, value: Any, opt: int | None = None) -> "DimRange":
        """Read ``[min, opt, max]``, or ``[min, max]`` as older descriptions store it (opt is then
        ``opt`` when given and within the range, else max).

        Raises:
            InvalidArgumentError: ``value`` is neither form of non-negative integers in order.
        """
        if not isinstance(value, (list, tuple)) or len(value) not in (2, 3) or not all(_is_size(v) for v in value):
            from aitune_triton.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"DimRange: expected [min, opt, max] (or [min, max]) of non-negative integers, got {value!r}"
            )
        if len(value) == 3:
            return cls(int(value[0]), int(value[1]), int(value[2]))
        low, high = int(value[0]), int(value[1])
        return cls(low, opt if opt is not None and _is_size(opt) and low <= opt <= high else high, high)

    def to_json(self) -> list[int]:
        """``[min, opt, max]``."""
        return [self.min, self.opt, self.max]

    @property
    def bounds(self) -> tuple[int, int]:
        """``(min, max)``, as an input contract checks a size against."""
        return self.min, self.max

    def with_max(self, high: int) -> "DimRange":
        """A copy whose max is ``high`` (opt lowered to it when above)."""
        return DimRange(min(self.min, high), min(self.opt, high), high)

    def with_opt(self, opt: int) -> "DimRange":
        """A copy whose opt is ``opt``."""
        return DimRange(self.min, opt, self.max)

    def __contains__(self, size: object) -> bool:
        return isinstance(size, int) and self.min <= size <= self.max

    def __str__(self) -> str:
        return f"{self.min}..{self.max} (opt {self.opt})"
