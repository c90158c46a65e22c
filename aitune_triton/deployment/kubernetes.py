"""The ``kubernetes`` deployment target: tritonserver pods behind a Service, autoscaled.

Files written (each ``kubectl apply -f DIR`` ready, sized from
:func:`~aitune_triton.deployment.facts.repository_facts`; comments in them say where each size comes from):

* ``deployment.yaml``: a Deployment of ``tritonserver`` pods reading the repository from a
  PersistentVolumeClaim (mounted read-only at ``/models``) or from an object-store URI Triton reads
  itself (``--model-repository=s3://...``, ``gs://``, ``as://``), with the server arguments complete
  (``--disable-auto-complete-config``, ``--exit-on-error``, ``--strict-readiness``), startup,
  readiness and liveness probes, memory sized from the measured peak, uid 1000 non-root, and
  ``nvidia.com/gpu`` limits plus the node selector when a model has KIND_GPU instances.
* ``service.yaml``: a Service with HTTP 8000, gRPC 8001 and metrics 8002.
* ``autoscaler.yaml``: a HorizontalPodAutoscaler (autoscaling/v2) on CPU utilization, with the
  settings for Triton's queue-time metric through a custom-metrics adapter as comments.
* ``monitor.yaml`` (``monitor="service"`` or ``"pod"``): a Prometheus Operator ServiceMonitor or
  PodMonitor (monitoring.coreos.com/v1) scraping ``/metrics`` on port 8002.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aitune_triton.deployment.api import write_yaml
from aitune_triton.deployment.facts import RepositoryFacts
from aitune_triton.deployment.options import (
    MEMORY_LIMIT_FACTOR,
    DeployOptions,
    memory_request_bytes,
    mebibytes,
    resolve_image,
    service_name,
    startup_probes,
)
from aitune_triton.deployment.registry import DeploymentTarget
from aitune_triton.errors import InvalidArgumentError

__all__ = ["KubernetesOptions", "KubernetesTarget", "PORTS", "server_args"]

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
MOUNT_PATH = "/models"
#: Memory-backed /dev/shm for the Python backend (it passes tensors to its stubs through shared
#: memory; a container's default /dev/shm is 64 MiB).
SHM_SIZE = "1Gi"
UID = 1000
MONITORS = {"none": None, "service": "ServiceMonitor", "pod": "PodMonitor"}


@dataclasses.dataclass(frozen=True)
class KubernetesOptions(DeployOptions):
    """:class:`~aitune_triton.deployment.options.DeployOptions` plus what a plain Kubernetes deployment takes.

    Attributes:
        target_cpu_utilization: The autoscaler's target average CPU utilization, percent of the
            request (1-100).
        monitor: ``"none"``, ``"service"`` (a ServiceMonitor) or ``"pod"`` (a PodMonitor); needs the
            Prometheus Operator's CRDs on the cluster.

    Raises:
        InvalidArgumentError: as DeployOptions, or an option here is out of range.
    """

    target_cpu_utilization: int = 70
    monitor: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.target_cpu_utilization
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise InvalidArgumentError(f"target_cpu_utilization: expected a percentage 1-100, got {value!r}.")
        if self.monitor not in MONITORS:
            raise InvalidArgumentError(f"monitor: expected one of {sorted(MONITORS)}, got {self.monitor!r}.")


def server_args(model_repository: str) -> list[str]:
    """The ``tritonserver`` command line in a pod: the ports of :data:`PORTS`, configs used as written."""
    return [
        "tritonserver",
        f"--model-repository={model_repository}",
        f"--http-port={PORTS['http']}",
        f"--grpc-port={PORTS['grpc']}",
        f"--metrics-port={PORTS['metrics']}",
        "--disable-auto-complete-config",
        "--exit-on-error=true",
        "--strict-readiness=true",
    ]


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "tritonserver"}


def probes(facts: RepositoryFacts, port: int | str) -> tuple[dict[str, Any], str]:
    """``({"startupProbe": ..., "readinessProbe": ..., "livenessProbe": ...}, comment)`` on Triton's health endpoints."""
    timing = startup_probes(facts)

    def probe(path: str, failure_threshold: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "periodSeconds": timing.period_s,
                "timeoutSeconds": timing.timeout_s, "failureThreshold": failure_threshold}

    source = "measured by check --load" if timing.measured else "DEFAULT (not measured: run aitune-triton check --load)"
    comment = (f"startupProbe: {timing.startup_failure_threshold} x {timing.period_s} s >= 2 x load time "
               f"{timing.load_time_s:g} s ({source}) + 30 s margin")
    return {"startupProbe": probe("/v2/health/ready", timing.startup_failure_threshold),
            "readinessProbe": probe("/v2/health/ready", timing.readiness_failure_threshold),
            "livenessProbe": probe("/v2/health/live", timing.readiness_failure_threshold)}, comment


def resources(options: DeployOptions, facts: RepositoryFacts) -> tuple[dict[str, Any], str]:
    """``(container resources, comment)``: CPU and memory requests, memory limit, GPUs when ``facts.gpu``."""
    if options.memory is not None:
        request, source = options.memory, "given by the memory option"
        limit = None
    else:
        request_bytes = memory_request_bytes(facts)
        request, limit = mebibytes(request_bytes), mebibytes(request_bytes * MEMORY_LIMIT_FACTOR)
        source = (f"measured peak {facts.peak_memory_bytes} bytes x 1.25" if facts.peak_memory_bytes is not None else
                  f"DEFAULT: 1 GiB + 3 x {facts.artifact_bytes} artifact bytes (no measured peak: run aitune-triton "
                  "check --load)")
    result: dict[str, Any] = {"requests": {"cpu": options.cpu, "memory": request}}
    if limit is not None:
        result["limits"] = {"memory": limit}
    if facts.gpu:
        result.setdefault("limits", {})["nvidia.com/gpu"] = options.gpus
    return result, f"memory request: {source}" + (f"; limit {MEMORY_LIMIT_FACTOR:g} x the request" if limit else "")


def _storage(options: DeployOptions, name: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], str]:
    """``(--model-repository value, volumes, volume mounts, comment)``."""
    if options.storage_uri is not None:
        return (options.storage_uri, [], [],
                f"repository: read by Triton from {options.storage_uri} (credentials: the cloud's environment "
                "variables, e.g. from a Secret through envFrom)")
    claim = options.pvc or f"{name}-model-repository"
    volumes = [{"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
    mounts = [{"name": "model-repository", "mountPath": MOUNT_PATH, "readOnly": True}]
    default = "" if options.pvc else " (DEFAULT name: pass --pvc)"
    return MOUNT_PATH, volumes, mounts, f"repository: PersistentVolumeClaim {claim}{default} holding it at its root"


def pod_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """``(pod securityContext, container securityContext)``: uid/gid 1000, non-root, no privilege escalation."""
    return ({"runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "runAsNonRoot": True},
            {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}})


def _deployment(options: KubernetesOptions, facts: RepositoryFacts, name: str) -> tuple[str, dict[str, Any]]:
    image, image_source = resolve_image(options.image, facts)
    repository_arg, volumes, mounts, storage_comment = _storage(options, name)
    probe_specs, probe_comment = probes(facts, "http")
    container_resources, memory_comment = resources(options, facts)
    pod_context, container_context = pod_security()
    if facts.uses_python_backend:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container: dict[str, Any] = {
        "name": "tritonserver", "image": image, "args": server_args(repository_arg),
        "ports": [{"name": port, "containerPort": number} for port, number in PORTS.items()],
        **probe_specs, "resources": container_resources, "securityContext": container_context,
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"securityContext": pod_context, "containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": options.namespace, "labels": _labels(name)},
        "spec": {"replicas": options.replicas, "selector": {"matchLabels": _labels(name)},
                 "template": {"metadata": {"labels": _labels(name)}, "spec": pod}},
    }
    notes = [f"Triton serving {facts.repository.name} ({len(facts.models)} models: {', '.join(facts.models)})",
             f"image: {image_source}", storage_comment, probe_comment, memory_comment]
    if facts.uses_python_backend:
        notes.append("Python-backend models: the image must hold the Python packages their model.py imports "
                     f"(torch...); /dev/shm is memory-backed ({SHM_SIZE}) for the backend's shared memory")
    if facts.gpu:
        notes.append(f"KIND_GPU instances: {options.gpus} nvidia.com/gpu per pod (needs NVIDIA's device plugin)")
    return "\n".join(notes), deployment


def _service(options: KubernetesOptions, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": options.namespace, "labels": _labels(name)},
        "spec": {"selector": _labels(name), "ports": [
            {"name": port, "port": number, "targetPort": port, "protocol": "TCP"} for port, number in PORTS.items()]},
    }


QUEUE_TIME_ALTERNATIVE = """\
Scale on Triton's queue time instead of CPU: with a custom-metrics adapter (prometheus-adapter) exposing
the per-request queue time of each pod as a Pods metric, e.g. an adapter rule computing
  rate(nv_inference_queue_duration_us[1m]) / rate(nv_inference_request_success[1m])
as triton_queue_duration_us_per_request, replace spec.metrics below with:
  metrics:
  - type: Pods
    pods:
      metric:
        name: triton_queue_duration_us_per_request
      target:
        type: AverageValue
        averageValue: "50000"    # 50 ms of queueing per request"""


def _autoscaler(options: KubernetesOptions, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": options.namespace, "labels": _labels(name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": options.replicas, "maxReplicas": options.autoscale_max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": options.target_cpu_utilization}}}],
        },
    }


def _monitor(options: KubernetesOptions, name: str) -> dict[str, Any]:
    kind = MONITORS[options.monitor]
    endpoint = {"port": "metrics", "path": "/metrics", "interval": "15s"}
    key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": kind,
        "metadata": {"name": name, "namespace": options.namespace, "labels": _labels(name)},
        "spec": {"selector": {"matchLabels": _labels(name)}, key: [endpoint]},
    }


class KubernetesTarget(DeploymentTarget):
    """Writes ``deployment.yaml``, ``service.yaml``, ``autoscaler.yaml`` (and ``monitor.yaml``); see the module docstring."""

    name = "kubernetes"
    options_type = KubernetesOptions
    options: KubernetesOptions

    def write(self, repository: Path, facts: RepositoryFacts, output_dir: Path) -> list[Path]:
        """Write the manifests into ``output_dir``.

        Raises:
            InvalidArgumentError: no service name derives from the repository.
        """
        name = service_name(self.options, facts)
        comment, deployment = _deployment(self.options, facts, name)
        files = [
            write_yaml(output_dir / "deployment.yaml", [(comment, deployment)]),
            write_yaml(output_dir / "service.yaml", [("HTTP 8000, gRPC 8001, metrics 8002", _service(self.options, name))]),
            write_yaml(output_dir / "autoscaler.yaml", [(QUEUE_TIME_ALTERNATIVE, _autoscaler(self.options, name))]),
        ]
        if MONITORS[self.options.monitor]:
            files.append(write_yaml(output_dir / "monitor.yaml", [
                ("Needs the Prometheus Operator (monitoring.coreos.com CRDs)", _monitor(self.options, name))]))
        return sorted(files)
