"""Tensor specs and graph specs: everything known about one group of calls that share an input
structure, their JSON form and its validators.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, NoReturn, Sequence

import torch.utils._pytree as pytree

from aitune_triton.spec.dim_range import DimRange
from aitune_triton.spec.outputs import output_leaf_paths
from aitune_triton.spec.pytree_json import treespec_from_json, treespec_to_json
from aitune_triton.spec.signature import _is_json

__all__ = ["GraphSpec", "OutputStructure", "TensorSpec", "axis_range", "check_graph_dict", "stored_dims"]


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


def axis_range(spec: TensorSpec, axis: int, dims: dict[str, DimRange]) -> DimRange:
    """Sizes of ``spec``'s ``axis``: its dimension's range (``dims[name]``) when the axis is
    dynamic, else the one size recorded (min, opt and max all that size)."""
    name = spec.dim_names[axis]
    if name is None:
        return DimRange(spec.min_shape[axis], spec.max_shape[axis], spec.max_shape[axis])
    return dims[name]


def stored_dims(data: dict[str, Any]) -> dict[str, DimRange]:
    """The ``dims`` of a checked graph spec dict (:func:`check_graph_dict`) as :class:`DimRange`; a
    ``[min, max]`` pair stored before opt was kept gets opt = the stored preferred batch size for the
    batch (when within the range), else max."""
    preferred = data.get("preferred_batch_size")
    return {
        name: DimRange.from_json(bounds, preferred if name == "batch" else None) for name, bounds in data.get("dims", {}).items()
    }


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
    _require_type(where, "dims", dims, dict, "a dict {name: [min, opt, max]}")
    for name, bounds in dims.items():
        if not isinstance(bounds, (list, tuple)) or len(bounds) not in (2, 3) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bounds
        ) or list(bounds) != sorted(bounds):
            _invalid(
                where,
                f"'dims'[{name!r}] must be [min, opt, max] (or [min, max] as older descriptions store it): non-negative "
                f"integers with min <= opt <= max, got {_clip(bounds)}",
            )
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


class OutputStructure:
    """A module's output structure: its ``torch.utils._pytree`` TreeSpec and the JSON text
    :func:`treespec_to_json` stores it as, each made at most once from the other.

    Built from stored text, nothing is imported until :attr:`treespec` is first read (then
    :func:`treespec_from_json` imports the container types it names, once). Two structures are
    equal when their texts are (their TreeSpecs, when one cannot be stored as JSON).

    Args:
        treespec: The structure, as flattening gave it; or None with ``text``.
        text: The stored JSON text; or None with ``treespec``.
    """

    __slots__ = ("_text", "_treespec")
    __hash__ = None  # type: ignore[assignment]  # equal by content, like the GraphSpec holding it

    def __init__(self, treespec: pytree.TreeSpec | None = None, text: str | None = None):
        if treespec is None and text is None:
            raise TypeError("OutputStructure: expected a treespec or its JSON text, got neither")
        self._treespec = treespec
        self._text = text

    @property
    def treespec(self) -> pytree.TreeSpec:
        """The TreeSpec, parsed from the stored text on first read.

        Raises:
            UnknownOutputTypeError: (a RecordingError) the text names a container type that no
                importable module defines.
        """
        if self._treespec is None:
            self._treespec = treespec_from_json(str(self._text))
        return self._treespec

    @property
    def text(self) -> str:
        """The JSON text (``treespec_dumps``).

        Raises:
            RecordingError: a node type of the structure cannot be stored without pickling.
        """
        if self._text is None:
            self._text = treespec_to_json(self._treespec)  # type: ignore[arg-type]  # one of the two is set
        return self._text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutputStructure):
            return NotImplemented
        try:
            return self.text == other.text
        except Exception:  # a structure that cannot be stored: compare the TreeSpecs
            return bool(self.treespec == other.treespec)

    def __repr__(self) -> str:
        return f"OutputStructure({self._text if self._text is not None else self._treespec})"


@dataclass
class GraphSpec:
    """Everything known about one group of calls that share an input structure.

    Attributes:
        name: ``graph_0``, ``graph_1``... in the order first seen.
        key: The input structure key shared by the calls (see :func:`flatten_call`).
        description: Human-readable input structure.
        inputs: Tensor input leaves in flattening order.
        outputs: Tensor output leaves in flattening order.
        output_structure: Structure of the module's output (:attr:`output_treespec` is its
            TreeSpec, parsed once from stored text when first read).
        output_template: Output leaves with ``None`` for tensors and constant values otherwise.
        output_paths: Dotted path of every output leaf (tensors and constants), in flattening order.
        num_calls: Calls recorded for this graph spec.
        dims: Dynamic dimension name -> its :class:`DimRange` (``min``, ``opt``, ``max`` sizes):
            recorded or declared; after a batch size sweep the batch reaches the preferred batch
            size it measured, which becomes the batch's opt.
        constants: Non-tensor input leaves of the first recorded call (path -> ``const(value)``);
            exported backends are built with these values.
        batch_independent: Whether splitting a recorded batch in two and running the halves gave
            the same outputs as the whole batch, or (every recorded batch 1) joining recorded calls
            into one batch gave each call's outputs (checked when tuning, which also drops a batch
            axis seen at one size only unless this is True); None when not checked (no batch
            axis, or nothing to split or join). Triton may join requests into one batch only when
            this is not False.
        preferred_batch_size: The batch size Triton's dynamic batcher aims for: where the kept
            backend's throughput stopped growing, measured by a batch size sweep
            (``find_max_batch_size``), else a declared ``BatchDim``'s ``opt``. None when neither.
        padding: The padding invariance check (``PaddingCheck.to_dict()`` of
            :mod:`aitune_triton.module.padding`: ``held``, ``reason``, ``layout``); None when the
            graph spec has no dynamic axis besides the batch, or was tuned before it was checked.
    """

    name: str
    key: str
    description: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    output_structure: OutputStructure
    output_template: list[Any]
    output_paths: list[str] = field(default_factory=list)
    num_calls: int = 0
    dims: dict[str, DimRange] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    batch_independent: bool | None = None
    preferred_batch_size: int | None = None
    padding: dict[str, Any] | None = None

    @property
    def output_treespec(self) -> pytree.TreeSpec:
        """The output's TreeSpec (parsed once from the stored text when first read).

        Raises:
            UnknownOutputTypeError: the stored structure names a container type that cannot be imported here.
        """
        return self.output_structure.treespec

    @property
    def output_treespec_json(self) -> str:
        """The output structure as the JSON text ``treespec_to_json`` writes."""
        return self.output_structure.text

    def axis_range(self, spec: TensorSpec, axis: int) -> DimRange:
        """Sizes the artifacts of this graph spec accept on ``spec``'s ``axis``."""
        return axis_range(spec, axis, self.dims)

    def __post_init__(self) -> None:
        if not self.output_paths:  # descriptions written before leaf paths were stored
            self.output_paths = output_leaf_paths(self.output_template, [spec.path for spec in self.outputs])

    def __hash__(self) -> int:
        # Hashable by its input structure, so it can key a ``strategies`` dict.
        return hash(self.key)

    @property
    def batch_size_range(self) -> DimRange | None:
        """The batch dimension's range, or None when no batch axis was found."""
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
            "output_treespec": self.output_structure.text,
            "output_template": template,
            "output_paths": list(self.output_paths),
            "num_calls": self.num_calls,
            "dims": {name: dim.to_json() for name, dim in self.dims.items()},
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
        spec = cls.parse(data)
        spec.output_structure.treespec  # import the container types now, not at the first call
        return spec

    @classmethod
    def parse(cls, data: dict[str, Any]) -> "GraphSpec":
        """:meth:`from_dict` without importing the output's container types: they are imported when
        :attr:`output_treespec` is first read.

        Raises:
            InvalidStateDictError: (a ValueError) as :meth:`from_dict`.
        """
        check_graph_dict(data)
        return cls(
            name=data["name"],
            key=data["key"],
            description=data["description"],
            inputs=[TensorSpec.from_dict(t) for t in data["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in data["outputs"]],
            output_structure=OutputStructure(text=data["output_treespec"]),
            output_template=list(data["output_template"]),
            output_paths=list(data.get("output_paths", [])),
            num_calls=data.get("num_calls", 0),
            dims=stored_dims(data),
            constants=dict(data.get("constants", {})),
            batch_independent=data.get("batch_independent"),
            preferred_batch_size=data.get("preferred_batch_size"),
            padding=copy.deepcopy(data.get("padding")),
        )
