"""Typed options every deployment target shares (:class:`DeployOptions`), checked when made, and the
sizing rules that turn :class:`~aitune_triton.deployment.facts.RepositoryFacts` into probes and memory.

Sizing, with the measured facts of ``aitune-triton check --load`` where the repository has them:

* startup probe on ``/v2/health/ready``: ``failureThreshold x periodSeconds >= 2 x load_time_s +
  STARTUP_MARGIN_S`` (a node may load slower than the machine that measured; inductor models compile
  at load). Without a measured load time: :data:`DEFAULT_LOAD_TIME_S`.
* memory request: the measured peak resident memory x :data:`MEMORY_HEADROOM`; without it,
  :data:`BASE_MEMORY_BYTES` + the artifact bytes x :data:`ARTIFACT_MEMORY_FACTOR`. The limit is
  :data:`MEMORY_LIMIT_FACTOR` x the request.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar

from aitune_triton.deployment.facts import RepositoryFacts
from aitune_triton.deployment.images import ngc_image
from aitune_triton.errors import InvalidArgumentError

__all__ = [
    "DeployOptions", "Probes", "memory_request_bytes", "mebibytes", "resolve_image", "service_name", "startup_probes",
]

#: Load time assumed when the repository has no validation record (seconds).
DEFAULT_LOAD_TIME_S = 120.0
STARTUP_MARGIN_S = 30.0
PROBE_PERIOD_S = 5
#: Server + one Python-backend stub importing torch, assumed when no peak was measured.
BASE_MEMORY_BYTES = 1 << 30
ARTIFACT_MEMORY_FACTOR = 3.0
MEMORY_HEADROOM = 1.25
MEMORY_LIMIT_FACTOR = 2.0
#: The image when neither the options nor a validation record name one: the release of the Triton
#: version the nvidia-pytriton wheel embeds (2.51.0).
DEFAULT_SERVER_VERSION = "2.51.0"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://\S+$")


@dataclasses.dataclass(frozen=True)
class Probes:
    """Startup and readiness probe timing (seconds and counts), as Kubernetes probes take them."""

    period_s: int
    startup_failure_threshold: int
    readiness_failure_threshold: int = 3
    timeout_s: int = 3
    load_time_s: float = DEFAULT_LOAD_TIME_S
    measured: bool = False


def startup_probes(facts: RepositoryFacts) -> Probes:
    """Probe timing for ``facts``: ``startup_failure_threshold x period_s >= 2 x load + margin``."""
    load_time_s = facts.load_time_s if facts.load_time_s is not None else DEFAULT_LOAD_TIME_S
    budget_s = 2.0 * load_time_s + STARTUP_MARGIN_S
    return Probes(PROBE_PERIOD_S, max(3, math.ceil(budget_s / PROBE_PERIOD_S)), load_time_s=load_time_s,
                  measured=facts.load_time_s is not None)


def memory_request_bytes(facts: RepositoryFacts) -> int:
    """The memory request in bytes (see the module docstring), rounded up to a whole MiB."""
    if facts.peak_memory_bytes is not None:
        wanted = facts.peak_memory_bytes * MEMORY_HEADROOM
    else:
        wanted = BASE_MEMORY_BYTES + facts.artifact_bytes * ARTIFACT_MEMORY_FACTOR
    return math.ceil(wanted / (1 << 20)) * (1 << 20)


def mebibytes(size_bytes: float) -> str:
    """A Kubernetes quantity in whole MiB (``"1536Mi"``), rounded up."""
    return f"{math.ceil(size_bytes / (1 << 20))}Mi"


def resolve_image(image: str | None, facts: RepositoryFacts) -> tuple[str, str]:
    """``(image, where it comes from)``: the option, else the validated server version's NGC image,
    else the one of :data:`DEFAULT_SERVER_VERSION`."""
    if image:
        return image, "given by the image option"
    if facts.image:
        return facts.image, f"the NGC release of Triton {facts.server_version}, which check --load validated"
    default = ngc_image(DEFAULT_SERVER_VERSION)
    return default, (f"DEFAULT: the NGC release of Triton {DEFAULT_SERVER_VERSION} (not validated: run "
                     "aitune-triton check --load on the repository)")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name}: expected an integer >= {minimum}, got {value!r}.")


def _check_dns_label(name: str, value: Any) -> None:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise InvalidArgumentError(
            f"{name}: expected a Kubernetes name (lower-case letters, digits and '-', starting and ending with a letter "
            f"or digit, at most 63 characters), got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DeployOptions:
    """Options every deployment target takes.

    Attributes:
        name: Name of the deployed service (a DNS label); None: derived from the repository's
            directory name.
        replicas: Replicas (the minimum when autoscaled), >= 1.
        max_replicas: The autoscaler's maximum (>= replicas); None: twice ``replicas``.
        image: The Triton container image; None: the NGC image of the validated server version.
        namespace: The Kubernetes namespace.
        storage_uri: Where the repository is stored (``s3://bucket/path``, ``gs://...``; schemes per
            target in :attr:`storage_schemes`).
        pvc: A PersistentVolumeClaim holding the repository at its root (instead of ``storage_uri``).
        cpu: The CPU request per replica (a Kubernetes quantity: ``"1"``, ``"500m"``).
        memory: The memory request per replica (``"4Gi"``); None: sized from the facts.
        gpus: ``nvidia.com/gpu`` per replica when a model has KIND_GPU instances, >= 1.
        node_selector: Node labels a replica must run on (``{"nvidia.com/gpu.present": "true"}``).

    Raises:
        InvalidArgumentError: an option is out of range or malformed (the message names it), or both
            ``storage_uri`` and ``pvc`` are given.
    """

    storage_schemes: ClassVar[tuple[str, ...]] = ("s3", "gs", "as")

    name: str | None = None
    replicas: int = 1
    max_replicas: int | None = None
    image: str | None = None
    namespace: str = "default"
    storage_uri: str | None = None
    pvc: str | None = None
    cpu: str = "1"
    memory: str | None = None
    gpus: int = 1
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_int("replicas", self.replicas, 1)
        if self.max_replicas is not None:
            _check_int("max_replicas", self.max_replicas, self.replicas)
        _check_int("gpus", self.gpus, 1)
        if self.name is not None:
            _check_dns_label("name", self.name)
        _check_dns_label("namespace", self.namespace)
        if self.pvc is not None:
            _check_dns_label("pvc", self.pvc)
        if self.image is not None and (not isinstance(self.image, str) or not self.image or any(c.isspace() for c in self.image)):
            raise InvalidArgumentError(f"image: expected an image reference (registry/name:tag), got {self.image!r}.")
        if self.storage_uri is not None:
            match = _URI.match(self.storage_uri) if isinstance(self.storage_uri, str) else None
            if match is None or match.group(1) not in self.storage_schemes:
                raise InvalidArgumentError(
                    f"storage_uri: expected a URI with scheme {' or '.join(s + '://' for s in self.storage_schemes)}, "
                    f"got {self.storage_uri!r}.")
            if self.pvc is not None:
                raise InvalidArgumentError(f"storage_uri and pvc: give one, got both ({self.storage_uri!r}, {self.pvc!r}).")
        if not isinstance(self.node_selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            raise InvalidArgumentError(f"node_selector: expected a dict of label -> value strings, got {self.node_selector!r}.")

    @property
    def autoscale_max(self) -> int:
        """The autoscaler's maximum replicas."""
        return self.max_replicas if self.max_replicas is not None else 2 * self.replicas


def service_name(options: DeployOptions, facts: RepositoryFacts) -> str:
    """``options.name``, else the repository directory's name as a DNS label (``model_repository`` ->
    ``model-repository``).

    Raises:
        InvalidArgumentError: no name given and the directory name has no letter or digit.
    """
    if options.name:
        return options.name
    derived = re.sub(r"[^a-z0-9]+", "-", facts.repository.name.lower()).strip("-")[:63].strip("-")
    if not derived:
        raise InvalidArgumentError(f"name: the repository directory {facts.repository.name!r} gives no Kubernetes name; "
                                   "pass one (--name).")
    return derived
