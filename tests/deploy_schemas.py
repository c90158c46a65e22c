"""Schema validation of the generated deployment manifests (no cluster runs here).

* Kubernetes built-in kinds (Deployment, Service, HorizontalPodAutoscaler, and the Pod a container
  spec belongs to): the ``kubernetes-validate`` package against the Kubernetes API's OpenAPI schema
  of :data:`KUBERNETES_VERSION`, strict (an unknown field is an error).
* KServe ``InferenceService`` (serving.kserve.io/v1beta1): :data:`INFERENCE_SERVICE_SCHEMA`, a JSON
  schema written here from the facts of KServe's CRD (config/crd/full/serving.kserve.io_
  inferenceservices.yaml of github.com/kserve/kserve): ``spec`` requires ``predictor``; the predictor's
  ``minReplicas``/``maxReplicas`` are int32, ``nodeSelector`` a map of strings; its ``model`` requires
  ``modelFormat.name`` and takes ``runtime``, ``runtimeVersion``, ``protocolVersion``, ``storageUri``
  (strings) besides the fields of a Kubernetes container. It covers only the fields we generate
  (``additionalProperties: false`` on them, so a misspelt field fails); the container fields of the
  model (args, image, resources, probes, securityContext) are validated strictly as a v1 Container
  through ``kubernetes-validate`` (a Pod holding them).
* Prometheus Operator ``ServiceMonitor`` / ``PodMonitor`` (monitoring.coreos.com/v1):
  :data:`MONITOR_SCHEMA`, from the facts of the operator's CRDs: ``spec.selector`` a label selector,
  ``endpoints`` / ``podMetricsEndpoints`` items with ``port`` (a port name), ``path`` and ``interval``
  (a Prometheus duration), again only the fields we generate.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.30.0"

_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}]}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

#: KServe model fields that are not v1 Container fields.
KSERVE_MODEL_FIELDS = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri")

INFERENCE_SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"], "additionalProperties": False,
                     "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRING_MAP}},
        "spec": {
            "type": "object", "required": ["predictor"], "additionalProperties": False,
            "properties": {"predictor": {
                "type": "object", "required": ["model"], "additionalProperties": False,
                "properties": {
                    "minReplicas": _INT32, "maxReplicas": _INT32, "nodeSelector": _STRING_MAP,
                    "model": {
                        "type": "object", "required": ["modelFormat"],
                        "properties": {
                            "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                                            "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                            "runtime": {"type": "string"}, "runtimeVersion": {"type": "string"},
                            "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                            "storageUri": {"type": "string", "pattern": r"^[a-z][a-z0-9+.-]*://\S+$"},
                        },
                    },
                },
            }},
        },
    },
}

_ENDPOINT = {"type": "object", "required": ["port"], "additionalProperties": False, "properties": {
    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
    "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}}}

MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"enum": ["ServiceMonitor", "PodMonitor"]},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": _NAME, "namespace": _NAME,
                                                                            "labels": _STRING_MAP}},
        "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "additionalProperties": False, "properties": {"matchLabels": _STRING_MAP}},
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
        }},
    },
}


def _container_as_pod(name: str, container: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "kserve-container", **container}]}}


def validate_manifest(document: dict[str, Any]) -> None:
    """Validate one generated document by its kind (see the module docstring).

    Raises:
        kubernetes_validate.ValidationError, jsonschema.ValidationError: it does not fit its schema.
    """
    if document.get("apiVersion") == "serving.kserve.io/v1beta1":
        jsonschema.validate(document, INFERENCE_SERVICE_SCHEMA)
        container = {k: v for k, v in document["spec"]["predictor"]["model"].items() if k not in KSERVE_MODEL_FIELDS}
        kubernetes_validate.validate(_container_as_pod(document["metadata"]["name"], copy.deepcopy(container)),
                                     KUBERNETES_VERSION, strict=True)
    elif document.get("apiVersion") == "monitoring.coreos.com/v1":
        jsonschema.validate(document, MONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
