"""The ``kserve`` deployment target: one KServe ``InferenceService`` (serving.kserve.io/v1beta1) on
the ``kserve-tritonserver`` runtime.

``inference_service.yaml`` holds the InferenceService: its predictor's model has the ``triton``
model format and runtime ``kserve-tritonserver``, ``storageUri`` the repository (``s3://``,
``gs://``, ``pvc://CLAIM/PATH``...; KServe's storage initializer copies it to ``/mnt/models``, where
the runtime's ``tritonserver`` reads it), ``minReplicas``/``maxReplicas``, resources and probes
sized as for the ``kubernetes`` target, and server arguments that the runtime's own follow. The
runtime serves HTTP on 8080 and gRPC on 9000, so the probes use 8080. ``runtimeVersion`` (the image
tag of the runtime) follows the validated Triton version unless ``image`` is given (then the image
replaces the runtime's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from aitune_triton.deployment.api import write_yaml
from aitune_triton.deployment.facts import RepositoryFacts
from aitune_triton.deployment.kubernetes import pod_security, probes, resources
from aitune_triton.deployment.options import DeployOptions, service_name
from aitune_triton.deployment.registry import DeploymentTarget

__all__ = ["KServeOptions", "KServeTarget"]

RUNTIME = "kserve-tritonserver"
HTTP_PORT = 8080
#: Appended to the runtime's tritonserver arguments: the written configs are used as they are.
SERVER_ARGS = ["--disable-auto-complete-config", "--exit-on-error=true", "--strict-readiness=true"]


@dataclasses.dataclass(frozen=True)
class KServeOptions(DeployOptions):
    """:class:`~aitune_triton.deployment.options.DeployOptions` for KServe: ``storage_uri`` may also be
    ``pvc://CLAIM/PATH`` or ``https://``; ``pvc`` (a claim holding the repository at its root) becomes
    ``pvc://CLAIM/``. One of the two is needed (checked when generating)."""

    storage_schemes: ClassVar[tuple[str, ...]] = ("s3", "gs", "pvc", "https", "hdfs", "webhdfs")


def _inference_service(options: DeployOptions, facts: RepositoryFacts, name: str) -> tuple[str, dict[str, Any]]:
    storage_uri = options.storage_uri or f"pvc://{options.pvc or f'{name}-model-repository'}/"
    probe_specs, probe_comment = probes(facts, HTTP_PORT)
    container_resources, memory_comment = resources(options, facts)
    _, container_context = pod_security()
    model: dict[str, Any] = {
        "modelFormat": {"name": "triton"}, "runtime": RUNTIME, "protocolVersion": "v2", "storageUri": storage_uri,
        "args": list(SERVER_ARGS), "resources": container_resources,
        "startupProbe": probe_specs["startupProbe"], "readinessProbe": probe_specs["readinessProbe"],
        "securityContext": {**container_context, "runAsUser": 1000, "runAsNonRoot": True},
    }
    if options.image:
        model["image"] = options.image
        image_note = f"image: {options.image} (given by the image option)"
    elif facts.image:
        model["runtimeVersion"] = facts.image.rsplit(":", 1)[1]
        image_note = f"runtimeVersion: the NGC release of Triton {facts.server_version}, which check --load validated"
    else:
        image_note = "image: the runtime's own (not validated: run aitune-triton check --load to pin runtimeVersion)"
    predictor: dict[str, Any] = {"minReplicas": options.replicas, "maxReplicas": options.autoscale_max, "model": model}
    if options.node_selector:
        predictor["nodeSelector"] = dict(options.node_selector)
    service = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": options.namespace},
        "spec": {"predictor": predictor},
    }
    default_storage = "" if options.storage_uri or options.pvc else " (DEFAULT claim name: pass --pvc or --storage-uri)"
    notes = [f"KServe InferenceService serving {facts.repository.name} ({len(facts.models)} models) on {RUNTIME}",
             f"storageUri: {storage_uri}{default_storage}; KServe copies it to /mnt/models", image_note,
             probe_comment, memory_comment]
    if facts.uses_python_backend:
        notes.append("Python-backend models: the image must hold the Python packages their model.py imports (torch...)")
    return "\n".join(notes), service


class KServeTarget(DeploymentTarget):
    """Writes ``inference_service.yaml``; see the module docstring."""

    name = "kserve"
    options_type = KServeOptions
    options: KServeOptions

    def write(self, repository: Path, facts: RepositoryFacts, output_dir: Path) -> list[Path]:
        """Write ``inference_service.yaml`` into ``output_dir``.

        Raises:
            InvalidArgumentError: no service name derives from the repository.
        """
        name = service_name(self.options, facts)
        comment, service = _inference_service(self.options, facts, name)
        return [write_yaml(output_dir / "inference_service.yaml", [(comment, service)])]
