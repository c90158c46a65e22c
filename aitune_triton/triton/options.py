"""Typed deployment options of exported models, shared by :func:`aitune_triton.export` and the CLI.

Each option class validates itself when built (raising :class:`InvalidOptionError`, which names
the field, what was expected, what was given and what to do) and writes its part of a
``model_config_pb2.ModelConfig`` message. The fields and their meaning follow Triton's model
configuration schema (``model_config.proto``, Triton 2.51) and its "Model Configuration" docs
(dynamic batcher, instance groups, version policy, response cache, model warmup).

Defaults and where they come from:

================================  ===========  ==============================================
option                            default      source
================================  ===========  ==============================================
dynamic batching queue delay      100 us       kept from earlier exports (a short wait)
preferred_batch_size              measured     the tuning's batch size sweep, else a declared
                                               ``BatchDim`` opt, else Triton's choice
instance kind                     auto         GPU when tuned on CUDA
instance count                    measured     the layout measured at tune time (strategies'
                                               ``measure_layouts``), else 1 (one process)
intra-op threads per instance     measured     the measured layout's threads, else 1: from
                                               ``benchmarks/served_threads.py`` (see README)
version_policy                    latest 1     Triton's own default
response_cache                    off          Triton's own default (needs a cache at start)
model_warmup                      on           recorded calls; load time for first-request time
================================  ===========  ==============================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.errors import InvalidOptionError

__all__ = [
    "DEFAULT_INTRA_OP_THREADS",
    "MEASURED",
    "THREADS_PARAMETER",
    "DynamicBatching",
    "InstanceGroup",
    "InstanceKind",
    "QueuePolicy",
    "TimeoutAction",
    "VersionPolicy",
]

#: Config parameter holding the intra-op threads of each instance, read by the generated model.py.
THREADS_PARAMETER = "aitune_triton.intra_op_threads"

#: Intra-op threads per instance, from ``benchmarks/served_threads.py`` on this project's 2-core
#: machines with another process keeping one core busy (one instance, 2 gRPC clients, batch 8 of a
#: 256-1024-256 MLP, 5 s x 3 rounds side by side): 2 threads vs 1 gave 0.57-1.46x the requests/s
#: with ONNX Runtime (1 thread: 675/791/1596 req/s min/median/max) and 0.06-0.16x with
#: AOTInductor (1 thread: 386/614/909 req/s; 2 threads: 40/50/63). An earlier run here gave
#: 0.67-1.04x and 0.29-0.30x. One thread never collapses; two can.
DEFAULT_INTRA_OP_THREADS = 1

#: ``intra_op_threads`` value (the default) taking the threads of the layout measured at tune time
#: (:mod:`aitune_triton.strategies.layout`); without a measurement, :data:`DEFAULT_INTRA_OP_THREADS`.
MEASURED = "measured"


def _fail(field_name: str, expected: str, got: Any, todo: str = "") -> InvalidOptionError:
    return InvalidOptionError(f"{field_name}: expected {expected}, got {got!r}." + (f" {todo}" if todo else ""))


def check_int(field_name: str, value: Any, minimum: int = 0, todo: str = "") -> int:
    """``value`` when it is an integer >= ``minimum`` (bools refused).

    Raises:
        InvalidOptionError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(field_name, f"an integer >= {minimum}", value, todo)
    return value


def _check_bool(field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(field_name, "True or False", value)
    return value


def _ints(field_name: str, values: Any, minimum: int, todo: str = "") -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise _fail(field_name, f"a sequence of integers >= {minimum}", values, todo)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(field_name, f"integers >= {minimum}", list(values), todo)
    return tuple(values)


def _enum(enum_type: type[enum.Enum], field_name: str, value: Any) -> Any:
    try:
        if isinstance(value, str):  # either case: "cpu" / "CPU", "reject" / "REJECT"
            value = value.lower() if enum_type is InstanceKind else value.upper()
        return enum_type(value)
    except ValueError:
        names = ", ".join(repr(member.value) for member in enum_type)
        raise _fail(field_name, f"one of {names}", value) from None


class InstanceKind(str, enum.Enum):
    """Where instances run (``instance_group.kind``). ``AUTO``: GPU when the backend was tuned on CUDA.

    A CPU-only server loads only ``KIND_CPU`` instances (measured with the embedded server).
    """

    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"


class TimeoutAction(str, enum.Enum):
    """What the queue does with a request past its timeout (``ModelQueuePolicy.TimeoutAction``)."""

    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True)
class QueuePolicy:
    """The dynamic batcher's queue policy (``dynamic_batching.default_queue_policy``).

    Attributes:
        timeout_action: ``REJECT`` (fail the request) or ``DELAY`` (run it after the others) once
            it waited ``default_timeout_microseconds``.
        default_timeout_microseconds: Queue timeout of a request, in microseconds; 0: none.
        allow_timeout_override: Whether a request's own timeout parameter may replace it.
        max_queue_size: Requests the queue holds before new ones are rejected; 0: unbounded.

    Raises:
        InvalidOptionError: a field has a value Triton cannot take.
    """

    timeout_action: TimeoutAction | str = TimeoutAction.REJECT
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout_action", _enum(TimeoutAction, "default_queue_policy.timeout_action", self.timeout_action))
        check_int("default_queue_policy.default_timeout_microseconds", self.default_timeout_microseconds)
        _check_bool("default_queue_policy.allow_timeout_override", self.allow_timeout_override)
        check_int("default_queue_policy.max_queue_size", self.max_queue_size)

    def apply(self, message: Any) -> None:
        """Fill a ``ModelQueuePolicy`` message."""
        action = TimeoutAction(self.timeout_action)
        message.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(action.value)
        message.default_timeout_microseconds = self.default_timeout_microseconds
        message.allow_timeout_override = self.allow_timeout_override
        message.max_queue_size = self.max_queue_size


@dataclass(frozen=True)
class DynamicBatching:
    """The dynamic batcher of graph models that batch (``max_batch_size > 0``).

    Attributes:
        preferred_batch_size: Batch sizes the batcher aims for; empty: the size measured by the
            tuning's batch size sweep when there was one, else a declared ``BatchDim``'s ``opt``,
            else Triton decides. Sizes above the
            model's ``max_batch_size`` are left out.
        max_queue_delay_microseconds: How long a request may wait for a larger batch (us).
        preserve_ordering: Responses leave in the order requests came.
        priority_levels: Number of priority levels; 0: one queue.
        default_priority_level: Level of a request that names none (1..priority_levels).
        default_queue_policy: The queue policy; None: Triton's (no timeout, unbounded).

    Raises:
        InvalidOptionError: a field has a value Triton cannot take, ``default_priority_level``
            is outside ``1..priority_levels``, or ``preserve_ordering`` comes with more than one
            priority level (Triton refuses to load that).
    """

    preferred_batch_size: Sequence[int] = ()
    max_queue_delay_microseconds: int = 100
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_size", _ints("preferred_batch_size", self.preferred_batch_size, 1))
        check_int("max_queue_delay_microseconds", self.max_queue_delay_microseconds)
        _check_bool("preserve_ordering", self.preserve_ordering)
        check_int("priority_levels", self.priority_levels)
        check_int("default_priority_level", self.default_priority_level)
        if self.priority_levels and not 1 <= self.default_priority_level <= self.priority_levels:
            raise _fail(
                "default_priority_level", f"a level in 1..{self.priority_levels} (priority_levels)", self.default_priority_level,
                "Set default_priority_level to the level of requests that name none.",
            )
        if not self.priority_levels and self.default_priority_level:
            raise _fail("default_priority_level", "0 without priority_levels", self.default_priority_level,
                        "Set priority_levels too.")
        if self.preserve_ordering and self.priority_levels > 1:
            # Triton refuses to load such a model ("Only one priority level is allowed when
            # 'preserve_ordering' is true"; measured with the embedded 2.51 server).
            raise _fail("priority_levels", "0 or 1 with preserve_ordering", self.priority_levels,
                        "Drop preserve_ordering or the priority levels.")
        if self.default_queue_policy is not None and not isinstance(self.default_queue_policy, QueuePolicy):
            raise _fail("default_queue_policy", "a QueuePolicy or None", self.default_queue_policy)

    def apply(self, config: mc.ModelConfig, measured_batch_size: int | None = None) -> None:
        """Fill ``config.dynamic_batching`` (the caller decides whether the model batches)."""
        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = self.max_queue_delay_microseconds
        preferred = list(self.preferred_batch_size) or ([measured_batch_size] if measured_batch_size else [])
        batching.preferred_batch_size.extend([size for size in preferred if size <= config.max_batch_size])
        batching.preserve_ordering = self.preserve_ordering
        if self.priority_levels:
            batching.priority_levels = self.priority_levels
            batching.default_priority_level = self.default_priority_level
        if self.default_queue_policy is not None:
            self.default_queue_policy.apply(batching.default_queue_policy)


@dataclass(frozen=True)
class InstanceGroup:
    """The instances of one model (``instance_group``).

    Attributes:
        kind: ``"auto"``, ``"cpu"`` or ``"gpu"`` (:class:`InstanceKind`).
        count: Instances per device (per GPU with ``KIND_GPU``); each Python-backend instance is
            a separate process.
        gpus: GPU indices for ``KIND_GPU`` instances; empty: every GPU.

    Raises:
        InvalidOptionError: a field has a value Triton cannot take, or ``gpus`` are given for CPU instances.
    """

    kind: InstanceKind | str = InstanceKind.AUTO
    count: int = 1
    gpus: Sequence[int] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(InstanceKind, "instance_kind", self.kind))
        check_int("instance_count", self.count, 1, "Each instance is one process; pass 1 or more.")
        object.__setattr__(self, "gpus", _ints("gpus", self.gpus, 0))
        if self.gpus and self.kind is InstanceKind.CPU:
            raise _fail("gpus", "no GPU indices for instance_kind 'cpu'", list(self.gpus), "Drop gpus or pass instance_kind 'gpu'.")

    def is_gpu(self, device: str) -> bool:
        """Whether the instances are ``KIND_GPU`` for a backend tuned on ``device`` (``"cpu"``, ``"cuda:0"``)."""
        return self.kind is InstanceKind.GPU or (self.kind is InstanceKind.AUTO and device.startswith("cuda"))

    def message(self, device: str) -> Any:
        """The ``ModelInstanceGroup`` message; GPU indices only with ``KIND_GPU``."""
        gpu = self.is_gpu(device)
        kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
        group = mc.ModelInstanceGroup(kind=kind, count=self.count)
        if gpu:
            group.gpus.extend(self.gpus)
        return group


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model the server serves (``version_policy``).

    Attributes:
        latest: Serve the newest ``latest`` versions (used when ``all`` is False and ``specific``
            is empty).
        all: Serve every version directory.
        specific: Serve exactly these versions.

    Raises:
        InvalidOptionError: more than one of the three is chosen, or a number is below 1.
    """

    latest: int = 1
    all: bool = False
    specific: Sequence[int] = ()

    def __post_init__(self) -> None:
        check_int("version_policy.latest", self.latest, 1)
        _check_bool("version_policy.all", self.all)
        object.__setattr__(self, "specific", _ints("version_policy.specific", self.specific, 1))
        if self.all and self.specific:
            raise _fail("version_policy", "one of all or specific", self, "Pass VersionPolicy(all=True) or VersionPolicy(specific=[...]).")

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """From ``"latest:N"``, ``"all"`` or ``"specific:1,3"`` (the CLI's form).

        Raises:
            InvalidOptionError: another form.
        """
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "all" and not rest:
                return cls(all=True)
            if kind == "latest":
                return cls(latest=int(rest))
            if kind == "specific" and rest:
                return cls(specific=tuple(int(part) for part in rest.split(",")))
        except ValueError:
            pass
        raise _fail("version_policy", "'latest:N' (N >= 1), 'all' or 'specific:V1,V2' (versions >= 1)", text)

    def apply(self, config: mc.ModelConfig) -> None:
        """Fill ``config.version_policy``."""
        if self.all:
            config.version_policy.all.SetInParent()
        elif self.specific:
            config.version_policy.specific.versions.extend(self.specific)
        else:
            config.version_policy.latest.num_versions = self.latest


def check_parameters(parameters: Any) -> dict[str, str]:
    """Free config ``parameters`` as a ``str -> str`` dict.

    Raises:
        InvalidOptionError: not a mapping of strings, or a key in the ``aitune_triton.`` namespace.
    """
    if not isinstance(parameters, Mapping):
        raise _fail("parameters", "a mapping of str -> str", parameters)
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise _fail("parameters", "non-empty str keys and str values", {key: value}, "Convert values with str().")
        if key.startswith("aitune_triton."):
            raise _fail("parameters", "keys outside the 'aitune_triton.' namespace (the exporter's own)", key)
    return dict(parameters)
