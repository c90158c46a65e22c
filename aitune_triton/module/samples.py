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
        extends_range: Whether the call widened the recorded shape range when it was recorded.
    """

    args: tuple
    kwargs: dict
    extends_range: bool

    @property
    def numel(self) -> int:
        """Total number of tensor elements in the call."""
        return sum(t.numel() for t in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(t, torch.Tensor))


class SampleStore:
    """Keeps at most ``max_samples`` calls of one graph spec.

    When full, a new call evicts the oldest call that did not widen the shape range, so the
    smallest and largest shapes seen stay available for export and validation.

    Args:
        max_samples: Upper bound on stored calls (>= 1).

    Raises:
        ValueError: ``max_samples`` is below 1.
    """

    def __init__(self, max_samples: int = 32):
        if max_samples < 1:
            raise ValueError(f"max_samples: expected an integer >= 1, got {max_samples!r}")
        self.max_samples = max_samples
        self._samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        """Store ``sample``, evicting one older sample when the store is full."""
        if len(self._samples) >= self.max_samples:
            victim = next((i for i, s in enumerate(self._samples) if not s.extends_range), 0)
            del self._samples[victim]
        self._samples.append(sample)

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
