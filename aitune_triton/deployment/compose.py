"""The ``compose`` deployment target: N Triton replicas on one host behind an nginx load balancer.

``generate`` writes two files:

- ``compose.yaml`` (Compose specification): services ``triton-1`` .. ``triton-N`` running the Triton
  image that matches the repository's server version with complete ``tritonserver`` arguments, the
  repository bind-mounted read-only at ``/models``, user 1000, a healthcheck on
  ``/v2/health/ready`` whose start period comes from the measured model load time; and ``nginx``,
  which publishes HTTP and gRPC and starts once every replica is healthy.
- ``nginx.conf`` (:func:`aitune_triton.deployment.nginx.nginx_config`): HTTP and gRPC balanced over the
  replicas with passive failover.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from aitune_triton.deployment.facts import RepositoryFacts, unreadable_by_others
from aitune_triton.deployment.nginx import nginx_config
from aitune_triton.deployment.options import memory_request_bytes, resolve_image
from aitune_triton.deployment.registry import DeploymentTarget
from aitune_triton.errors import InvalidArgumentError

__all__ = ["ComposeOptions", "ComposeTarget", "compose_document", "healthcheck_start_period_s", "unreadable_by_others"]

#: Ports inside each replica's container (Triton's defaults).
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
#: Where the repository is mounted in each replica.
MODELS_DIR = "/models"
#: Start period when the repository has no measured load time (an inductor model compiles at load).
UNMEASURED_START_PERIOD_S = 300


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name}: expected an integer >= {minimum}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ComposeOptions:
    """Options of the compose target (checked when built).

    Attributes:
        replicas: Number of Triton replicas (>= 1).
        image: The Triton image of every replica; None: the NGC ``tritonserver`` image matching the
            server version the repository was validated with. Models served by the Python backend
            need an image holding their runtime (torch, onnxruntime at the artifacts' versions).
        nginx_image: The load balancer's image.
        http_port: Host port of the balanced HTTP/REST endpoint.
        grpc_port: Host port of the balanced gRPC endpoint.
        repository_source: Host path bind-mounted read-only at ``/models``; None: the repository's
            absolute path (the compose file then runs on the host that holds it).
        gpus_per_replica: GPUs reserved for each replica; None: 1 when a model's instance group is
            ``KIND_GPU``, else 0.
        shm_size_bytes: Each replica's ``/dev/shm`` in bytes (the Python backend passes tensors
            through shared memory).
        extra_server_args: More ``tritonserver`` arguments appended to every replica's command.
    """

    replicas: int = 2
    image: str | None = None
    nginx_image: str = "nginx:1.27"
    http_port: int = 8000
    grpc_port: int = 8001
    repository_source: str | None = None
    gpus_per_replica: int | None = None
    shm_size_bytes: int = 1 << 30
    extra_server_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _positive_int("replicas", self.replicas)
        for name in ("http_port", "grpc_port"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                raise InvalidArgumentError(f"{name}: expected a port 1-65535, got {value!r}.")
        if self.http_port == self.grpc_port:
            raise InvalidArgumentError(f"grpc_port: must differ from http_port, both are {self.http_port}.")
        for name in ("image", "nginx_image", "repository_source"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value)):
                raise InvalidArgumentError(f"{name}: expected a non-empty string without spaces, got {value!r}.")
        if self.nginx_image is None:
            raise InvalidArgumentError("nginx_image: expected an image name such as 'nginx:1.27', got None.")
        if self.gpus_per_replica is not None:
            _positive_int("gpus_per_replica", self.gpus_per_replica, minimum=0)
        _positive_int("shm_size_bytes", self.shm_size_bytes)
        if isinstance(self.extra_server_args, str) or not all(isinstance(a, str) for a in self.extra_server_args):
            raise InvalidArgumentError(
                f"extra_server_args: expected a tuple of strings ('--log-verbose=1', ...), got {self.extra_server_args!r}."
            )


def healthcheck_start_period_s(load_time_s: float | None) -> int:
    """Seconds a replica may take to become ready before failed healthchecks count.

    Three times the measured load time (Triton loads models in parallel, but replicas starting on the
    same host share its cores), at least 30 s; :data:`UNMEASURED_START_PERIOD_S` when not measured.
    """
    if load_time_s is None:
        return UNMEASURED_START_PERIOD_S
    return max(30, math.ceil(3 * load_time_s))


def server_command(extra_args: tuple[str, ...] = ()) -> list[str]:
    """Every replica's complete ``tritonserver`` command line (no reliance on Triton's defaults)."""
    return [
        "tritonserver",
        f"--model-repository={MODELS_DIR}",
        "--model-control-mode=none",
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        "--exit-timeout-secs=30",
        *extra_args,
    ]


def _replica(options: ComposeOptions, facts: RepositoryFacts, source: str) -> dict[str, Any]:
    ready_check = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/v2/health/ready', timeout=2)"
    )
    service: dict[str, Any] = {
        "image": resolve_image(options.image, facts)[0],
        "command": server_command(options.extra_server_args),
        "user": "1000:1000",
        "volumes": [{"type": "bind", "source": source, "target": MODELS_DIR, "read_only": True}],
        "shm_size": options.shm_size_bytes,
        "expose": [str(HTTP_PORT), str(GRPC_PORT), str(METRICS_PORT)],
        "healthcheck": {
            # python3 is in every NGC tritonserver -py3 image (the Python backend needs it); an HTTP error raises.
            "test": ["CMD", "python3", "-c", ready_check],
            "interval": "5s",
            "timeout": "3s",
            "retries": 3,
            "start_period": f"{healthcheck_start_period_s(facts.load_time_s)}s",
        },
        "stop_grace_period": "40s",  # Triton drains in-flight requests for --exit-timeout-secs=30
        "restart": "unless-stopped",
    }
    gpus = options.gpus_per_replica if options.gpus_per_replica is not None else int(facts.gpu)
    resources: dict[str, Any] = {}
    if facts.peak_memory_bytes is not None:  # the measured peak with the kubernetes target's headroom
        resources["memory"] = f"{memory_request_bytes(facts) >> 20}m"
    if gpus:
        resources["devices"] = [{"driver": "nvidia", "count": gpus, "capabilities": ["gpu"]}]
    if resources:
        service["deploy"] = {"resources": {"reservations": resources}}
    return service


def compose_document(repository: Path, options: ComposeOptions, facts: RepositoryFacts) -> dict[str, Any]:
    """The compose file's content as plain data (services ``triton-1`` .. ``triton-N`` and ``nginx``).

    Args:
        repository: The model repository (its absolute path is the default mount source).
        options: The compose options.
        facts: The repository's facts (image, load time, peak memory, GPU use).

    Returns:
        A dict that ``yaml.safe_dump`` writes as ``compose.yaml``.
    """
    source = options.repository_source or str(Path(repository).resolve())
    replicas = [f"triton-{index}" for index in range(1, options.replicas + 1)]
    services: dict[str, Any] = {name: _replica(options, facts, source) for name in replicas}
    services["nginx"] = {
        "image": options.nginx_image,
        "volumes": [{"type": "bind", "source": "./nginx.conf", "target": "/etc/nginx/nginx.conf", "read_only": True}],
        "ports": [f"{options.http_port}:{HTTP_PORT}", f"{options.grpc_port}:{GRPC_PORT}"],
        "depends_on": {name: {"condition": "service_healthy"} for name in replicas},
        "restart": "unless-stopped",
    }
    return {
        "services": services,
        "x-aitune-triton": {
            "server_version": facts.server_version,
            "models": list(facts.models),
            "load_time_s": facts.load_time_s,
            "peak_memory_bytes": facts.peak_memory_bytes,
            "uses_python_backend": facts.uses_python_backend,
        },
    }


def _use_runtime_build(document: dict[str, Any], output_dir: Path, options: ComposeOptions, facts: RepositoryFacts) -> bool:
    """Where Python-backend models would run on the stock image (no ``image`` option) and the
    runtime environment lies in ``output_dir/runtime`` (``deploy`` writes it first), the replicas
    build their image from it (``build: ./runtime``, tagged ``<repository>-triton-runtime``).
    Returns whether they do."""
    if options.image is not None or not facts.uses_python_backend or not (output_dir / "runtime" / "Dockerfile").is_file():
        return False
    tag = f"{facts.repository.name.lower()}-triton-runtime"
    for name, service in document["services"].items():
        if name.startswith("triton-"):
            service["image"], service["build"] = tag, {"context": "./runtime"}
    return True


def _header(options: ComposeOptions, facts: RepositoryFacts, built: bool = False) -> str:
    lines = [
        "# Generated by aitune-triton (deploy --target compose). Run: docker compose up -d",
        f"# {options.replicas} Triton replica(s) behind nginx: HTTP on port {options.http_port}, gRPC on {options.grpc_port}.",
        "# Each replica's metrics stay on the compose network (triton-N:8002).",
    ]
    if built:
        lines.append("# The replicas run the image built from runtime/ (the models' runtime environment): "
                     "docker compose up builds it.")
    elif facts.uses_python_backend and options.image is None:
        lines.append(
            "# The repository's models run in Triton's Python backend: the stock image lacks their runtime "
            "(torch, onnxruntime); pass an image that has it (options.image)."
        )
    return "\n".join(lines) + "\n"


class ComposeTarget(DeploymentTarget):
    """Writes ``compose.yaml`` and ``nginx.conf``: N Triton replicas on one host behind nginx."""

    name = "compose"
    options_type = ComposeOptions
    builds_runtime_image = True
    options: ComposeOptions

    def write(self, repository: Path, facts: RepositoryFacts, output_dir: Path) -> list[Path]:
        """Write ``compose.yaml`` and ``nginx.conf`` into ``output_dir``; the replicas build their
        image from ``output_dir/runtime`` when it is there (see :func:`_use_runtime_build`)."""
        import yaml  # type: ignore[import-untyped]

        names = [f"triton-{index}" for index in range(1, self.options.replicas + 1)]
        nginx = nginx_config(
            [f"{name}:{HTTP_PORT}" for name in names],
            [f"{name}:{GRPC_PORT}" for name in names],
            http_port=HTTP_PORT,
            grpc_port=GRPC_PORT,
        )
        document = compose_document(repository, self.options, facts)
        built = _use_runtime_build(document, output_dir, self.options, facts)
        compose_path, nginx_path = output_dir / "compose.yaml", output_dir / "nginx.conf"
        compose_path.write_text(_header(self.options, facts, built) + yaml.safe_dump(document, sort_keys=False))
        nginx_path.write_text(nginx)
        return [compose_path, nginx_path]
