"""The container TritonServer(container=True) runs: image, mounts, ports, command, user, built without an engine."""

from __future__ import annotations

import pytest

from aitune_triton.deployment.runtime_env import write_runtime_environment
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.triton.container import MODEL_REPOSITORY_MOUNT, container_spec
from aitune_triton.triton.manifest import ModelKind, ModelManifest
from aitune_triton.triton.server import TritonServer

PORTS = dict(http_port=18000, grpc_port=18001, metrics_port=18002)


@pytest.fixture
def repository(tmp_path):
    """A one-model Python-backend repository whose manifest says nvidia-pytriton 0.7.0 (Triton 2.51.0) exported it."""
    root = tmp_path / "repo"
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\nmax_batch_size: 0\n')
    (root / "m" / "1" / "model.py").write_text("import numpy as np\n")
    ModelManifest(model="m", version=1, kind=ModelKind.ENTRY, source="test", sha256={},
                  versions={"python": "3.11.7", "numpy": "1.26.4", "nvidia-pytriton": "0.7.0"}).write(root / "m" / "1")
    return root


def test_the_default_is_the_ngc_image_of_the_exporting_server_with_the_repository_read_only(repository):
    spec = container_spec(repository, host="127.0.0.1", **PORTS)

    assert spec.image == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert spec.volumes == {str(repository): {"bind": MODEL_REPOSITORY_MOUNT, "mode": "ro"}}
    assert spec.ports == {"8000/tcp": ("127.0.0.1", 18000), "8001/tcp": ("127.0.0.1", 18001),
                          "8002/tcp": ("127.0.0.1", 18002)}
    assert spec.command[:2] == ["tritonserver", "--model-repository=/models"]
    assert "--disable-auto-complete-config" in spec.command and "--strict-readiness=true" in spec.command
    assert spec.user == "1000:1000" and spec.build_context is None
    kwargs = spec.run_kwargs()
    assert kwargs["detach"] is True and "device_requests" not in kwargs


def test_a_runtime_env_directory_is_built_into_a_tag_named_by_its_requirements(repository, tmp_path):
    write_runtime_environment(repository, tmp_path / "env")

    spec = container_spec(repository, runtime_env=tmp_path / "env", **PORTS)
    again = container_spec(repository, runtime_env=tmp_path / "env", **PORTS)

    assert spec.build_context == (tmp_path / "env").absolute()
    assert spec.image.startswith("aitune-triton-runtime:") and spec.image == again.image


def test_gpus_become_a_device_request_and_extra_args_follow_the_command(repository):
    spec = container_spec(repository, image="my/triton:1", gpus=1, extra_args=["--log-verbose=1"], **PORTS)

    [request] = spec.run_kwargs()["device_requests"]
    assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    assert spec.image == "my/triton:1" and spec.command[-1] == "--log-verbose=1"


@pytest.mark.parametrize("kwargs, match", [
    (dict(image="a", runtime_env="b"), "image, runtime_env"),
    (dict(gpus=-1), "gpus"),
    (dict(runtime_env="/nonexistent"), "runtime_env"),
])
def test_bad_container_arguments_are_refused_naming_them(repository, kwargs, match):
    from pathlib import Path

    if "runtime_env" in kwargs:
        kwargs["runtime_env"] = Path(kwargs["runtime_env"])
    with pytest.raises(InvalidArgumentError, match=match):
        container_spec(repository, **kwargs, **PORTS)


def test_triton_server_with_container_builds_the_spec_on_its_ports_without_an_engine(repository):
    server = TritonServer(repository, container=True, **PORTS)

    assert server._container_spec is not None
    assert server._container_spec.ports["8000/tcp"] == ("127.0.0.1", 18000)
    assert server.http_url == "127.0.0.1:18000" and not server.is_running()
    with pytest.raises(InvalidArgumentError, match="only with container=True"):
        TritonServer(repository, image="my/triton:1")
