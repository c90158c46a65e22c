"""TritonServer(container=True) on a real Docker engine: the session's repository, its runtime environment
built into the NGC image, answers like eager. Runs only where a Docker engine answers (none does on this
project's machines: the test then skips saying so)."""

from __future__ import annotations

import pytest
import torch

from aitune_triton import RemoteModule

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _docker_engine_or_skip() -> None:
    from aitune_triton.errors import TritonServerError
    from aitune_triton.triton.container import docker_client

    try:
        docker_client().close()
    except TritonServerError as error:
        pytest.skip(f"no Docker engine here, so the container path is tested only by its spec: {error}")


def test_the_container_with_the_runtime_env_serves_the_repository_with_eager_results(request, tmp_path):
    _docker_engine_or_skip()  # before the session repository is built: a skip here costs nothing
    served = request.getfixturevalue("served")
    from aitune_triton.deployment.runtime_env import write_runtime_environment
    from aitune_triton.triton.server import TritonServer

    write_runtime_environment(served.repository, tmp_path / "env")
    torch.manual_seed(3)
    x, y = torch.randn(3, 8), torch.randn(3, 4)
    with TritonServer(served.repository, container=True, runtime_env=tmp_path / "env", timeout_s=900) as server:
        with RemoteModule(server.grpc_url, served.entry_model) as remote:
            output = remote(x, y)
    expected = served.net(x, y=y)
    torch.testing.assert_close(output["logits"], expected["logits"].detach(), atol=1e-5, rtol=0)
