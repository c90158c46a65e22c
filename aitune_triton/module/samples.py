"""A bounded store of recorded calls."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

__all__ = ["Sample", "SampleStore", "copy_call"]


def _copy_leaf(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return leaf.detach().clone()
    try:
        return copy.deepcopy(leaf)
    except Exception:  # objects that refuse to be copied are kept by reference
        return leaf


def copy_call(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Deep-copy a call's arguments (tensors detached and cloned), so later in-place changes by the
    caller or by ``forward`` do not change what was recorded."""
    return pytree.tree_map(_copy_leaf, (tuple(args), dict(kwargs)))


@dataclass
class Sample:
    """One recorded call.

    Attributes:
        args: Copied positional arguments.
        kwargs: Copied keyword arguments.
        shapes: Shape of each tensor input leaf, in flattening order.
    """

    args: tuple
    kwargs: dict
    shapes: list[tuple[int, ...]]

    @property
    def numel(self) -> int:
        """Total number of tensor elements in the call."""
        return sum(t.numel() for t in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(t, torch.Tensor))


def _extreme_indices(samples: list[Sample]) -> set[int]:
    """Indices of the samples holding the smallest or largest size of some varying axis (oldest wins ties)."""
    keep: set[int] = set()
    axes = {(leaf, axis) for s in samples for leaf, shape in enumerate(s.shapes) for axis in range(len(shape))}
    for leaf, axis in axes:
        sizes = [(s.shapes[leaf][axis], i) for i, s in enumerate(samples) if leaf < len(s.shapes) and axis < len(s.shapes[leaf])]
        if len({size for size, _ in sizes}) < 2:
            continue  # a static axis has no end points to keep
        keep.add(min(sizes)[1])
        keep.add(min(sizes, key=lambda item: (-item[0], item[1]))[1])
    return keep


class SampleStore:
    """Keeps at most ``max_samples`` calls of one graph spec.

    When full, a new call evicts the oldest stored call that holds neither the smallest nor the
    largest size of any axis, so the shape range's end points stay available for export and
    validation (the oldest call goes only when every stored call is such an end point).

    Args:
        max_samples: Upper bound on stored calls (>= 1).

    Raises:
        ValueError: ``max_samples`` is below 1.
    """

    def __init__(self, max_samples: int = 32):
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples: expected an integer >= 1, got {max_samples!r}")
        self.max_samples = max_samples
        self._samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        """Store ``sample``, evicting one stored sample when the store is full."""
        self._samples.append(sample)
        if len(self._samples) > self.max_samples:
            keep = _extreme_indices(self._samples)
            victim = next((i for i in range(len(self._samples)) if i not in keep), 0)
            del self._samples[victim]

    def __iter__(self):
        return iter(list(self._samples))

    def __len__(self) -> int:
        return len(self._samples)

    def largest(self) -> Sample:
        """The stored call with the most tensor elements (the export example).

        Raises:
            IndexError: the store is empty.
        """
        if not self._samples:
            raise IndexError("no samples stored")
        return max(self._samples, key=lambda s: s.numel)
