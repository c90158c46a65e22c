"""Dtype names, pytree structures as JSON, and the import of the container types they name.

A module's output structure is stored with ``torch.utils._pytree.treespec_dumps``; loading it
(:func:`treespec_from_json`) imports the module that defines each container type it names and
registers dataclasses and ``transformers`` caches the way recording registered them. Nothing is
unpickled.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
from typing import Any, Callable, Sequence

import torch
import torch.utils._pytree as pytree

__all__ = [
    "dtype_from_name",
    "dtype_name",
    "import_serialized_type",
    "keypath_name",
    "treespec_from_json",
    "treespec_to_json",
]


def dtype_name(dtype: torch.dtype) -> str:
    """Return the short name of a torch dtype (``torch.float32`` -> ``"float32"``)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Return the torch dtype for a short name such as ``"float32"``.

    Raises:
        InvalidArgumentError: (a ValueError) ``name`` is not the name of a torch dtype.
    """
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        from aitune_triton.errors import InvalidArgumentError

        raise InvalidArgumentError(f"dtype name: expected a torch dtype name such as 'float32', got {name!r}")
    return dtype


def _key_entry_name(entry: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def keypath_name(path: Sequence[Any]) -> str:
    """Join a pytree key path into a dotted leaf path (``("past", "key", 3)`` -> ``past.key.3``)."""
    return ".".join(_key_entry_name(entry) for entry in path)


def treespec_to_json(treespec: pytree.TreeSpec) -> str:
    """Serialize a pytree structure to JSON with ``torch.utils._pytree.treespec_dumps``.

    Raises:
        RecordingError: a node type of the structure was registered without a serialized type
            name, so the structure cannot be stored without pickling.
    """
    from aitune_triton.errors import RecordingError

    try:
        return pytree.treespec_dumps(treespec)
    except Exception as error:  # torch raises NotImplementedError/TypeError depending on the node
        raise RecordingError(
            f"Cannot serialize the structure {treespec} ({error}). Register the container type with "
            "torch.utils._pytree.register_pytree_node(..., serialized_type_name=...) or return "
            "tuples, lists and dicts of tensors."
        ) from error


def _serialized_type_names(text: str) -> list[str]:
    """The node type names a ``treespec_dumps`` JSON text uses, in first-seen order."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("type"), str) and node["type"] not in names:
                names.append(node["type"])
            if node.get("type") == "collections.namedtuple" and isinstance(node.get("context"), str):
                names.append(node["context"])  # a namedtuple's own type name is its node's context
            for child in node.get("children_spec") or ():
                walk(child)

    try:
        data = json.loads(text)
    except ValueError:
        return names
    if isinstance(data, list) and len(data) == 2:
        walk(data[1])
    return names


_TYPE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


def import_serialized_type(name: str) -> type | None:
    """Make the pytree node type stored as ``name`` known in this process, by importing its module.

    ``name`` is a ``serialized_type_name`` (``transformers.modeling_outputs.BaseModelOutput``,
    ``pkg.module:Class``). The module that defines the type is imported (the longest importable
    prefix of ``name``); a module that registers its types when imported (``transformers`` model
    outputs) needs nothing more. A dataclass or a ``transformers`` cache class found there is then
    registered as :func:`flatten_output` registers it while recording. Nothing else is run: no
    object is unpickled and no name outside ``name`` is imported.

    Returns:
        The registered type, or None when no importable module defines it.
    """
    registered = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name)
    if registered is not None:
        return registered
    if not _TYPE_NAME.fullmatch(name):
        return None
    top = name.split(".")[0].split(":")[0]
    if top == "builtins":
        return None
    if top == "__main__":  # defined by the running script: look it up there, never import anything
        qualname = name.replace(":", ".").partition(".")[2]
        return _register_found(name, sys.modules.get("__main__"), qualname) if qualname else None
    if top not in sys.modules and not _import_top_level_outside_the_working_directory(top):
        return None  # never a file that merely lies in the current directory (a server names these types)
    if ":" in name:
        module_name, qualname = name.split(":", 1)
        splits = [(module_name, qualname)]
    else:
        parts = name.split(".")
        splits = [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    for module_name, qualname in splits:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # not installed, or fails to import: try a shorter prefix
            continue
        found = _register_found(name, module, qualname)
        if found is not None:
            return found
    return None


def _import_top_level_outside_the_working_directory(top: str) -> bool:
    """Import the top-level module ``top`` from ``sys.path`` without its implicit entry for the
    current directory (``''``, ``.`` or the working directory itself): installed packages and other
    ``PYTHONPATH`` entries count, a ``setup.py`` (or a file named like an installed module) lying
    where the process was started does not. Its submodules then come from its own package path.

    Returns:
        Whether ``top`` is imported now.
    """
    import importlib.machinery
    import importlib.util

    here = os.path.abspath(os.getcwd())
    paths = [entry for entry in sys.path if entry and os.path.abspath(entry) != here]
    spec = importlib.machinery.PathFinder.find_spec(top, paths)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(top, None)
        return False
    return True


def _register_found(name: str, module: Any, qualname: str) -> type | None:
    """Find ``qualname`` in ``module`` and register it as :func:`flatten_output` would; the type or None."""
    found = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and name not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
        register = _container_registration(found)
        if register is not None:
            register()
    return pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(name)


def treespec_from_json(text: str) -> pytree.TreeSpec:
    """Rebuild a pytree structure stored with :func:`treespec_to_json`.

    A node type that is not registered in this process is looked up with
    :func:`import_serialized_type` (its defining module is imported); nothing is unpickled.

    Raises:
        UnknownOutputTypeError: (a RecordingError) the structure names a type that no importable
            module defines (the package is not installed, or the type was defined in a script's
            ``__main__``), or the text is not a stored structure.
    """
    from aitune_triton.errors import UnknownOutputTypeError

    try:
        return pytree.treespec_loads(text)
    except Exception as error:
        first_error = error
    missing = [name for name in _serialized_type_names(text) if import_serialized_type(name) is None]
    if not missing:
        try:
            return pytree.treespec_loads(text)
        except Exception as error:
            first_error = error
    detail = f"types not registered with torch.utils._pytree here: {missing}" if missing else str(first_error)
    raise UnknownOutputTypeError(
        f"Cannot rebuild the stored output structure ({detail}). Importing the module that defines each type did "
        "not make it known: install the package that defines it in this environment (a type defined in a script's "
        "__main__ cannot be found from another process)."
    ) from first_error


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _container_registration(cls: type) -> Callable[[], None] | None:
    """How to register ``cls`` as a pytree node so that the tensors it holds become output leaves.

    Dataclasses are registered with ``torch.utils._pytree.register_dataclass`` (leaf paths name
    the fields); ``transformers`` cache classes (``DynamicCache``...) with ``transformers``' own
    registration (the one its ``torch.export`` exporter uses). None for any other type.
    """
    if dataclasses.is_dataclass(cls):
        return lambda: pytree.register_dataclass(cls, serialized_type_name=_type_name(cls))
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):  # a namedtuple: flattened by default, stored once named
        return lambda: pytree._register_namedtuple(cls, serialized_type_name=_type_name(cls))
    if "transformers" not in sys.modules:
        return None
    try:
        from transformers.exporters.exporter_dynamo import register_pytree_node
    except ImportError:  # a transformers release without a cache registration of its own
        return None
    if _is_transformers_cache(cls):
        return lambda: register_pytree_node(cls)
    return None


def _is_transformers_cache(cls: type) -> bool:
    """Whether ``cls`` is a ``transformers`` cache class (``DynamicCache``...), by the rule
    :func:`_container_registration` registers them with."""
    if "transformers" not in sys.modules:
        return False
    try:
        from transformers.cache_utils import Cache
    except ImportError:
        return False
    return issubclass(cls, Cache) or (cls.__module__.split(".")[0] == "transformers" and cls.__name__.endswith("Cache"))
