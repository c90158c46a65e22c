"""``aitune-triton runtime-env``: the Python requirements and container build a repository's models need."""

from __future__ import annotations

from pathlib import Path

import click

from aitune_triton.cli.common import console, fail
from aitune_triton.errors import AITuneTritonError

__all__ = ["runtime_env"]


@click.command("runtime-env")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="New directory for requirements.txt, Dockerfile, .dockerignore and runtime.json (must not exist).")
@click.option("--server-version", default=None,
              help="Triton server version to build on (2.51.0) [default: the one the manifests' nvidia-pytriton embeds].")
def runtime_env(repository: Path, output_dir: Path, server_version: str | None) -> None:
    """Write the runtime environment of REPOSITORY: the exact Python packages its Python-backend
    models need (the versions that built their artifacts, from each model's manifest.json), a
    Dockerfile on the NGC tritonserver image of the matching server version that installs them,
    a .dockerignore and runtime.json.

    Exits with status 1 naming both models when two models need different versions of a package.
    """
    from aitune_triton.deployment.runtime_env import runtime_environment, write_runtime_environment

    try:
        files = write_runtime_environment(repository, output_dir, server_version)
        environment = runtime_environment(repository, server_version)
    except AITuneTritonError as error:
        raise fail(error) from error
    for requirement in environment.requirements:
        console.print(f"{requirement.line()}  ({', '.join(requirement.models)})", markup=False)
    console.print(f"Image {environment.image}; wrote {', '.join(p.name for p in files)} to {output_dir}.", markup=False)
