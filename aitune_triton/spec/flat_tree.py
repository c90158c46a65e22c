"""A flattened pytree with the dotted path of every leaf (``input_ids``, ``past.key.3``, ``hidden.0``).

Leaf paths name leaves deterministically from the pytree key path. A module's output leaves are
named the same way, with ``output`` for a lone tensor and an ``output.`` prefix when the top level
is a sequence (``output.0``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from aitune_triton.spec.pytree_json import dtype_name, keypath_name

__all__ = ["FlatTree"]


def _describe_constant(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return repr(value)


@dataclass
class FlatTree:
    """A flattened pytree: structure, leaves and the dotted path of every leaf."""

    treespec: pytree.TreeSpec
    leaves: list[Any]
    paths: list[str]

    @property
    def tensor_indices(self) -> list[int]:
        """Positions of tensor leaves in :attr:`leaves`."""
        return [i for i, leaf in enumerate(self.leaves) if isinstance(leaf, torch.Tensor)]

    @property
    def tensors(self) -> list[torch.Tensor]:
        """Tensor leaves in flattening order."""
        return [leaf for leaf in self.leaves if isinstance(leaf, torch.Tensor)]

    @property
    def tensor_paths(self) -> list[str]:
        """Dotted paths of the tensor leaves."""
        return [self.paths[i] for i in self.tensor_indices]

    @property
    def constants(self) -> dict[str, str]:
        """Path -> description (``const(value)``) of every non-tensor leaf."""
        return {
            path: description
            for path, leaf, description in zip(self.paths, self.leaves, self.leaf_descriptions())
            if not isinstance(leaf, torch.Tensor)
        }

    @property
    def template(self) -> list[Any]:
        """Leaves with ``None`` in place of each tensor: the constant part of the tree."""
        return [None if isinstance(leaf, torch.Tensor) else leaf for leaf in self.leaves]

    def leaf_descriptions(self, strict: bool = True) -> list[str]:
        """Per leaf ``tensor(dtype, rank=N)`` or ``const(value)`` (``const`` alone if not strict)."""
        out = []
        for leaf in self.leaves:
            if isinstance(leaf, torch.Tensor):
                out.append(f"tensor({dtype_name(leaf.dtype)}, rank={leaf.dim()})")
            else:
                out.append(f"const({_describe_constant(leaf)})" if strict else "const")
        return out


def _flatten(tree: Any, root: str | None) -> FlatTree:
    with_path, treespec = pytree.tree_flatten_with_path(tree)
    paths = []
    for path, _ in with_path:
        name = keypath_name(path)
        if root is not None and (not name or (path and isinstance(path[0], pytree.SequenceKey))):
            name = f"{root}.{name}" if name else root
        paths.append(name)
    return FlatTree(treespec, [leaf for _, leaf in with_path], paths)

