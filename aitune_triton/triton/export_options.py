"""One declaration of every export option: the CLI's flags and an options file are built from it.

Each :class:`ExportOption` says the option's name (the ``aitune-triton export`` flag without its
dashes, and the key in an ``--options`` file), its type, help, default, and which field it fills:
a field of :class:`~aitune_triton.triton.config.TritonModelOptions`, of its
:class:`~aitune_triton.triton.options.DynamicBatching` or
:class:`~aitune_triton.triton.options.QueuePolicy`, or an argument of
:func:`~aitune_triton.triton.exporter.export`. The CLI generates its click options from
:data:`EXPORT_OPTIONS` (``aitune_triton/cli/export.py``); :func:`read_options_file` reads the same
options from a YAML or JSON file; :func:`export_arguments` builds the typed options from either,
so the option types validate every value in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from aitune_triton.errors import InvalidOptionError
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.options import MEASURED, DynamicBatching, InstanceGroup, QueuePolicy, VersionPolicy
from aitune_triton.triton.targets import export_target_names

__all__ = ["EXPORT_OPTIONS", "ExportOption", "export_arguments", "read_options_file"]

#: ``(label, value) -> field value``: turns an option's CLI text (or its value from an options
#: file) into the value of the field it fills; ``label`` names the option in error messages.
Parser = Callable[[str, Any], Any]


def _ints(label: str, value: Any) -> tuple[int, ...]:
    """``"0,1"``, ``0`` or ``[0, 1]`` as ``(0, 1)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    try:
        return tuple(int(part) for part in str(value).split(",") if part.strip())
    except ValueError:
        raise InvalidOptionError(f"{label}: expected comma-separated integers, got {value!r}.") from None


def _pairs(label: str, value: Any, form: str) -> list[tuple[str, str]]:
    """``("K=V", ...)`` (the CLI's repeated flag, or a list in a file) or a mapping ``{K: V}`` (a file) as pairs."""
    if isinstance(value, Mapping):
        pairs = []
        for key, item in value.items():
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise InvalidOptionError(f"{label}: expected {form} with a text or number value, got {key!r}: {item!r}.")
            pairs.append((str(key), str(item)))
        return pairs
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise InvalidOptionError(f"{label}: expected {form} (a string, a list of them, or a mapping), got {value!r}.")
    pairs = []
    for text in items:
        key, equals, rest = text.partition("=")
        if not equals or not key:
            raise InvalidOptionError(f"{label}: expected {form}, got {text!r}.")
        pairs.append((key, rest))
    return pairs


def _instance_groups(label: str, value: Any) -> dict[str, InstanceGroup]:
    groups = {}
    for graph, spec in _pairs(label, value, "GRAPH=KIND:COUNT[:GPUS] (graph_1=cpu:2)"):
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise InvalidOptionError(f"{label}: expected GRAPH=KIND:COUNT[:GPUS] (graph_1=cpu:2), got {graph}={spec!r}.")
        try:
            count = int(parts[1])
        except ValueError:
            raise InvalidOptionError(f"{label}: expected an integer COUNT in GRAPH=KIND:COUNT, got {graph}={spec!r}.") from None
        groups[graph] = InstanceGroup(parts[0], count, _ints(label, parts[2]) if len(parts) == 3 else ())
    return groups


def _parameters(label: str, value: Any) -> dict[str, str]:
    return dict(_pairs(label, value, "KEY=VALUE"))


def _threads(label: str, value: Any) -> int | str | None:
    if value == "auto":
        return None
    if value == MEASURED:
        return MEASURED
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # TritonModelOptions checks it is >= 1
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"{label}: expected an integer >= 1, 'auto' or 'measured', got {value!r}.") from None


def _version_policy(label: str, value: Any) -> VersionPolicy:
    return VersionPolicy.parse(str(value))


@dataclass(frozen=True)
class ExportOption:
    """One export option.

    Attributes:
        name: The flag without its dashes (``instance-count``) and the key in an options file
            (``instance_count`` is read as the same key).
        kind: ``int``, ``str`` or ``bool`` (a switch), or the tuple of values it takes.
        help: The flag's help text.
        fills: ``"TritonModelOptions.<field>"``, ``"DynamicBatching.<field>"``,
            ``"QueuePolicy.<field>"`` or ``"export.<argument>"``: what the value becomes.
        default: The value when neither the command line nor a file gives one; None leaves the
            field at its own default.
        multiple: The flag may be repeated (a file gives a list).
        negatable: A switch with a ``--no-`` form (``--warmup/--no-warmup``).
        parse: Turns the CLI text (or a file's value) into the field's value (:data:`Parser`);
            None: the value is used as it is.
        metavar: The value's placeholder in the help.
        show_default: Show the default in the help.
    """

    name: str
    kind: type | tuple[str, ...]
    help: str
    fills: str
    default: Any = None
    multiple: bool = False
    negatable: bool = False
    parse: Parser | None = None
    metavar: str | None = None
    show_default: bool = False

    @property
    def key(self) -> str:
        """The option's name as a Python identifier (``instance_count``): the CLI's parameter name."""
        return self.name.replace("-", "_")


_O = ExportOption
_GROUPS = "TritonModelOptions", "DynamicBatching", "QueuePolicy", "export"

#: Every export option, in the order of ``aitune-triton export --help``.
EXPORT_OPTIONS: tuple[ExportOption, ...] = (
    _O("name", str, "Entry model name; default the module's name. Graph models are NAME.graph_N. Only for a checkpoint "
       "of one module.", "export.name"),
    _O("version", int, "Version directory to write in every model (one none of them has) [default: each model's next].",
       "export.version"),
    _O("instance-count", int, "Model instances per device (instance_group count); each is a separate process "
       "[default: the count of the layout measured at tune time, else 1].", "TritonModelOptions.instance_count"),
    _O("instance-kind", ("auto", "cpu", "gpu"), "KIND_CPU or KIND_GPU instances; auto picks GPU when the backend was "
       "tuned on CUDA.", "TritonModelOptions.instance_kind", default="auto", show_default=True),
    _O("gpus", str, "GPU indices of KIND_GPU instances, comma-separated [default: every GPU].", "TritonModelOptions.gpus",
       parse=_ints),
    _O("instance-group", str, "Instances of one graph model (graph_0 or NAME.graph_0), e.g. graph_1=cpu:2 or "
       "graph_0=gpu:1:0,1; repeatable. The others get --instance-kind x --instance-count.",
       "TritonModelOptions.instance_groups", multiple=True, parse=_instance_groups, metavar="GRAPH=KIND:COUNT[:GPUS]"),
    _O("intra-op-threads", str, "Intra-op threads of torch / ONNX Runtime per graph model instance (keep instances x "
       "threads <= cores); 'auto': the runtime's own default; 'measured': the threads of the layout measured at tune "
       "time with the model's instance count, else 1.", "TritonModelOptions.intra_op_threads", default=MEASURED,
       parse=_threads, show_default=True),
    _O("max-queue-delay-microseconds", int, "Dynamic batcher queue delay for models that batch (max_batch_size > 0).",
       "DynamicBatching.max_queue_delay_microseconds", default=100, show_default=True),
    _O("preferred-batch-size", int, "Batch size the dynamic batcher aims for; repeatable [default: the size the "
       "tuning measured].", "DynamicBatching.preferred_batch_size", multiple=True),
    _O("preserve-ordering", bool, "Dynamic batcher: responses in the order requests came.",
       "DynamicBatching.preserve_ordering", default=False),
    _O("priority-levels", int, "Dynamic batcher priority levels.", "DynamicBatching.priority_levels", default=0,
       show_default=True),
    _O("default-priority-level", int, "Priority level of a request that names none (1..--priority-levels).",
       "DynamicBatching.default_priority_level", default=0, show_default=True),
    _O("queue-timeout-action", ("REJECT", "DELAY"), "Queue policy: what happens to a request past its timeout "
       "[default: REJECT].", "QueuePolicy.timeout_action"),
    _O("queue-timeout-microseconds", int, "Queue policy: request timeout (0: none).",
       "QueuePolicy.default_timeout_microseconds"),
    _O("allow-timeout-override", bool, "Queue policy: a request's own timeout may replace it.",
       "QueuePolicy.allow_timeout_override", default=False),
    _O("max-queue-size", int, "Queue policy: queued requests before rejecting (0: unbounded).", "QueuePolicy.max_queue_size"),
    _O("version-policy", str, "Versions served: latest:N, all or specific:V1,V2 (graph and entry models).",
       "TritonModelOptions.version_policy", default="latest:1", parse=_version_policy, show_default=True),
    _O("parameter", str, "Free config parameter of every graph model; repeatable.", "TritonModelOptions.parameters",
       multiple=True, parse=_parameters, metavar="KEY=VALUE"),
    _O("response-cache", bool, "Enable Triton's response cache for graph models (start the server with a cache: "
       "--cache-config local,size=...).", "TritonModelOptions.response_cache", default=False),
    _O("warmup", bool, "Write model_warmup from the recorded calls at the smallest and largest shape of each graph spec "
       "(inputs under each model's warmup/): Triton runs them on every instance before a model is ready, so the first "
       "requests do not pay for warming up (or, for inductor, for the recorded shapes' compilation). --no-warmup skips "
       "it (faster load).", "TritonModelOptions.warmup", default=True, negatable=True, show_default=True),
    _O("entry-instance-count", int, "Instances of the entry (router) model: how many requests through it run at once.",
       "TritonModelOptions.entry_instance_count", default=4, show_default=True),
    _O("target", tuple(export_target_names()), "python: every graph model is a Python-backend model. native: graph models "
       "whose backend declares a Triton backend of its own (onnxruntime: onnxruntime_onnx, aoti: torch_aoti) are "
       "served by it; the others stay Python-backend models (the reason is printed).", "export.target",
       default="python", show_default=True),
    _O("preprocess", str, "A step (declared with aitune_triton.triton.steps.step) run before the module, as the model "
       "NAME.preprocess; with it or --postprocess an ensemble model wires step -> module -> step. MODULE is imported "
       "from the current directory or the installed packages.", "export.preprocess", metavar="MODULE:FUNCTION"),
    _O("postprocess", str, "A step run after the module, taking its outputs (and the preprocess step's) by name.",
       "export.postprocess", metavar="MODULE:FUNCTION"),
    _O("ensemble-name", str, "Name of the ensemble model [default: NAME_ensemble].", "export.ensemble_name"),
    _O("router", bool, "--router: always an entry (router) model in front of NAME.graph_N graph models. --no-router: a "
       "module with one graph spec is one model NAME, called without a BLS hop. Default: no router for one graph spec "
       "with --target python, a router otherwise.", "export.router", negatable=True),
)

_BY_KEY = {option.key: option for option in EXPORT_OPTIONS}
_COMMAND_LINE_ONLY = {"output", "o", "quiet", "dry-run", "dry_run", "options", "checkpoint"}


def export_arguments(
    values: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> tuple[TritonModelOptions, dict[str, Any]]:
    """The typed export options and :func:`~aitune_triton.triton.exporter.export`'s other arguments.

    Args:
        values: Option key (:attr:`ExportOption.key`, ``instance_count``) -> its value in the CLI's
            form (``"0,1"``, ``("graph_1=cpu:2",)``) or an options file's form (``[0, 1]``,
            ``{"graph_1": "cpu:2"}``). A key left out takes the option's default.
        labels: Key -> how error messages name the option (default ``--<name>``).

    Returns:
        ``(options, arguments)``: the :class:`TritonModelOptions` (its dynamic batcher and queue
        policy built from their options; a queue policy only when one of its options is given),
        and ``name``, ``version``, ``target``, ``preprocess``, ``postprocess``, ``ensemble_name``,
        ``router`` for ``export`` (those given or with a default).

    Raises:
        InvalidOptionError: an unknown key, or a value the option or its field cannot take (the
            message names the option or the field).
    """
    unknown = sorted(set(values) - set(_BY_KEY))
    if unknown:
        raise InvalidOptionError(f"options: unknown option {unknown[0]!r}; known: {', '.join(sorted(_BY_KEY))}.")
    fields: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for option in EXPORT_OPTIONS:
        value = values.get(option.key, option.default)
        if value is None:
            continue  # the field's own default
        if option.parse is not None:
            value = option.parse((labels or {}).get(option.key, f"--{option.name}"), value)
        group, _, field_name = option.fills.partition(".")
        fields[group][field_name] = value
    queue = {name: value for name, value in fields["QueuePolicy"].items() if value is not False}
    batching = DynamicBatching(**fields["DynamicBatching"], default_queue_policy=QueuePolicy(**queue) if queue else None)
    return TritonModelOptions(**fields["TritonModelOptions"], dynamic_batching=batching), fields["export"]


def _load(path: Path) -> Any:
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidOptionError(f"--options: {path} is not valid JSON ({error}).") from None
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise InvalidOptionError(
            f"--options: reading {path} as YAML needs PyYAML (pip install pyyaml); or write the options as JSON in a "
            ".json file."
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidOptionError(f"--options: {path} is not valid YAML ({error}).") from None


def _checked(option: ExportOption, label: str, value: Any) -> Any:
    kind = option.kind
    if isinstance(kind, tuple):
        if value in kind:
            return value
        expected = "one of " + ", ".join(repr(choice) for choice in kind)
    elif kind is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    else:
        if isinstance(value, str):
            return value
        expected = "a string"
    raise InvalidOptionError(f"{label}: expected {expected}{' (or a list of them)' if option.multiple else ''}, got {value!r}.")


def read_options_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The export options a YAML or JSON file gives.

    The file holds one mapping: option name (``instance-count``, or ``instance_count``) -> value, of
    the option's type (a list for a repeatable option; ``parameter`` and ``instance-group`` also
    take a mapping, ``{team: search}``, ``{graph_1: "cpu:2"}``). A ``.json`` file is read as JSON,
    any other as YAML (with PyYAML). A null value counts as not given.

    Returns:
        ``(values, labels)`` for :func:`export_arguments`: option key -> value, and option key ->
        ``"<path>: <name>"`` for error messages.

    Raises:
        InvalidOptionError: the file is missing or does not parse, is not a mapping, names an
            unknown option (the message lists the known ones) or one twice, or a value has the
            wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidOptionError(f"--options: expected a YAML or JSON file of export options, got {str(path)!r}, which is not a file.")
    loaded = _load(path)
    if not isinstance(loaded, Mapping):
        raise InvalidOptionError(
            f"--options: expected {path} to hold a mapping of option name -> value (instance-count: 2), got "
            f"{type(loaded).__name__}."
        )
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in loaded.items():
        key = str(name).replace("-", "_")
        option = _BY_KEY.get(key)
        if option is None:
            where = " It is given on the command line." if str(name) in _COMMAND_LINE_ONLY else ""
            raise InvalidOptionError(
                f"{path}: unknown option {name!r}; known: {', '.join(o.name for o in EXPORT_OPTIONS)}.{where}"
            )
        if key in names:
            raise InvalidOptionError(f"{path}: option {option.name!r} is given twice (as {names[key]!r} and {name!r}).")
        names[key], labels[key] = str(name), f"{path}: {name}"
        if value is None:
            continue
        if option.parse is None and option.multiple:
            value = tuple(_checked(option, labels[key], item) for item in (value if isinstance(value, list) else [value]))
        elif option.parse is None:
            value = _checked(option, labels[key], value)
        values[key] = value
    return values, labels
