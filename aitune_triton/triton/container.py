"""Serve a model repository with the NGC ``tritonserver`` image through the docker SDK (the ``docker`` extra).

:func:`container_spec` builds what runs (:class:`ContainerSpec`: image, command, mounts, published
ports, user) without touching an engine, so it is tested anywhere; :class:`TritonContainer` runs
it and waits for ``/v2/health/ready`` as :class:`~aitune_triton.triton.server.TritonServer` does
for a local process (``TritonServer(..., container=True)`` dispatches here).

The image is, in order: the one given; the image built from a runtime-environment directory
(``aitune-triton runtime-env``: its Dockerfile installs the packages the models need); the stock
NGC image of the server version the repository was exported with. The stock image suits a
``--target native`` repository (Triton's own ONNX Runtime / PyTorch backends) and Python-backend
models that need no package beyond the image's.
"""

from __future__ import annotations

import hashlib
import importlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from aitune_triton.errors import InvalidArgumentError, TritonServerError

__all__ = ["CONTAINER_PORTS", "MODEL_REPOSITORY_MOUNT", "ContainerSpec", "TritonContainer", "container_spec",
           "image_versions"]

#: Where the repository is mounted in the container.
MODEL_REPOSITORY_MOUNT = "/models"
#: Triton's HTTP, gRPC and metrics ports inside the image.
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
#: Triton's Helm chart and KServe run the server as this user; exported files are readable by it.
DEFAULT_USER = "1000:1000"


@dataclass(frozen=True)
class ContainerSpec:
    """What :class:`TritonContainer` runs.

    Attributes:
        image: Image reference (``nvcr.io/nvidia/tritonserver:24.10-py3``).
        command: The ``tritonserver`` command line inside the container.
        volumes: Host path -> ``{"bind": container path, "mode": "ro"}``.
        ports: ``"8000/tcp"`` -> ``(host address, host port)``.
        user: ``uid:gid`` the server runs as.
        gpus: GPUs requested from the NVIDIA runtime (0: none).
        build_context: A runtime-environment directory to build :attr:`image` from first; None: pull it.
        shm_size: Shared memory size; the Python backend passes tensors through it.
        labels: Container labels (what started it).
    """

    image: str
    command: list[str]
    volumes: dict[str, dict[str, str]]
    ports: dict[str, tuple[str, int]]
    user: str = DEFAULT_USER
    gpus: int = 0
    build_context: Path | None = None
    shm_size: str = "1g"
    labels: dict[str, str] = field(default_factory=dict)

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``docker.DockerClient.containers.run``."""
        kwargs: dict[str, Any] = dict(
            image=self.image, command=self.command, volumes=self.volumes, ports=self.ports, user=self.user,
            shm_size=self.shm_size, labels=self.labels, detach=True, remove=False,
        )
        if self.gpus:
            types = importlib.import_module("docker.types")
            kwargs["device_requests"] = [types.DeviceRequest(count=self.gpus, capabilities=[["gpu"]])]
        return kwargs


def _runtime_image(runtime_env: Path) -> tuple[str, Path]:
    """``(tag, context)`` of the image a runtime-environment directory builds (tag from its requirements' hash)."""
    context = Path(runtime_env).absolute()
    if not (context / "Dockerfile").is_file() or not (context / "requirements.txt").is_file():
        raise InvalidArgumentError(
            f"runtime_env: expected a directory written by `aitune-triton runtime-env` (Dockerfile, "
            f"requirements.txt), got {context}. Write one: aitune-triton runtime-env REPOSITORY -o DIR.")
    digest = hashlib.sha256((context / "Dockerfile").read_bytes() + (context / "requirements.txt").read_bytes())
    return f"aitune-triton-runtime:{digest.hexdigest()[:12]}", context


def container_spec(
    repository: Path,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str = "127.0.0.1",
    image: str | None = None,
    runtime_env: Path | None = None,
    server_version: str | None = None,
    user: str = DEFAULT_USER,
    gpus: int = 0,
    extra_args: Sequence[str] = (),
) -> ContainerSpec:
    """The container serving ``repository``: mounted read-only at ``/models``, ports published on ``host``.

    Args:
        repository: Model repository directory (absolute or relative to the working directory).
        http_port: Host port for HTTP (the container's 8000).
        grpc_port: Host port for gRPC (8001).
        metrics_port: Host port for metrics (8002).
        host: Host address the ports are published on.
        image: The image to run; None: built from ``runtime_env``, else the NGC image of the server version.
        runtime_env: A directory written by ``aitune-triton runtime-env``, built into the image.
        server_version: The Triton version for the stock image; None: the one the manifests record.
        user: ``uid:gid`` to run as.
        gpus: GPUs to request (0: CPU only, KIND_CPU models).
        extra_args: More ``tritonserver`` arguments.

    Raises:
        InvalidArgumentError: ``image`` and ``runtime_env`` are both given, ``runtime_env`` is not a
            runtime-environment directory, ``gpus`` is negative, or no image can be chosen (the
            server version is unknown: pass ``image``).
    """
    if image is not None and runtime_env is not None:
        raise InvalidArgumentError("image, runtime_env: pass one (runtime_env builds the image), not both.")
    if not isinstance(gpus, int) or gpus < 0:
        raise InvalidArgumentError(f"gpus: expected a count >= 0, got {gpus!r}.")
    build_context = None
    if runtime_env is not None:
        image, build_context = _runtime_image(runtime_env)
    elif image is None:
        from aitune_triton.deployment.runtime_env import runtime_environment

        image = runtime_environment(repository, server_version).image
        if image is None:
            raise InvalidArgumentError(
                "image: the repository's manifests do not say which Triton server exported it; pass image "
                "(an NGC tritonserver tag) or server_version.")
    command = ["tritonserver", f"--model-repository={MODEL_REPOSITORY_MOUNT}", "--disable-auto-complete-config",
               "--exit-on-error=true", "--strict-readiness=true", *extra_args]
    published = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    return ContainerSpec(
        image=image,
        command=command,
        volumes={str(Path(repository).absolute()): {"bind": MODEL_REPOSITORY_MOUNT, "mode": "ro"}},
        ports={f"{CONTAINER_PORTS[k]}/tcp": (host, published[k]) for k in CONTAINER_PORTS},
        user=user,
        gpus=gpus,
        build_context=build_context,
        labels={"org.aitune_triton.repository": str(Path(repository).absolute())},
    )


def docker_client() -> Any:
    """A docker SDK client for the engine the environment names (``DOCKER_HOST``, else the local socket).

    Raises:
        TritonServerError: the docker SDK is not installed, or no engine answers.
    """
    try:
        docker = importlib.import_module("docker")  # the SDK (this repository's docker/ folder is no package)
        docker.from_env
    except (ImportError, AttributeError):
        raise TritonServerError("container: the docker SDK is not installed; pip install 'aitune-triton[docker]'.") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as error:  # the SDK raises DockerException or a requests error when no engine answers
        raise TritonServerError(f"container: no Docker engine answers ({error}); start one or serve without --container.") from None
    return client


def image_versions(image: str, packages: Sequence[str] | None = None) -> dict[str, str | None]:
    """The versions of ``packages`` (None: torch, onnxruntime, numpy) installed in ``image``'s
    ``python3`` (None: absent).

    Raises:
        TritonServerError: no Docker engine answers, or the image cannot run the version script.
    """
    import json

    from aitune_triton.deployment.runtime_env import versions_script

    client = docker_client()
    try:
        script = versions_script() if packages is None else versions_script(packages)
        output = client.containers.run(image, ["python3", "-c", script], entrypoint=[], remove=True)
        return dict(json.loads(output.decode().strip().splitlines()[-1]))
    except Exception as error:  # the SDK's ContainerError / ImageNotFound, or output that is not the JSON line
        raise TritonServerError(f"image: cannot read the package versions of {image} ({error}).") from None


class TritonContainer:
    """A running container of a :class:`ContainerSpec`.

    Args:
        spec: What to run.
        http_url: ``host:port`` of its published HTTP endpoint (for the readiness wait).
        timeout_s: Seconds to wait for ``/v2/health/ready``.
    """

    def __init__(self, spec: ContainerSpec, http_url: str, timeout_s: float) -> None:
        self.spec = spec
        self.http_url = http_url
        self.timeout_s = timeout_s
        self._container: Any = None

    def start(self, log: Callable[[str], None] = lambda line: None) -> None:
        """Build the image when the spec says so, run the container and wait until it is ready.

        Raises:
            TritonServerError: no engine, the build failed, or the server exited or was not ready in
                ``timeout_s`` (the message holds the container's last log lines).
        """
        client = docker_client()
        if self.spec.build_context is not None:
            log(f"building {self.spec.image} from {self.spec.build_context}")
            try:
                client.images.build(path=str(self.spec.build_context), tag=self.spec.image, rm=True)
            except Exception as error:
                raise TritonServerError(f"container: building {self.spec.image} failed: {error}") from None
        try:
            self._container = client.containers.run(**self.spec.run_kwargs())
        except Exception as error:  # the SDK's ImageNotFound / APIError (a tag that cannot be pulled, a port in use)
            raise TritonServerError(f"container: running {self.spec.image} failed: {error}") from None
        log(f"container {self._container.short_id} of {self.spec.image}")
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            self._container.reload()
            if self._container.status in ("exited", "dead"):
                lines = self.logs()[-20:]
                self.stop()
                raise TritonServerError("container: tritonserver exited before it was ready.", lines)
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        lines = self.logs()[-20:]
        self.stop()
        raise TritonServerError(f"container: tritonserver was not ready after {self.timeout_s:g} s.", lines)

    def logs(self) -> list[str]:
        """The container's log lines so far (empty when it is gone)."""
        if self._container is None:
            return []
        try:
            return self._container.logs().decode(errors="replace").splitlines()
        except Exception:  # removed meanwhile
            return []

    def is_running(self) -> bool:
        """Whether the container runs."""
        if self._container is None:
            return False
        try:
            self._container.reload()
        except Exception:
            return False
        return bool(self._container.status == "running")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout_s``) and remove the container."""
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.stop(timeout=int(timeout_s))
        finally:
            container.remove(force=True)
