"""Finding the :class:`~aitune_triton.Module` wrappers that a model or pipeline holds, by attribute path.

A checkpoint stores each wrapped submodule under the attribute path where its parent holds it
(``""`` for a Module on its own, ``"encoder"``, ``"text_encoder.layer.0"``, ``"unet"`` in a
pipeline); :mod:`aitune_triton.checkpoint` uses these helpers to find them when saving and to put
loaded wrappers back in place when loading.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from aitune_triton.errors import ArgumentTypeError
from aitune_triton.module.routing import live_wrapper_of
from aitune_triton.module.state import ModuleState
from aitune_triton.module.wrapper import Module

__all__ = ["no_wrapped_submodule_message", "replace_at_path", "resolve_path", "wrapped_submodules"]


def _module_roots(obj: Any) -> list[tuple[str, torch.nn.Module]]:
    """``[("", obj)]`` for a torch module (a Module proxy included), else the ``torch.nn.Module``
    attributes of a pipeline object, in attribute order."""
    if isinstance(obj, torch.nn.Module):  # True for an aitune_triton.Module too (a transparent proxy)
        return [("", obj)]
    try:
        attributes = vars(obj)
    except TypeError:
        raise ArgumentTypeError(
            f"obj: expected an aitune_triton.Module, a torch.nn.Module holding wrapped submodules, or an object whose "
            f"attributes are torch modules (a pipeline), got {type(obj).__name__} without attributes"
        ) from None
    return [(name, value) for name, value in attributes.items() if isinstance(value, torch.nn.Module)]


def _module_tree(obj: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    """Every torch module reachable from ``obj`` once, under its first attribute path, as its parent
    holds it. ``named_modules()`` is not enough: it reaches a wrapped submodule through the proxy and
    yields the bare module, so the wrapper a parent holds is seen through ``named_children()``."""
    seen: set[int] = set()

    def visit(path: str, module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
        bare = module.module if isinstance(module, Module) else module
        if id(bare) in seen:
            return
        seen.add(id(bare))
        yield path, module
        if isinstance(module, Module) and module.state is ModuleState.TUNED:
            return  # what it holds runs inside its backends
        for name, child in module.named_children():
            yield from visit(f"{path}.{name}" if path else name, child)

    for path, root in _module_roots(obj):
        yield from visit(path, root)


def wrapped_submodules(obj: Any) -> list[tuple[str, Module]]:
    """The :class:`~aitune_triton.Module` wrappers that ``obj`` holds, with their attribute paths.

    ``obj`` is a Module (path ``""``), a ``torch.nn.Module`` whose submodules were wrapped and
    assigned into their parents (``model.encoder = Module(model.encoder)``: ``"encoder"``), or any
    object with torch module attributes, such as a diffusers or transformers pipeline (``"unet"``,
    ``"text_encoder.encoder.layer.0"``). Each module counts once, under its first path; the
    submodules of a tuned wrapper are not searched (they run inside its backends).

    Returns:
        ``(attribute path, wrapper)`` pairs in module order.

    Raises:
        ArgumentTypeError: ``obj`` is neither a torch module nor an object with attributes.
    """
    return [(path, module) for path, module in _module_tree(obj) if isinstance(module, Module)]


def no_wrapped_submodule_message(obj: Any) -> str:
    """The error text for ``obj`` holding no wrapped submodule at an attribute path: it names the
    Modules created but not assigned into ``obj`` (a wrapper kept in a local variable), if any."""
    unassigned = [
        f"'{path}' (wrapped by Module '{wrapper.name}')"
        for path, module in _module_tree(obj)
        if not isinstance(module, Module) and (wrapper := live_wrapper_of(module)) is not None
    ]
    hint = (
        f" These submodules have a live wrapper that their parent does not hold: {', '.join(unassigned)}; assign "
        "it into the parent (model.encoder = wrapper) so that the parent calls it."
        if unassigned
        else " Wrap the submodules to tune and assign them into their parent "
        "(model.encoder = aitune_triton.Module(model.encoder)), then record and tune."
    )
    return f"obj: {type(obj).__name__} holds no aitune_triton.Module, so there is nothing tuned to save.{hint}"


def resolve_path(obj: Any, path: str) -> torch.nn.Module:
    """The module at attribute path ``path`` in ``obj`` (a wrapper where its parent holds one).

    Raises:
        AttributeError: a step of the path is missing or not a torch module.
    """
    if not path:
        if not isinstance(obj, torch.nn.Module):
            raise AttributeError(f"{type(obj).__name__} is not a torch.nn.Module")
        return obj
    if isinstance(obj, torch.nn.Module):
        return obj.get_submodule(path)
    head, _, rest = path.partition(".")
    value = getattr(obj, head)
    if not isinstance(value, torch.nn.Module):
        raise AttributeError(f"attribute {head!r} is a {type(value).__name__}, not a torch.nn.Module")
    return value.get_submodule(rest) if rest else value


def replace_at_path(obj: Any, path: str, wrapper: Module | torch.nn.Module) -> None:
    """Put ``wrapper`` where ``path`` points, in place of the bare module there (or the bare module
    back in place of the wrapper, undoing a failed load)."""
    parent_path, _, attribute = path.rpartition(".")
    parent = resolve_path(obj, parent_path) if parent_path else obj
    setattr(parent, attribute, wrapper)
