"""Graph specs: the structure of a module's calls, independent of tensor sizes.

A call is bound to the module's forward signature, giving a dict ``{parameter name: value}`` of the
arguments that were actually passed. That dict is flattened with ``torch.utils._pytree``; its tree
structure plus, per leaf, the tensor dtype and rank (or the constant value of a non-tensor leaf)
form the call's *key*. Calls with the same key share one :class:`GraphSpec`; calls that differ
only in tensor sizes do too.

Leaf paths name leaves deterministically from the pytree key path: ``input_ids``,
``past.key.3``, ``hidden.0``. A module's output leaves are named the same way, with ``output``
for a lone tensor and an ``output.`` prefix when the top level is a sequence (``output.0``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.utils._pytree as pytree

__all__ = [
    "CallStructure",
    "ForwardSignature",
    "GraphSpec",
    "ParameterSpec",
    "TensorSpec",
    "axis_range",
    "dtype_from_name",
    "dtype_name",
    "flatten_call",
    "flatten_output",
    "rebuild_output",
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


def treespec_from_json(text: str) -> pytree.TreeSpec:
    """Rebuild a pytree structure stored with :func:`treespec_to_json`.

    Only node types registered with ``torch.utils._pytree`` in this process are rebuilt; nothing is
    imported or executed.

    Raises:
        RecordingError: the structure names a type that is not registered in this process (for
            example ``transformers`` model outputs before ``import transformers``).
    """
    from aitune_triton.errors import RecordingError

    try:
        return pytree.treespec_loads(text)
    except Exception as error:
        raise RecordingError(
            f"Cannot rebuild the stored output structure ({error}). Import the package that defines "
            "the container type (for example `import transformers`) before loading."
        ) from error


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


def _json_scalar(value: Any) -> str | None:
    """JSON text of a None/bool/int/float/str value, else None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return json.dumps(value)
    return None


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
        """Read the signature of ``function`` (a bound ``forward``); ``(*args, **kwargs)`` if unknown."""
        try:
            signature = inspect.signature(function)
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

    Raises:
        TypeError: the arguments do not fit the signature.
    """
    flat = _flatten(signature.bind(args, kwargs), root=None)
    leaves = json.dumps(flat.leaf_descriptions(strict), separators=(",", ":"))
    key = f'{{"tree":{_treespec_key(flat.treespec)},"leaves":{leaves}}}'
    return CallStructure(args, kwargs, flat, key)


def flatten_output(output: Any) -> FlatTree:
    """Flatten a module output; a lone tensor gets the path ``output``."""
    return _flatten(output, root="output")


def rebuild_output(treespec: pytree.TreeSpec, template: Sequence[Any], tensors: Sequence[torch.Tensor]) -> Any:
    """Put output tensors back into the structure recorded for a graph spec.

    Args:
        treespec: Output structure.
        template: Leaves with ``None`` where tensors go and constants elsewhere.
        tensors: Output tensors in flattening order.

    Raises:
        OutputStructureError: the number of tensors does not match the template.
    """
    from aitune_triton.errors import OutputStructureError

    slots = sum(1 for leaf in template if leaf is None)
    if slots != len(tensors):
        raise OutputStructureError(f"Expected {slots} output tensors for the recorded structure, got {len(tensors)}.")
    iterator = iter(tensors)
    leaves = [next(iterator) if leaf is None else leaf for leaf in template]
    return pytree.tree_unflatten(leaves, treespec)


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
        """Rebuild from :meth:`to_dict`."""
        return cls(**data)


def axis_range(spec: TensorSpec, axis: int, dims: dict[str, Any]) -> tuple[int, int]:
    """``(min, max)`` size of ``spec``'s ``axis``: its dimension's range (``dims[name]``) when the
    axis is dynamic, else the one size recorded."""
    name = spec.dim_names[axis]
    if name is None:
        return spec.min_shape[axis], spec.max_shape[axis]
    low, high = dims[name]
    return int(low), int(high)


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
        num_calls: Calls recorded for this graph spec.
        dims: Dynamic dimension name -> ``(min, max)`` size recorded.
        constants: Non-tensor input leaves of the first recorded call (path -> ``const(value)``);
            exported backends are built with these values.
        batch_independent: Whether splitting a recorded batch in two and running the halves gave
            the same outputs as the whole batch (checked when tuning); None when not checked (no
            batch axis, or no recorded batch of 2 or more). Triton may join requests into one
            batch only when this is not False.
    """

    name: str
    key: str
    description: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_treespec: pytree.TreeSpec
    output_template: list[Any]
    num_calls: int = 0
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    batch_independent: bool | None = None

    def axis_range(self, spec: TensorSpec, axis: int) -> tuple[int, int]:
        """``(min, max)`` size the artifacts of this graph spec accept on ``spec``'s ``axis``."""
        return axis_range(spec, axis, self.dims)

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
            raise RecordingError(f"{self.name}: a non-tensor output leaf is not JSON-serializable ({error}).") from error
        return {
            "name": self.name,
            "key": self.key,
            "description": self.description,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "output_treespec": treespec_to_json(self.output_treespec),
            "output_template": template,
            "num_calls": self.num_calls,
            "dims": {name: list(bounds) for name, bounds in self.dims.items()},
            "constants": dict(self.constants),
            "batch_independent": self.batch_independent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphSpec":
        """Rebuild from :meth:`to_dict`."""
        return cls(
            name=data["name"],
            key=data["key"],
            description=data["description"],
            inputs=[TensorSpec.from_dict(t) for t in data["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in data["outputs"]],
            output_treespec=treespec_from_json(data["output_treespec"]),
            output_template=list(data["output_template"]),
            num_calls=data.get("num_calls", 0),
            dims={name: (int(b[0]), int(b[1])) for name, b in data.get("dims", {}).items()},
            constants=dict(data.get("constants", {})),
            batch_independent=data.get("batch_independent"),
        )
