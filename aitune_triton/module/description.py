"""The tuned module description (``Module.to_dict()``): its identifiers and structural check."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["STATE_DICT_FORMAT_VERSION", "STATE_DICT_KEY", "STATE_DICT_TYPE", "state_dict_problem"]

STATE_DICT_TYPE = "aitune_triton.Module"
STATE_DICT_FORMAT_VERSION = 1
#: Key of the tuned description in a parent module's ``state_dict()`` (after the submodule prefix).
STATE_DICT_KEY = "_aitune_triton"


def state_dict_problem(state_dict: Any) -> str | None:
    """What makes ``state_dict`` unlike ``Module.to_dict()`` output, or None."""
    if not isinstance(state_dict, Mapping):
        return f"expected a dict, got {type(state_dict).__name__}"
    if state_dict.get("type") != STATE_DICT_TYPE:
        return f"'type' is {state_dict.get('type')!r}"
    if not isinstance(state_dict.get("name"), str):
        return "'name' is not a string"
    signature = state_dict.get("signature")
    if not isinstance(signature, list) or not all(
        isinstance(p, Mapping) and isinstance(p.get("name"), str) and isinstance(p.get("kind"), str) for p in signature
    ):
        return "'signature' is not a list of parameters"
    graphs = state_dict.get("graphs")
    if not isinstance(graphs, list) or not graphs:
        return "'graphs' is not a non-empty list"
    for index, entry in enumerate(graphs):
        graph = entry.get("graph") if isinstance(entry, Mapping) else None
        backend = entry.get("backend") if isinstance(entry, Mapping) else None
        if not isinstance(graph, Mapping) or not all(
            isinstance(graph.get(key), kind)
            for key, kind in (("name", str), ("key", str), ("inputs", list), ("outputs", list), ("output_treespec", str))
        ):
            return f"graphs[{index}].graph is not a graph spec description"
        if not isinstance(backend, Mapping) or not isinstance(backend.get("name"), str):
            return f"graphs[{index}].backend has no name"
        if not isinstance(backend.get("artifacts", {}), Mapping):
            return f"graphs[{index}].backend.artifacts is not a dict"
    return None
