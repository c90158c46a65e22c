"""A bounded store of recorded calls."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.utils._pytree as pytree

from aitune_triton.errors import InvalidArgumentError

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


def _extreme_indices(shapes: list[list[tuple[int, ...]]]) -> set[int]:
    """Indices of the calls holding the smallest or largest size of some varying axis (oldest wins ties)."""
    keep: set[int] = set()
    axes = {(leaf, axis) for call in shapes for leaf, shape in enumerate(call) for axis in range(len(shape))}
    for leaf, axis in axes:
        sizes = [(call[leaf][axis], i) for i, call in enumerate(shapes) if leaf < len(call) and axis < len(call[leaf])]
        if len({size for size, _ in sizes}) < 2:
            continue  # a static axis has no end points to keep
        keep.add(min(sizes)[1])
        keep.add(min(sizes, key=lambda item: (-item[0], item[1]))[1])
    return keep


def _plain(value: Any) -> bool:
    """Whether ``torch.load(weights_only=True)`` can read ``value`` back: tensors and builtin
    scalars in plain tuples, lists and str-keyed dicts."""
    if isinstance(value, (torch.Tensor, int, float, complex, str, bytes, type(None))):
        return True
    if type(value) in (tuple, list):
        return all(_plain(item) for item in value)
    if type(value) is dict:
        return all(isinstance(key, str) and _plain(item) for key, item in value.items())
    return False


@dataclass
class _Entry:
    shapes: list[tuple[int, ...]]
    numel: int
    path: Path | None = None
    sample: Sample | None = None

    def load(self) -> Sample:
        if self.sample is not None:
            return self.sample
        if self.path is None:
            raise RuntimeError("a stored sample has neither data in memory nor a file")
        data = torch.load(self.path, weights_only=True)  # tensors and builtins only: no code runs
        return Sample(tuple(data["args"]), dict(data["kwargs"]), self.shapes)


class SampleStore:
    """Keeps at most ``max_samples`` calls of one graph spec, on disk when a directory is given.

    When full, a new call evicts the oldest stored call that holds neither the smallest nor the
    largest size of any varying axis, so the shape range's end points stay available for export
    and validation (the oldest call goes only when every stored call is such an end point).

    With ``directory``, each call is written with ``torch.save`` and read back with
    ``torch.load(weights_only=True)``; only shapes stay in memory. Calls holding other objects
    than tensors and builtin scalars in tuples, lists and dicts stay in memory.

    Args:
        max_samples: Upper bound on stored calls (>= 1).
        directory: Where calls are written (created on first use); None keeps them in memory.

    Raises:
        InvalidArgumentError: (a ValueError) ``max_samples`` is below 1.
    """

    def __init__(self, max_samples: int = 32, directory: Path | None = None):
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise InvalidArgumentError(f"max_samples: expected an integer >= 1, got {max_samples!r}")
        self.max_samples = max_samples
        self.directory = Path(directory) if directory is not None else None
        self._entries: list[_Entry] = []
        self._written = 0

    def add(self, sample: Sample) -> None:
        """Store ``sample``, evicting one stored sample when the store is full."""
        entry = _Entry(sample.shapes, sample.numel)
        if self.directory is not None and _plain((sample.args, sample.kwargs)):
            self.directory.mkdir(parents=True, exist_ok=True)
            entry.path = self.directory / f"sample_{self._written:06d}.pt"
            self._written += 1
            torch.save({"args": list(sample.args), "kwargs": dict(sample.kwargs)}, entry.path)
        else:
            entry.sample = sample
        self._entries.append(entry)
        if len(self._entries) > self.max_samples:
            keep = _extreme_indices([e.shapes for e in self._entries])
            victim = next((i for i in range(len(self._entries)) if i not in keep), 0)
            removed = self._entries.pop(victim)
            if removed.path is not None:
                removed.path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[Sample]:
        return (entry.load() for entry in list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def on_disk(self) -> int:
        """How many stored calls live on disk."""
        return sum(1 for e in self._entries if e.path is not None)

    def largest(self) -> Sample:
        """The stored call with the most tensor elements (the export example).

        Raises:
            IndexError: the store is empty.
        """
        if not self._entries:
            raise IndexError("no samples stored")
        return max(self._entries, key=lambda e: e.numel).load()

    def clear(self) -> None:
        """Forget every stored call and delete their files."""
        for entry in self._entries:
            if entry.path is not None:
                entry.path.unlink(missing_ok=True)
        self._entries.clear()
