"""Output containers: flatten a module's output into leaves and rebuild it around new tensors.

Output containers that hold tensors (``transformers`` model outputs and caches, dataclasses) are
pytree nodes, so every output tensor is a leaf that backends compute for each call; a stored
structure names their types, and loading it imports the module that defines them
(:mod:`aitune_triton.spec.pytree_json`).
"""

from __future__ import annotations

import collections
import copy
import sys
import types
from typing import Any, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton.spec.flat_tree import FlatTree, _flatten
from aitune_triton.spec.pytree_json import _container_registration, _is_transformers_cache, _type_name, treespec_to_json
from aitune_triton.spec.signature import _is_json

__all__ = [
    "flat_output",
    "flatten_output",
    "holds_tensor",
    "output_leaf_paths",
    "output_leaf_problems",
    "output_leaves",
    "rebuild_output",
    "same_value",
]


def holds_tensor(value: Any) -> bool:
    """Whether ``value`` is or holds a tensor: in a list, tuple, set or dict, or in an object's
    attributes, at any depth (an iterative walk, so deep or cyclic objects are fine)."""
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            return True
        if item is None or isinstance(item, _ATOMS) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)
        else:
            pending.extend(getattr(item, "__dict__", {}).values())
            pending.extend(getattr(item, slot, None) for slot in getattr(type(item), "__slots__", ()) if isinstance(slot, str))
    return False


_ATOMS = (bool, int, float, complex, str, bytes, type, types.ModuleType, types.FunctionType, torch.dtype, torch.device)
_PLAIN_LEAVES = (torch.Tensor, *_ATOMS)  # leaves that cannot be containers holding tensors


def _register_output_containers(output: Any) -> bool:
    """Register the dataclass types among ``output``'s leaves that hold tensors, and every
    ``transformers`` cache type among them, empty ones included (see
    :func:`_container_registration`); True when any was registered."""
    registered = False
    for _ in range(16):  # a container inside a newly registered one shows up on the next pass
        found = False
        for leaf in pytree.tree_leaves(output):
            if isinstance(leaf, torch.Tensor) or type(leaf) in pytree.SUPPORTED_NODES:
                continue
            if not holds_tensor(leaf) and not _is_transformers_cache(type(leaf)):
                continue  # an empty cache is still one: its tensors are the inputs of later calls
            register = _container_registration(type(leaf))
            if register is not None:
                try:
                    register()
                except ValueError:  # registered meanwhile (by another thread or under another name)
                    continue
                found = registered = True
        if not found:
            break
    return registered


def flatten_output(output: Any) -> FlatTree:
    """Flatten a module output; a lone tensor gets the path ``output``.

    Containers that hold tensors and are not registered with ``torch.utils._pytree`` yet are
    registered first when they are dataclasses or ``transformers`` caches (``DynamicCache``), so
    their tensors become leaves (``cache.0``, ``cache.1``... for a cache, ``field`` names for a
    dataclass) and :func:`rebuild_output` builds the container again around new tensors. The
    registration is global to the process, as ``torch.export`` needs it to trace the same output.
    Other non-tensor leaves stay leaves; see :func:`output_leaf_problems`.
    """
    flat = _flatten(output, root="output")
    _name_namedtuples(flat.treespec)
    if any(not isinstance(leaf, torch.Tensor) for leaf in flat.leaves) and _register_output_containers(output):
        flat = _flatten(output, root="output")
    return flat


def _name_namedtuples(treespec: pytree.TreeSpec) -> None:
    """Give each namedtuple type in ``treespec`` a serialized type name: torch flattens every
    namedtuple, but stores (``treespec_dumps``) only registered ones."""
    pending = [treespec]
    while pending:
        node = pending.pop()
        if (
            node.type is collections.namedtuple
            and isinstance(node.context, type)
            and node.context not in pytree.SUPPORTED_SERIALIZED_TYPES
        ):
            try:
                pytree._register_namedtuple(node.context, serialized_type_name=_type_name(node.context))
            except ValueError:  # registered meanwhile
                pass
        pending.extend(node.children())


def same_value(expected: Any, value: Any) -> bool:
    """Whether two non-tensor leaves are equal: same type and ``==`` (False when ``==`` raises or
    has no truth value, as for arrays)."""
    try:
        return type(expected) is type(value) and bool(expected == value)
    except Exception:
        return False


def _is_array(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def output_leaf_problems(flat: FlatTree) -> list[str]:
    """One line per non-tensor output leaf that holds tensors (a container no backend can rebuild:
    it would come back as the object of a recorded call, with that call's tensors), is a numpy
    array (data no backend computes) or cannot be stored as JSON (an Enum, a dtype); and one line
    when the output structure itself cannot be stored (``treespec_dumps``)."""
    problems = []
    for path, leaf in zip(flat.paths, flat.leaves):
        if isinstance(leaf, torch.Tensor):
            continue
        if _is_array(leaf):
            problems.append(
                f"output leaf {path!r} is a numpy array, which no backend computes (it would come back as recorded): "
                "return a torch tensor instead"
            )
        elif holds_tensor(leaf):
            problems.append(
                f"output leaf {path!r} is a {_type_name(type(leaf))} that holds tensors, and torch.utils._pytree does "
                "not know how to flatten it, so a backend cannot compute them for a new call. Register the type with "
                "torch.utils._pytree (register_dataclass, or register_pytree_node with serialized_type_name and "
                "flatten_with_keys_fn) or return tuples, lists and dicts of tensors (Hugging Face models: "
                "use_cache=False drops the cache)"
            )
        elif not _is_json(leaf):
            problems.append(
                f"output leaf {path!r} is a {_type_name(type(leaf))}, which a checkpoint cannot store (non-tensor "
                "outputs are stored as JSON): return it as a tensor, or as a str, number, bool or None"
            )
    if not problems:
        try:
            treespec_to_json(flat.treespec)
        except Exception as error:
            problems.append(f"the output structure cannot be stored: {error}")
    return problems


def rebuild_output(treespec: pytree.TreeSpec, template: Sequence[Any], tensors: Sequence[torch.Tensor]) -> Any:
    """Put output tensors back into the structure recorded for a graph spec.

    Args:
        treespec: Output structure.
        template: Leaves with ``None`` where tensors go and constants elsewhere.
        tensors: Output tensors in flattening order.

    Raises:
        OutputStructureError: the number of tensors does not match the template.
    """
    leaves = output_leaves(template, tensors)
    if treespec.is_leaf():  # a lone tensor: nothing to rebuild
        return leaves[0]
    return pytree.tree_unflatten(leaves, treespec)


def output_leaves(template: Sequence[Any], tensors: Sequence[torch.Tensor]) -> list[Any]:
    """Every output leaf in flattening order: ``tensors`` in the template's ``None`` slots, copies of
    its constants elsewhere (a caller changing a returned list must not change later outputs).

    Raises:
        OutputStructureError: the number of tensors does not match the template.
    """
    slots = sum(1 for leaf in template if leaf is None)
    if slots != len(tensors):
        from aitune_triton.errors import OutputStructureError  # only when raising: every tuned call comes here

        raise OutputStructureError(f"Expected {slots} output tensors for the recorded structure, got {len(tensors)}.")
    if slots == len(template):  # every leaf a tensor (the common case): no constant to copy
        return list(tensors)
    iterator = iter(tensors)
    return [next(iterator) if leaf is None else copy.deepcopy(leaf) for leaf in template]


def flat_output(paths: Sequence[str], template: Sequence[Any], tensors: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The output as a plain dict ``{leaf path: tensor or constant}`` in flattening order, for a
    client that cannot rebuild the module's own containers.

    Raises:
        OutputStructureError: the number of tensors or paths does not match the template.
    """
    from aitune_triton.errors import OutputStructureError

    leaves = output_leaves(template, tensors)
    if len(paths) != len(leaves):
        raise OutputStructureError(f"Expected {len(leaves)} output leaf paths for the recorded structure, got {len(paths)}.")
    return dict(zip(paths, leaves))


def output_leaf_paths(template: Sequence[Any], tensor_paths: Sequence[str]) -> list[str]:
    """Leaf paths of a description that stored only its tensor paths: those in the template's
    tensor slots, ``output_leaf_<i>`` for its constants."""
    paths = iter(tensor_paths)
    return [next(paths, f"output_leaf_{i}") if leaf is None else f"output_leaf_{i}" for i, leaf in enumerate(template)]
