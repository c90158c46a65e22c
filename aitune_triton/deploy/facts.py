"""TEMPORARY stand-in for the deploy core's facts module (written by another branch of issue 17).

It has the same interface (``repository_facts(repository) -> RepositoryFacts``) so the compose target
can be written and tested meanwhile; it is dropped at merge in favour of the real one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from aitune_triton.errors import InvalidArgumentError

__all__ = ["RepositoryFacts", "repository_facts"]

#: The Triton server release of each NGC image tag (the embedded nvidia-pytriton 0.7.0 server is 2.51).
_IMAGES = {"2.51.0": "nvcr.io/nvidia/tritonserver:24.10-py3"}


@dataclasses.dataclass(frozen=True)
class RepositoryFacts:
    """What a deployment is sized from."""

    server_version: str
    image: str
    load_time_s: float | None
    peak_memory_bytes: int | None
    artifact_bytes: int
    models: tuple[str, ...]
    uses_python_backend: bool
    gpu: bool


def repository_facts(repository: Path) -> RepositoryFacts:
    """Facts of the model repository ``repository`` (temporary: no measured load time or memory)."""
    repository = Path(repository)
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        raise InvalidArgumentError(f"repository: {repository} holds no model (no */config.pbtxt).")
    python = gpu = False
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        python = python or config.backend == "python"
        gpu = gpu or any(group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for group in config.instance_group)
    artifact_bytes = sum(path.stat().st_size for path in repository.rglob("*") if path.is_file())
    return RepositoryFacts(
        server_version="2.51.0",
        image=_IMAGES["2.51.0"],
        load_time_s=None,
        peak_memory_bytes=None,
        artifact_bytes=artifact_bytes,
        models=tuple(path.parent.name for path in configs),
        uses_python_backend=python,
        gpu=gpu,
    )
