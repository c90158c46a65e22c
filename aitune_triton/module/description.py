"""The tuned module description (``Module.to_dict()``) as typed, versioned objects.

``Module.to_dict()`` writes, and checkpoints store, a JSON-compatible dict::

    {"type": "aitune_triton.Module", "format_version": 2, "name", "module_class", "signature",
     "strict", "graphs": [{"graph": <GraphSpec.to_dict()>, "backend": <Backend.to_dict()>,
                           "report": <GraphTuneReport.to_dict()> or None}, ...]}

:meth:`TunedDescription.from_dict` checks that structure once, down to each graph spec's tensors
and each backend's fields, and every reader (loading, checkpoints, the exporter, the command line)
reads the typed fields instead of dict keys. :meth:`TunedDescription.to_dict` gives the dict back
unchanged (``from_dict(d).to_dict() == d``), keys it does not know included: they are kept in
``extra`` so that a description written by a newer release of the same format version passes
through unharmed.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NoReturn

from aitune_triton.errors import InvalidStateDictError, MalformedDictError
from aitune_triton.spec import ForwardSignature, GraphSpec

if TYPE_CHECKING:
    from aitune_triton.strategies.report import GraphTuneReport

__all__ = [
    "BackendDescription",
    "GraphDescription",
    "INVALID_STATE_DICT",
    "STATE_DICT_FORMAT_VERSION",
    "STATE_DICT_KEY",
    "STATE_DICT_TYPE",
    "TunedDescription",
    "TunedGraphDescription",
    "state_dict_problem",
]

STATE_DICT_TYPE = "aitune_triton.Module"
#: Version of the description format :meth:`Module.to_dict` writes; :meth:`TunedDescription.from_dict`
#: reads this one and older ones (a description without ``format_version`` counts as version 1).
#: Version 2 stores each graph spec's dims as ``[min, opt, max]``; version 1 stored ``[min, max]``
#: (read with opt derived: :func:`aitune_triton.spec.graph.stored_dims`), and a version-1 reader
#: would refuse the three-element form.
STATE_DICT_FORMAT_VERSION = 2
#: Key of the tuned description in a parent module's ``state_dict()`` (after the submodule prefix).
STATE_DICT_KEY = "_aitune_triton"
#: How every refused description's message starts; the problem follows in parentheses.
INVALID_STATE_DICT = (
    "Invalid dictionary format: expected the output of Module.to_dict() (a dict with 'type': "
    f"'{STATE_DICT_TYPE}', 'name', 'signature' and 'graphs'). Pass what to_dict()/state_dict() returned."
)

_TOP_KEYS = ("type", "format_version", "name", "module_class", "signature", "strict", "graphs")
_ENTRY_KEYS = ("graph", "backend", "report")
_BACKEND_KEYS = ("name", "options", "device", "artifacts", "input_axes", "index_ranges", "built_on")


class _Problem(Exception):
    """What is wrong with a description (internal: :meth:`TunedDescription.from_dict` turns it into
    an :class:`InvalidStateDictError`)."""


def _problem(text: str) -> NoReturn:
    raise _Problem(text)


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:80] + '...'}"


def _extra(data: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {key: copy.deepcopy(value) for key, value in data.items() if key not in known}


@dataclass(eq=False)
class GraphDescription(GraphSpec):
    """A stored graph spec (``GraphSpec.to_dict()`` output): the :class:`~aitune_triton.spec.GraphSpec`
    it describes, typed once, plus the dict it was read from.

    Every field is the graph spec's own (``name``, ``inputs``, ``dims``...). The output structure
    stays the JSON text it was stored as until :attr:`output_treespec` is first read: reading a
    description imports no container type. Treat it as read-only; :meth:`to_spec` gives a graph
    spec of its own to change.

    Attributes:
        stored: The dict it was read from (a private copy; :meth:`to_dict` returns a copy of it, so
            a description written by another release of the same format version passes through
            unchanged).
    """

    stored: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Any) -> "GraphDescription":
        """Check and wrap ``GraphSpec.to_dict()`` output.

        Raises:
            MalformedDictError: (an InvalidStateDictError) a key is missing or has the wrong type;
                the message names it.
        """
        stored = copy.deepcopy(dict(data)) if isinstance(data, Mapping) else data
        spec = GraphSpec.parse(stored)
        return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(GraphSpec)}, stored=stored)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphDescription) and self.to_dict() == other.to_dict()

    __hash__ = GraphSpec.__hash__

    def to_spec(self) -> GraphSpec:
        """A :class:`~aitune_triton.spec.GraphSpec` of its own, sharing only the parsed output
        structure (its container types are imported here, once).

        Raises:
            UnknownOutputTypeError: an output container type cannot be imported here.
        """
        self.output_structure.treespec
        fields = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(GraphSpec) if f.name != "output_structure"}
        return GraphSpec(**fields, output_structure=self.output_structure)

    def to_dict(self) -> dict[str, Any]:
        """The stored dict (a copy)."""
        return copy.deepcopy(dict(self.stored))


@dataclass(frozen=True)
class BackendDescription:
    """A stored backend (``Backend.to_dict()`` output).

    Attributes:
        name: Registered backend name (``"onnxruntime"``, ``"aoti"``...).
        options: Constructor options (``{"precision": "fp16"}``...).
        artifacts: Artifact role (``"model"``) -> path: absolute in ``Module.to_dict()``, relative to
            the checkpoint directory in a checkpoint's manifest.
        device: Device it was tuned on (``"cpu"``, ``"cuda:0"``), or None when not stored.
        input_axes: Per input, per axis: the size the export fixed, or the symbol of its size (axes
            sharing a symbol must be equal); None when the backend has no exported program.
        index_ranges: Per input, the value ranges of the indexing ops it reaches
            (:class:`~aitune_triton.contract.IndexRange` dicts); None when unknown.
        built_on: What the artifact was built with and on (torch version, GPU name, compute
            capability, CUDA, TensorRT: ``aitune_triton._versions.build_environment``); None when
            not stored (tuned by an older aitune_triton).
        extra: Stored keys this release does not know, kept for :meth:`to_dict`.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    input_axes: list[list[int | str]] | None = None
    index_ranges: list[list[dict[str, Any]]] | None = None
    built_on: dict[str, str | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _parse(cls, data: Any, where: str) -> "BackendDescription":
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            _problem(f"{where} has no name")
        options = data.get("options", {})
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            _problem(f"{where}.options is not a dict of option name -> value, got {_kind(options)}")
        artifacts = data.get("artifacts", {})
        if not isinstance(artifacts, Mapping):
            _problem(f"{where}.artifacts is not a dict")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in artifacts.items()):
            _problem(f"{where}.artifacts is not a dict of role -> path strings, got {_kind(dict(artifacts))}")
        device = data.get("device")
        if device is not None and not isinstance(device, str):
            _problem(f"{where}.device is not a device string ('cpu', 'cuda:0'), got {_kind(device)}")
        axes = data.get("input_axes")
        if axes is not None and not (
            isinstance(axes, list)
            and all(
                isinstance(per, list) and all(isinstance(a, (int, str)) and not isinstance(a, bool) for a in per) for per in axes
            )
        ):
            _problem(f"{where}.input_axes is not a list (per input) of lists of sizes and symbols, got {_kind(axes)}")
        ranges = data.get("index_ranges")
        if ranges is not None and not (
            isinstance(ranges, list) and all(isinstance(per, list) and all(isinstance(r, Mapping) for r in per) for per in ranges)
        ):
            _problem(f"{where}.index_ranges is not a list (per input) of lists of index range dicts, got {_kind(ranges)}")
        built_on = data.get("built_on")
        if built_on is not None and not (
            isinstance(built_on, Mapping) and all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in built_on.items())
        ):
            _problem(f"{where}.built_on is not a dict of name -> version string or null, got {_kind(built_on)}")
        return cls(
            name=data["name"],
            options=copy.deepcopy(dict(options)),
            artifacts=dict(artifacts),
            device=device,
            input_axes=copy.deepcopy(axes),
            index_ranges=copy.deepcopy(ranges),
            built_on=dict(built_on) if built_on is not None else None,
            extra=_extra(data, _BACKEND_KEYS),
        )

    @property
    def precision(self) -> str | None:
        """The ``precision`` option when the backend was built with one (``"fp16"``...), else None."""
        value = self.options.get("precision")
        return None if value is None else str(value)

    def artifact(self, role: str = "model") -> Path:
        """Path of the artifact of ``role``.

        Raises:
            InvalidStateDictError: the backend stores no artifact of that role (eager stores none).
        """
        if role not in self.artifacts:
            raise InvalidStateDictError(
                f"backend {self.name!r}: no {role!r} artifact is stored (it has {sorted(self.artifacts) or 'none'})."
            )
        return Path(self.artifacts[role])

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form, as ``Backend.to_dict()`` writes it."""
        data: dict[str, Any] = {"name": self.name, "options": copy.deepcopy(self.options)}
        if self.device is not None:
            data["device"] = self.device
        data["artifacts"] = dict(self.artifacts)
        if self.input_axes is not None:
            data["input_axes"] = copy.deepcopy(self.input_axes)
        if self.index_ranges is not None:
            data["index_ranges"] = copy.deepcopy(self.index_ranges)
        if self.built_on is not None:
            data["built_on"] = dict(self.built_on)
        data.update(copy.deepcopy(self.extra))
        return data


@dataclass(frozen=True)
class TunedGraphDescription:
    """One tuned graph spec: the spec, the backend chosen for it and the tuning report.

    Attributes:
        graph: The graph spec.
        backend: The chosen backend.
        report: ``GraphTuneReport.to_dict()`` output, or None (no report stored).
        extra: Stored keys this release does not know, kept for :meth:`to_dict`.
    """

    graph: GraphDescription
    backend: BackendDescription
    report: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = "graphs[0]") -> "TunedGraphDescription":
        """Check and wrap one entry of a description's ``graphs``.

        Raises:
            InvalidStateDictError: (a ValueError) the entry is malformed; the message names the field.
        """
        try:
            return cls._parse(data, where)
        except _Problem as problem:
            raise InvalidStateDictError(f"{INVALID_STATE_DICT} ({problem})") from None

    @classmethod
    def _parse(cls, data: Any, where: str) -> "TunedGraphDescription":
        graph = data.get("graph") if isinstance(data, Mapping) else None
        if not isinstance(graph, Mapping) or not all(
            isinstance(graph.get(key), kind)
            for key, kind in (("name", str), ("key", str), ("inputs", list), ("outputs", list), ("output_treespec", str))
        ):
            _problem(f"{where}.graph is not a graph spec description")
        try:
            typed_graph = GraphDescription.from_dict(graph)
        except MalformedDictError as error:
            _problem(f"{where}.graph: {error.where}: {error.problem}")
        backend = BackendDescription._parse(data.get("backend"), f"{where}.backend")
        report = data.get("report")
        if report is not None and not isinstance(report, Mapping):
            _problem(f"{where}.report is not a tuning report dict or null, got {_kind(report)}")
        return cls(typed_graph, backend, None if report is None else copy.deepcopy(dict(report)), _extra(data, _ENTRY_KEYS))

    @property
    def name(self) -> str:
        """The graph spec's name (``graph_0``)."""
        return self.graph.name

    @property
    def decision(self) -> str | None:
        """Why tuning kept the backend (the report's ``decision``), or None."""
        value = (self.report or {}).get("decision")
        return None if value is None else str(value)

    def tune_report(self) -> "GraphTuneReport | None":
        """The stored report as a :class:`~aitune_triton.strategies.report.GraphTuneReport`, or None."""
        from aitune_triton.strategies.report import GraphTuneReport

        return GraphTuneReport.from_dict(self.report) if self.report else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        data = {"graph": self.graph.to_dict(), "backend": self.backend.to_dict(), "report": copy.deepcopy(self.report)}
        data.update(copy.deepcopy(self.extra))
        return data


@dataclass(frozen=True)
class TunedDescription:
    """A tuned module: what ``Module.to_dict()`` writes and a checkpoint stores per module.

    Attributes:
        name: The Module's name.
        signature: The forward signature (``ForwardSignature.to_dict()``: parameter dicts).
        graphs: Tuned graph specs, in order (at least one).
        strict: Whether constant argument values are part of the graph spec key.
        module_class: ``package.module.Class`` of the wrapped module, or None when not stored.
        format_version: Description format version (:data:`STATE_DICT_FORMAT_VERSION` or older);
            None for a description that does not store one (read as version 1).
        extra: Stored keys this release does not know, kept for :meth:`to_dict`.
    """

    name: str
    signature: list[dict[str, Any]]
    graphs: tuple[TunedGraphDescription, ...]
    strict: bool = True
    module_class: str | None = None
    format_version: int | None = STATE_DICT_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    #: The ``type`` every description carries.
    type = STATE_DICT_TYPE

    @classmethod
    def from_dict(cls, data: Any) -> "TunedDescription":
        """Check ``Module.to_dict()`` output once and wrap it.

        Raises:
            InvalidStateDictError: (a ValueError) ``data`` is not such a description, or one of a
                newer format version than this release reads; the message starts with
                ``Invalid dictionary format`` and names the field that is wrong, in parentheses.
        """
        try:
            return cls._parse(data)
        except _Problem as problem:
            raise InvalidStateDictError(f"{INVALID_STATE_DICT} ({problem})") from None

    @classmethod
    def _parse(cls, data: Any) -> "TunedDescription":
        if not isinstance(data, Mapping):
            _problem(f"expected a dict, got {type(data).__name__}")
        if data.get("type") != STATE_DICT_TYPE:
            _problem(f"'type' is {data.get('type')!r}")
        version = data.get("format_version")  # not stored: version 1
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            _problem(f"'format_version' must be a positive integer, got {_kind(version)}")
        if version is not None and version > STATE_DICT_FORMAT_VERSION:
            _problem(
                f"'format_version' is {version}, newer than this aitune_triton reads ({STATE_DICT_FORMAT_VERSION} and "
                "older): it was written by a newer aitune_triton. Upgrade aitune_triton to load it, or tune the module "
                "again with this one"
            )
        if not isinstance(data.get("name"), str):
            _problem("'name' is not a string")
        module_class = data.get("module_class")
        if module_class is not None and not isinstance(module_class, str):
            _problem(f"'module_class' is not a string, got {_kind(module_class)}")
        strict = data.get("strict", True)
        if not isinstance(strict, bool):
            _problem(f"'strict' must be true or false, got {_kind(strict)}")
        signature = data.get("signature")
        if not isinstance(signature, list) or not all(
            isinstance(p, Mapping) and isinstance(p.get("name"), str) and isinstance(p.get("kind"), str) for p in signature
        ):
            _problem("'signature' is not a list of parameters")
        graphs = data.get("graphs")
        if not isinstance(graphs, list) or not graphs:
            _problem("'graphs' is not a non-empty list")
        return cls(
            name=data["name"],
            signature=copy.deepcopy([dict(p) for p in signature]),
            graphs=tuple(TunedGraphDescription._parse(entry, f"graphs[{i}]") for i, entry in enumerate(graphs)),
            strict=strict,
            module_class=module_class,
            format_version=version,
            extra=_extra(data, _TOP_KEYS),
        )

    @property
    def forward_signature(self) -> ForwardSignature:
        """:attr:`signature` as a :class:`~aitune_triton.spec.ForwardSignature`."""
        return ForwardSignature.from_dict(self.signature)

    def with_artifacts(self, paths: Mapping[tuple[int, str], str]) -> "TunedDescription":
        """A copy whose artifact paths are replaced: ``(graph index, role) -> new path``; others kept."""
        graphs = tuple(
            dataclasses.replace(
                entry,
                backend=dataclasses.replace(
                    entry.backend,
                    artifacts={role: paths.get((index, role), path) for role, path in entry.backend.artifacts.items()},
                ),
            )
            for index, entry in enumerate(self.graphs)
        )
        return dataclasses.replace(self, graphs=graphs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form, as ``Module.to_dict()`` writes it (``from_dict(d).to_dict() == d``)."""
        data: dict[str, Any] = {"type": STATE_DICT_TYPE}
        if self.format_version is not None:
            data["format_version"] = self.format_version
        data["name"] = self.name
        if self.module_class is not None:
            data["module_class"] = self.module_class
        data["signature"] = copy.deepcopy(self.signature)
        data["strict"] = self.strict
        data["graphs"] = [g.to_dict() for g in self.graphs]
        data.update(copy.deepcopy(self.extra))
        return data


def state_dict_problem(state_dict: Any) -> str | None:
    """What makes ``state_dict`` unlike ``Module.to_dict()`` output, or None (the check of
    :meth:`TunedDescription.from_dict`)."""
    try:
        TunedDescription._parse(state_dict)
    except _Problem as problem:
        return str(problem)
    return None
