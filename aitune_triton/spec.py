"""Graph specs: the structure of a module's calls, independent of tensor sizes.

A call is bound to the module's forward signature, giving a dict ``{parameter name: value}`` of the
arguments that were actually passed. That dict is flattened with ``torch.utils._pytree``; its tree
structure plus, per leaf, the tensor dtype and rank (or the constant value of a non-tensor leaf)
form the call's *key*. Calls with the same key share one :class:`GraphSpec`; calls that differ
only in tensor sizes do too.

Leaf paths name leaves deterministically from the pytree key path: ``input_ids``,
``past.key.3``, ``hidden.0``. A module's output leaves are named the same way, with ``output``
for a lone tensor and an ``output.`` prefix when the top level is a sequence (``output.0``).
Output containers that hold tensors (``transformers`` model outputs and caches, dataclasses) are
pytree nodes, so every output tensor is a leaf that backends compute for each call; a stored
structure names their types, and loading it imports the module that defines them.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import importlib
import inspect
import json
import math
import os
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Sequence

import torch
import torch.utils._pytree as pytree

__all__ = [
    "CallLayouts",
    "CallStructure",
    "ForwardSignature",
    "GraphSpec",
    "ParameterSpec",
    "StoredCall",
    "TensorSpec",
    "axis_range",
    "check_graph_dict",
    "dtype_from_name",
    "dtype_name",
    "flatten_call",
    "flatten_output",
    "flat_output",
    "output_leaf_problems",
    "rebuild_output",
    "output_leaves",
    "output_leaf_paths",
    "same_value",
    "holds_tensor",
    "import_serialized_type",
    "treespec_from_json",
    "treespec_to_json",
]

_MISSING = object()


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


def _describe_constant(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return repr(value)


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a forward signature.

    Attributes:
        name: Parameter name.
        kind: ``inspect.Parameter`` kind name, e.g. ``"POSITIONAL_OR_KEYWORD"``.
        has_default: Whether the parameter may be omitted.
        default_json: The default value as JSON when it is a JSON scalar (``"1.0"``, ``"null"``,
            ``"true"``...), else None. A call passing exactly this value binds as if it had
            omitted the argument.
    """

    name: str
    kind: str
    has_default: bool
    default_json: str | None = None


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _json_scalar(value: Any) -> str | None:
    """JSON text of a None/bool/int/float/str value, else None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value)
    return None


def call_signature(function: Any) -> inspect.Signature:
    """The parameters a call of ``function`` must fit.

    ``inspect.signature`` follows ``__wrapped__`` (set by ``functools.wraps`` /
    ``functools.update_wrapper``); that gives the parameters of the wrapped function, which is
    right for a generic ``(*args, **kwargs)`` decorator but wrong for a callable with parameters of
    its own (a ``functools.partial`` made to look like ``forward``). So the callable's own
    signature is used unless it is generic; then the wrapped one, without a leading ``self`` when
    the wrapped function is a plain function defined in a class and the callable is not bound.

    Raises:
        TypeError, ValueError: no signature can be read (as ``inspect.signature``).
    """
    own = inspect.signature(function, follow_wrapped=False)
    generic = all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in own.parameters.values())
    if not generic or not hasattr(function, "__wrapped__") and not inspect.ismethod(function):
        return own
    wrapped = inspect.signature(function)
    target = inspect.unwrap(function.__func__ if inspect.ismethod(function) else function)
    parameters = list(wrapped.parameters.values())
    if (
        not inspect.ismethod(function)
        and inspect.isfunction(target)
        and "." in target.__qualname__
        and parameters
        and parameters[0].name == "self"
    ):
        return wrapped.replace(parameters=parameters[1:])
    return wrapped


class ForwardSignature:
    """The parameters of a module's ``forward``: enough to bind a call without the module.

    RemoteModule uses it to bind the same arguments the original module takes.
    """

    def __init__(self, parameters: Sequence[ParameterSpec]):
        self.parameters = tuple(parameters)
        variadic = ("VAR_POSITIONAL", "VAR_KEYWORD")
        self._signature = inspect.Signature(
            [
                inspect.Parameter(
                    p.name,
                    getattr(inspect.Parameter, p.kind),
                    default=_MISSING if p.has_default and p.kind not in variadic else inspect.Parameter.empty,
                )
                for p in self.parameters
            ]
        )
        self._var_keyword = next((p.name for p in self.parameters if p.kind == "VAR_KEYWORD"), None)
        self._defaults = {
            p.name: p.default_json for p in self.parameters if p.default_json is not None and p.kind != "POSITIONAL_ONLY"
        }

    @classmethod
    def from_callable(cls, function: Any) -> "ForwardSignature":
        """Read the signature of ``function`` (a bound ``forward``); ``(*args, **kwargs)`` if unknown.

        The signature is the one a call must fit (:func:`call_signature`): a ``functools.partial``
        set as ``forward`` with ``functools.update_wrapper`` binds as the partial, not as the
        function it was made to look like."""
        try:
            signature = call_signature(function)
        except (TypeError, ValueError):
            return cls([ParameterSpec("args", "VAR_POSITIONAL", True), ParameterSpec("kwargs", "VAR_KEYWORD", True)])
        return cls(
            [
                ParameterSpec(
                    p.name,
                    p.kind.name,
                    p.default is not inspect.Parameter.empty,
                    _json_scalar(p.default) if p.default is not inspect.Parameter.empty else None,
                )
                for p in signature.parameters.values()
            ]
        )

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Bind a call to the signature.

        Returns:
            ``{parameter name: value}`` for the arguments actually passed, in signature order;
            an argument passed with exactly its scalar default value (``scale=1.0`` for
            ``scale: float = 1.0``, ``mask=None``) counts as not passed. ``*args`` binds to a tuple
            and ``**kwargs`` to a dict sorted by key (the order keyword arguments are written in
            does not change a call's structure).

        Raises:
            TypeError: the arguments do not fit the signature, as calling the function would.
        """
        arguments = {
            name: value
            for name, value in self._signature.bind(*args, **kwargs).arguments.items()
            if name not in self._defaults or _json_scalar(value) != self._defaults[name]
        }
        if self._var_keyword in arguments:
            arguments[self._var_keyword] = dict(sorted(arguments[self._var_keyword].items()))
        return arguments

    def unbind(self, arguments: dict[str, Any]) -> tuple[tuple, dict]:
        """Turn bound arguments back into ``(args, kwargs)`` for a call."""
        bound = inspect.BoundArguments(self._signature, dict(arguments))
        return bound.args, bound.kwargs

    def to_dict(self) -> list[dict[str, Any]]:
        """JSON-compatible form (a list of parameter dicts)."""
        return [dataclasses.asdict(p) for p in self.parameters]

    @classmethod
    def from_dict(cls, data: list[dict[str, Any]]) -> "ForwardSignature":
        """Rebuild from :meth:`to_dict`."""
        return cls([ParameterSpec(**p) for p in data])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ForwardSignature) and self.parameters == other.parameters

    def describe(self) -> str:
        """The parameter list, e.g. ``(x, y=..., *args, **kwargs)``."""
        return str(self._signature)

    def __repr__(self) -> str:
        return f"ForwardSignature{self._signature}"


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


@dataclass
class CallStructure:
    """One call bound to a forward signature and flattened.

    Attributes:
        args: Positional arguments as given.
        kwargs: Keyword arguments as given.
        flat: The bound arguments flattened; paths start with the parameter name.
        key: Identifies the call's graph spec: tree structure plus dtype and rank of each tensor
            leaf (and value of each constant leaf when strict).
    """

    args: tuple
    kwargs: dict
    flat: FlatTree
    key: str

    def describe(self) -> str:
        """Human-readable structure, e.g. ``input_ids: tensor(int64, rank=2), flag: const(true)``."""
        return ", ".join(f"{p}: {d}" for p, d in zip(self.flat.paths, self.flat.leaf_descriptions()))

    def with_tensors(self, signature: ForwardSignature, tensors: Sequence[torch.Tensor]) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of the same call with its tensor leaves replaced, in flattening order."""
        iterator = iter(tensors)
        leaves = [next(iterator) if leaf is None else leaf for leaf in self.flat.template]
        return signature.unbind(pytree.tree_unflatten(leaves, self.flat.treespec))


class StoredCall(CallStructure):
    """A recorded call that is run more than once (tuning, the checks against eager).

    Each read of :attr:`args` and :attr:`kwargs` rebuilds them from the flat leaves with
    ``torch.utils._pytree``, so every container among them (a ``transformers`` cache) is a new
    object each time: a forward that updates an argument in place (a cache filled with the step's
    keys and values) runs each time on the call as it was recorded, never on what an earlier run
    left in it. Tensor leaves are shared, not copied.

    Args:
        signature: The module's forward signature (to turn the bound arguments back into a call).
        call: The flattened call; only its leaves, structure and key are kept.
    """

    def __init__(self, signature: ForwardSignature, call: CallStructure):
        self._signature = signature
        self.flat = call.flat
        self.key = call.key

    def _rebuilt(self) -> tuple[tuple, dict]:
        return self._signature.unbind(pytree.tree_unflatten(list(self.flat.leaves), self.flat.treespec))

    @property
    def args(self) -> tuple:  # type: ignore[override]  # read-only: rebuilt on each read
        """Positional arguments, rebuilt with new containers."""
        return self._rebuilt()[0]

    @property
    def kwargs(self) -> dict:  # type: ignore[override]  # read-only: rebuilt on each read
        """Keyword arguments, rebuilt with new containers."""
        return self._rebuilt()[1]


def _treespec_text(treespec: pytree.TreeSpec) -> str:
    try:
        tree = json.loads(pytree.treespec_dumps(treespec))
    except Exception:  # an unregistered container still gets a stable key from its repr
        tree = repr(treespec)
    return json.dumps(tree, separators=(",", ":"))


_cached_treespec_text = functools.lru_cache(maxsize=1024)(_treespec_text)


def _treespec_key(treespec: pytree.TreeSpec) -> str:
    """Compact JSON of a call's structure; cached, since every tuned call computes its key."""
    try:
        return _cached_treespec_text(treespec)
    except TypeError:  # a node context that cannot be hashed
        return _treespec_text(treespec)


def flatten_call(signature: ForwardSignature, args: tuple, kwargs: dict, strict: bool = True) -> CallStructure:
    """Bind and flatten a call and compute its graph spec key.

    Argument containers that hold tensors (a ``transformers`` cache passed as ``past_key_values``,
    a dataclass) are registered as :func:`flatten_output` registers them, so their tensors are
    inputs of the graph, not a constant baked into it. A ``transformers`` cache is registered even
    when it is empty (the first step of ``generate()``): it then flattens to no leaves, and each
    rebuild of the call makes a new empty cache.

    Raises:
        TypeError: the arguments do not fit the signature.
    """
    bound = signature.bind(args, kwargs)
    flat = _flatten(bound, root=None)
    if any(not isinstance(leaf, _PLAIN_LEAVES) and leaf is not None for leaf in flat.leaves):
        if _register_output_containers(bound):
            flat = _flatten(bound, root=None)
    leaves = json.dumps(flat.leaf_descriptions(strict), separators=(",", ":"))
    key = f'{{"tree":{_treespec_key(flat.treespec)},"leaves":{leaves}}}'
    return CallStructure(args, kwargs, flat, key)


class _NoFastPath(Exception):
    """A call :class:`CallLayouts` cannot describe cheaply; it takes :func:`flatten_call`."""


#: Constant leaves whose type and ``==`` decide :func:`flatten_call`'s key (and the binding, which
#: drops a scalar passed with its default value) exactly: ``(type, value)`` identifies them. Floats
#: also carry their sign (``-0.0 == 0.0``, but their JSON differs); other types (subclasses of
#: these included, such as an ``IntEnum``) take the slow path.
_FAST_SCALARS = frozenset({bool, int, str, torch.dtype, torch.device})


def _fingerprint(value: Any, tensors: list[torch.Tensor]) -> Any:
    """A hashable description of ``value``'s structure (tensor dtype and rank, constant values),
    appending its tensors to ``tensors`` in traversal order.

    Raises:
        _NoFastPath: ``value`` holds a leaf outside tensors, None and :data:`_FAST_SCALARS` (and
            floats), or a container that is not a pytree node.
    """
    cls = type(value)
    if cls is torch.Tensor or isinstance(value, torch.Tensor):
        tensors.append(value)
        return (value.dtype, value.dim())
    if value is None:
        return None
    if cls in _FAST_SCALARS:
        return (cls, value)
    if cls is float:
        if value != value:  # NaN: equal to no other NaN, so its layout would never be found again
            raise _NoFastPath
        return (cls, value, math.copysign(1.0, value))
    if cls is tuple or cls is list:
        return (cls, tuple([_fingerprint(item, tensors) for item in value]))
    if cls is dict:
        if not all(type(key) is str for key in value):  # 1 == True as keys, yet their JSON differs
            raise _NoFastPath
        return (cls, tuple(value), tuple([_fingerprint(item, tensors) for item in value.values()]))
    if pytree._get_node_type(value) in pytree.SUPPORTED_NODES:  # a namedtuple, a dataclass, a cache...
        leaves, treespec = pytree.tree_flatten(value)
        return (treespec, tuple([_fingerprint(leaf, tensors) for leaf in leaves]))
    raise _NoFastPath


@dataclass(frozen=True)
class _Layout:
    """What :func:`flatten_call` gave for one argument structure, to fill with a later call's tensors."""

    key: str
    treespec: pytree.TreeSpec
    paths: tuple[str, ...]
    template: tuple[Any, ...]  # the flat leaves, None in each tensor slot
    slots: tuple[int, ...]  # positions of the tensor leaves among the flat leaves
    order: tuple[int, ...]  # per tensor slot, its position among the fingerprint's tensors

    @classmethod
    def of(cls, call: CallStructure, tensors: Sequence[torch.Tensor]) -> "_Layout | None":
        """The layout of ``call``, whose tensors the fingerprint found as ``tensors``; None when a
        flat tensor leaf cannot be told apart by identity (the same tensor passed twice) or is none
        of them."""
        position = {id(tensor): i for i, tensor in enumerate(tensors)}
        if len(position) != len(tensors):
            return None
        slots, order = [], []
        for slot, leaf in enumerate(call.flat.leaves):
            if isinstance(leaf, torch.Tensor):
                if id(leaf) not in position:
                    return None
                slots.append(slot)
                order.append(position[id(leaf)])
        template = tuple(None if isinstance(leaf, torch.Tensor) else leaf for leaf in call.flat.leaves)
        return cls(call.key, call.flat.treespec, tuple(call.flat.paths), template, tuple(slots), tuple(order))

    def call(self, args: tuple, kwargs: dict, tensors: Sequence[torch.Tensor]) -> CallStructure:
        if len(self.slots) == len(self.template):  # every leaf a tensor: the common case
            leaves = [tensors[i] for i in self.order]
        else:
            leaves = list(self.template)
            for slot, i in zip(self.slots, self.order):
                leaves[slot] = tensors[i]
        return CallStructure(args, kwargs, FlatTree(self.treespec, leaves, list(self.paths)), self.key)


class CallLayouts:
    """:func:`flatten_call` for repeated calls: a call whose argument structure was seen before
    reuses that call's key, leaf paths and bound layout.

    A call is described by its *fingerprint*: the positional count, the keyword names in the order
    given, per argument its nesting (tuples, lists, dicts with string keys, other pytree nodes by
    their ``torch.utils._pytree`` structure), and per leaf the tensor dtype and rank or the
    constant's type and value. Calls with equal fingerprints bind and flatten alike, so the first
    one runs :func:`flatten_call` and the later ones only put their tensors into its layout (no
    ``inspect.Signature.bind``, key paths or ``json.dumps``). Calls holding any other leaf (an
    object, an ``Enum``, a numpy array), the same tensor twice, or a structure that cannot be
    hashed (or a NaN) always take :func:`flatten_call`, as do calls it refuses (their error is
    its error).

    Args:
        signature: The module's forward signature.
        strict: As for :func:`flatten_call`.
        capacity: Layouts kept; when full, the oldest is dropped for a new one (constants that
            change on every call, as in a non-strict module, cycle through it). 0 turns it off.
    """

    def __init__(self, signature: ForwardSignature, strict: bool = True, capacity: int = 256):
        self.signature = signature
        self.strict = strict
        self.capacity = capacity
        self._layouts: dict[Any, _Layout] = {}

    def __len__(self) -> int:
        return len(self._layouts)

    def flatten(self, args: tuple, kwargs: dict) -> CallStructure:
        """Bind and flatten a call, as :func:`flatten_call` does.

        Raises:
            TypeError: the arguments do not fit the signature.
        """
        tensors: list[torch.Tensor] = []
        try:
            fingerprint = (
                tuple([_fingerprint(value, tensors) for value in args]),
                tuple(kwargs),
                tuple([_fingerprint(value, tensors) for value in kwargs.values()]),
            )
            layout = self._layouts.get(fingerprint)
        except Exception:  # _NoFastPath, or a structure whose hash or == raises (an unhashable node context)
            return flatten_call(self.signature, args, kwargs, self.strict)
        if layout is not None:
            return layout.call(args, kwargs, tensors)
        call = flatten_call(self.signature, args, kwargs, self.strict)
        found = _Layout.of(call, tensors) if self.capacity > 0 else None
        if found is not None:
            while len(self._layouts) >= self.capacity:
                try:
                    del self._layouts[next(iter(self._layouts))]  # the oldest (dicts keep insertion order)
                except (KeyError, RuntimeError, StopIteration):  # another thread changed it meanwhile
                    break
            self._layouts[fingerprint] = found
        return call


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


@dataclass
class TensorSpec:
    """Shape range and dtype of one tensor leaf of a graph spec.

    Attributes:
        path: Dotted leaf path (``input_ids``, ``hidden.0``).
        dtype: Torch dtype name (``"float32"``).
        min_shape: Smallest size seen per axis.
        max_shape: Largest size seen per axis.
        batch_axis: Axis whose size follows the call's batch size, or None.
        dim_names: Per axis, the name of its dynamic dimension (``"batch"``, ``"dim0"``...) or None
            for a static axis. Axes whose sizes were equal in every recorded call share a name.
    """

    path: str
    dtype: str
    min_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    batch_axis: int | None = None
    dim_names: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        self.min_shape = tuple(self.min_shape)
        self.max_shape = tuple(self.max_shape)
        self.dim_names = tuple(self.dim_names) if self.dim_names else (None,) * len(self.min_shape)

    @property
    def rank(self) -> int:
        """Number of axes."""
        return len(self.min_shape)

    @property
    def dynamic_axes(self) -> list[int]:
        """Axes whose size varied across recorded calls."""
        return [i for i, name in enumerate(self.dim_names) if name is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {
            "path": self.path,
            "dtype": self.dtype,
            "min_shape": list(self.min_shape),
            "max_shape": list(self.max_shape),
            "batch_axis": self.batch_axis,
            "dim_names": list(self.dim_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        """Rebuild from :meth:`to_dict`.

        Raises:
            InvalidStateDictError: (a ValueError) ``data`` is not a dict as :meth:`to_dict` writes it
                (a key missing or unknown, a value of the wrong type); the message starts with
                ``Invalid dictionary format``.
        """
        where = "TensorSpec"
        _require_dict(where, data, required=("path", "dtype", "min_shape", "max_shape"), optional=("batch_axis", "dim_names"))
        where = f"TensorSpec {data.get('path')!r}"
        _require_type(where, "path", data["path"], str, "a string")
        _require_type(where, "dtype", data["dtype"], str, "a string")
        for key in ("min_shape", "max_shape"):
            _require_ints(where, key, data[key])
        if len(data["min_shape"]) != len(data["max_shape"]):
            _invalid(where, f"'min_shape' {data['min_shape']!r} and 'max_shape' {data['max_shape']!r} have different ranks")
        batch_axis = data.get("batch_axis")
        if batch_axis is not None:
            _require_type(where, "batch_axis", batch_axis, int, "an integer axis or null")
        names = data.get("dim_names", ())
        if not isinstance(names, (list, tuple)) or not all(name is None or isinstance(name, str) for name in names):
            _invalid(where, f"'dim_names' must be a list of strings or nulls, got {names!r}")
        return cls(**data)


def _invalid(where: str, problem: str) -> NoReturn:
    from aitune_triton.errors import MalformedDictError

    raise MalformedDictError(where, problem)


def _require_dict(where: str, data: Any, required: Sequence[str], optional: Sequence[str] | None = None) -> None:
    """Refuse ``data`` unless it is a dict holding every ``required`` key (and, when ``optional`` is
    given, no key outside ``required`` and ``optional``)."""
    if not isinstance(data, dict):
        _invalid(where, f"expected a dict, got {type(data).__name__} {_clip(data)}")
    missing = [key for key in required if key not in data]
    if missing:
        _invalid(where, f"missing key(s) {missing}; it has {sorted(map(str, data))}")
    if optional is not None:
        unknown = sorted(str(key) for key in data if key not in (*required, *optional))
        if unknown:
            _invalid(where, f"unknown key(s) {unknown}; expected {list(required) + list(optional)}")


def _require_type(where: str, key: str, value: Any, kind: type, expected: str) -> None:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        _invalid(where, f"{key!r} must be {expected}, got {type(value).__name__} {_clip(value)}")


def _require_ints(where: str, key: str, value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        _invalid(where, f"{key!r} must be a list of non-negative integers, got {_clip(value)}")


def _clip(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def axis_range(spec: TensorSpec, axis: int, dims: dict[str, Any]) -> tuple[int, int]:
    """``(min, max)`` size of ``spec``'s ``axis``: its dimension's range (``dims[name]``) when the
    axis is dynamic, else the one size recorded."""
    name = spec.dim_names[axis]
    if name is None:
        return spec.min_shape[axis], spec.max_shape[axis]
    low, high = dims[name]
    return int(low), int(high)


def output_leaf_paths(template: Sequence[Any], tensor_paths: Sequence[str]) -> list[str]:
    """Leaf paths of a description that stored only its tensor paths: those in the template's
    tensor slots, ``output_leaf_<i>`` for its constants."""
    paths = iter(tensor_paths)
    return [next(paths, f"output_leaf_{i}") if leaf is None else f"output_leaf_{i}" for i, leaf in enumerate(template)]


def check_graph_dict(data: Any) -> None:
    """Refuse ``data`` unless it has the structure of :meth:`GraphSpec.to_dict` output, its tensors'
    included; the output structure's container types are not imported (:meth:`GraphSpec.from_dict`
    does that).

    Raises:
        MalformedDictError: (an InvalidStateDictError, a ValueError) the message starts with
            ``Invalid dictionary format`` and names the missing key or wrong value.
    """
    where = "GraphSpec"
    _require_dict(
        where, data, required=("name", "key", "description", "inputs", "outputs", "output_treespec", "output_template")
    )
    where = f"GraphSpec {data.get('name')!r}"
    for key in ("name", "key", "description", "output_treespec"):
        _require_type(where, key, data[key], str, "a string")
    for key in ("inputs", "outputs", "output_template"):
        _require_type(where, key, data[key], list, "a list")
    _require_type(where, "output_paths", data.get("output_paths", []), list, "a list")
    _require_type(where, "num_calls", data.get("num_calls", 0), int, "an integer")
    _require_type(where, "constants", data.get("constants", {}), dict, "a dict")
    dims = data.get("dims", {})
    _require_type(where, "dims", dims, dict, "a dict {name: [min, max]}")
    for name, bounds in dims.items():
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bounds
        ):
            _invalid(where, f"'dims'[{name!r}] must be [min, max] (non-negative integers), got {_clip(bounds)}")
    if not (data.get("batch_independent") is None or isinstance(data["batch_independent"], bool)):
        _invalid(where, f"'batch_independent' must be true, false or null, got {data['batch_independent']!r}")
    preferred = data.get("preferred_batch_size")
    if preferred is not None and (not isinstance(preferred, int) or isinstance(preferred, bool) or preferred < 1):
        _invalid(where, f"'preferred_batch_size' must be a positive integer or null, got {_clip(preferred)}")
    padding = data.get("padding")
    if padding is not None and not (
        isinstance(padding, dict) and isinstance(padding.get("held"), bool) and isinstance(padding.get("reason"), str)
        and (padding.get("layout") is None or isinstance(padding.get("layout"), dict))
    ):
        _invalid(where, f"'padding' must be null or {{'held': bool, 'reason': str, 'layout': dict or null}}, got {_clip(padding)}")
    try:
        json.loads(data["output_treespec"])
    except ValueError:
        _invalid(where, f"'output_treespec' must be the JSON text treespec_to_json() writes, got {_clip(data['output_treespec'])}")
    for tensor in [*data["inputs"], *data["outputs"]]:
        TensorSpec.from_dict(tensor)


@dataclass
class GraphSpec:
    """Everything known about one group of calls that share an input structure.

    Attributes:
        name: ``graph_0``, ``graph_1``... in the order first seen.
        key: The input structure key shared by the calls (see :func:`flatten_call`).
        description: Human-readable input structure.
        inputs: Tensor input leaves in flattening order.
        outputs: Tensor output leaves in flattening order.
        output_treespec: Structure of the module's output.
        output_template: Output leaves with ``None`` for tensors and constant values otherwise.
        output_paths: Dotted path of every output leaf (tensors and constants), in flattening order.
        num_calls: Calls recorded for this graph spec.
        dims: Dynamic dimension name -> ``(min, max)`` size recorded.
        constants: Non-tensor input leaves of the first recorded call (path -> ``const(value)``);
            exported backends are built with these values.
        batch_independent: Whether splitting a recorded batch in two and running the halves gave
            the same outputs as the whole batch, or (every recorded batch 1) joining recorded calls
            into one batch gave each call's outputs (checked when tuning, which also drops a batch
            axis seen at one size only unless this is True); None when not checked (no batch
            axis, or nothing to split or join). Triton may join requests into one batch only when
            this is not False.
        preferred_batch_size: The batch size where the kept backend's throughput stopped growing,
            measured by a batch size sweep (``find_max_batch_size``); Triton's dynamic batcher
            aims for it. None when not measured.
        padding: The padding invariance check (``PaddingCheck.to_dict()`` of
            :mod:`aitune_triton.module.padding`: ``held``, ``reason``, ``layout``); None when the
            graph spec has no dynamic axis besides the batch, or was tuned before it was checked.
    """

    name: str
    key: str
    description: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_treespec: pytree.TreeSpec
    output_template: list[Any]
    output_paths: list[str] = field(default_factory=list)
    num_calls: int = 0
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    batch_independent: bool | None = None
    preferred_batch_size: int | None = None
    padding: dict[str, Any] | None = None

    def axis_range(self, spec: TensorSpec, axis: int) -> tuple[int, int]:
        """``(min, max)`` size the artifacts of this graph spec accept on ``spec``'s ``axis``."""
        return axis_range(spec, axis, self.dims)

    def __post_init__(self) -> None:
        if not self.output_paths:  # descriptions written before leaf paths were stored
            self.output_paths = output_leaf_paths(self.output_template, [spec.path for spec in self.outputs])

    def __hash__(self) -> int:
        # Hashable by its input structure, so it can key a ``strategies`` dict.
        return hash(self.key)

    @property
    def batch_size_range(self) -> tuple[int, int] | None:
        """``(min, max)`` batch size seen, or None when no batch axis was found."""
        return self.dims.get("batch")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form; the output structure is stored with ``treespec_dumps``.

        Raises:
            RecordingError: the output structure or a constant output leaf cannot be stored as JSON.
        """
        from aitune_triton.errors import RecordingError

        try:
            template = json.loads(json.dumps(self.output_template))
        except TypeError as error:
            unsaved = [
                f"{path!r} ({type(leaf).__name__})"
                for path, leaf in zip(self.output_paths, self.output_template)
                if leaf is not None and not _is_json(leaf)
            ]
            raise RecordingError(
                f"{self.name}: a non-tensor output leaf is not JSON-serializable ({error}): {', '.join(unsaved)}. Only "
                "tensors and JSON values (numbers, strings, lists, dicts) can be stored; return it as a tensor or "
                "drop it from the output."
            ) from error
        return {
            "name": self.name,
            "key": self.key,
            "description": self.description,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "output_treespec": treespec_to_json(self.output_treespec),
            "output_template": template,
            "output_paths": list(self.output_paths),
            "num_calls": self.num_calls,
            "dims": {name: list(bounds) for name, bounds in self.dims.items()},
            "constants": dict(self.constants),
            "batch_independent": self.batch_independent,
            "preferred_batch_size": self.preferred_batch_size,
            "padding": copy.deepcopy(self.padding),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphSpec":
        """Rebuild from :meth:`to_dict`.

        Raises:
            InvalidStateDictError: (a ValueError) ``data`` is not a dict as :meth:`to_dict` writes it:
                a required key is missing or a value has the wrong type (the message starts with
                ``Invalid dictionary format`` and names the key).
            UnknownOutputTypeError: (a RecordingError) the stored output structure names a
                container type that no importable module defines.
        """
        check_graph_dict(data)
        return cls(
            name=data["name"],
            key=data["key"],
            description=data["description"],
            inputs=[TensorSpec.from_dict(t) for t in data["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in data["outputs"]],
            output_treespec=treespec_from_json(data["output_treespec"]),
            output_template=list(data["output_template"]),
            output_paths=list(data.get("output_paths", [])),
            num_calls=data.get("num_calls", 0),
            dims={name: (int(b[0]), int(b[1])) for name, b in data.get("dims", {}).items()},
            constants=dict(data.get("constants", {})),
            batch_independent=data.get("batch_independent"),
            preferred_batch_size=data.get("preferred_batch_size"),
            padding=copy.deepcopy(data.get("padding")),
        )
