"""``deploy(repository, target, output_dir)``: check a model repository, then write a deployment
target's files into a new directory, atomically (a staging directory renamed into place)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aitune_triton._atomic import make_staging_dir
from aitune_triton._warnings import warn
from aitune_triton.deployment.facts import repository_facts
from aitune_triton.deployment.registry import DeploymentTarget, deployment_target, deployment_target_names
from aitune_triton.errors import ArgumentTypeError, DeploymentError, InvalidArgumentError

#: Folder of the runtime environment in a deployment directory.
RUNTIME_DIR = "runtime"

__all__ = ["deploy", "write_yaml"]

_SHOWN = 5


def write_yaml(path: Path, documents: Sequence[tuple[str, dict[str, Any]]]) -> Path:
    """Write ``documents`` as one multi-document YAML file, each preceded by its comment lines.

    Args:
        path: The file to write.
        documents: ``(comment, document)`` pairs; the comment (may be empty, may hold several lines)
            is written as ``# ...`` lines above the document.

    Returns:
        ``path``.
    """
    import yaml  # type: ignore[import-untyped]

    parts = []
    for comment, document in documents:
        lines = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
        parts.append(lines + yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
    path.write_text("---\n".join(parts))
    return path


def _refuse_unchecked(repository: Path) -> None:
    from aitune_triton.triton.check import check_repository

    try:
        report = check_repository(repository)
    except InvalidArgumentError as error:
        raise DeploymentError(f"repository: {error}") from error
    errors = [f"{model}: {finding.message}" for model, finding in report.findings("ERROR")]
    if errors:
        shown = "; ".join(errors[:_SHOWN]) + (f"; and {len(errors) - _SHOWN} more" if len(errors) > _SHOWN else "")
        raise DeploymentError(f"repository: aitune-triton check refuses {repository} ({len(errors)} error(s)): {shown}. "
                              f"Fix them (aitune-triton check {repository} lists them) or export the module again.")


def deploy(repository: str | os.PathLike, target: str | DeploymentTarget, output_dir: str | os.PathLike,
           options: Any = None) -> Path:
    """Write the files that deploy the model repository ``repository`` with ``target`` into ``output_dir``.

    A repository with Python-backend models also gets ``runtime/``: the runtime environment its
    models need (:func:`~aitune_triton.deployment.runtime_env.write_runtime_environment`: pinned
    requirements and a Dockerfile on the matching NGC image); build that image and pass it as the
    target's ``image``.

    The repository is checked first as ``aitune-triton check`` does (without loading it); files are
    sized from what ``aitune-triton check --load`` recorded in it (see
    :func:`aitune_triton.deployment.facts.repository_facts`). ``output_dir`` is written in a staging
    directory beside it and renamed into place, so it is complete or absent.

    Args:
        repository: An exported model repository.
        target: A registered target's name (``"kubernetes"``, ``"kserve"``; see
            ``aitune_triton.deployment.deployment_target_names()``) or a DeploymentTarget instance.
        output_dir: A directory that does not exist yet.
        options: The target's options (``KubernetesOptions(replicas=2)``); None: its defaults. Only
            with a target name.

    Returns:
        ``output_dir`` (absolute).

    Raises:
        InvalidArgumentError: ``target`` is not a registered name (the message lists them), or
            ``output_dir`` exists (named), or an option is invalid.
        ArgumentTypeError: ``options`` is not the target's options type, or comes with a target instance.
        DeploymentError: the repository check finds errors (listed), or the repository is not one.
        RuntimeEnvironmentError: the Python-backend models' versions cannot make one environment.
    """
    if isinstance(target, DeploymentTarget):
        if options is not None:
            raise ArgumentTypeError("options: pass them to the DeploymentTarget instance, not beside it.")
        generator = target
    elif isinstance(target, str):
        if target not in deployment_target_names():
            raise InvalidArgumentError(f"target: unknown deployment target {target!r}; choose one of "
                                       f"{', '.join(deployment_target_names())}.")
        generator = deployment_target(target)(options)
    else:
        raise ArgumentTypeError(f"target: expected a deployment target name or DeploymentTarget, got {type(target).__name__}.")
    output = Path(output_dir).absolute()
    if output.exists():
        raise InvalidArgumentError(f"output_dir: {output} exists; deploy writes a new directory. Pass a new path or "
                                   "remove that one.")
    source = Path(repository).absolute()
    _refuse_unchecked(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(output.parent)
    try:
        from aitune_triton.deployment.runtime_env import write_runtime_environment  # loads the Triton layer

        facts = repository_facts(source)  # read once, for the runtime environment and the target
        if facts.uses_python_backend:  # a stock Triton image lacks torch and onnxruntime
            # first: a target may build its image from it (compose)
            write_runtime_environment(source, staging / RUNTIME_DIR, server_version=facts.server_version)
            if getattr(generator.options, "image", None) is None and not generator.builds_runtime_image:
                warn(f"image: the models of {source} run on Triton's Python backend, which the stock Triton image "
                     f"cannot serve (it lacks the packages they import); build {output / RUNTIME_DIR} "
                     "(docker build -t IMAGE runtime/), push it, and deploy with --image IMAGE.")
        generator.generate(source, staging, facts)
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700
        try:
            os.rename(staging, output)  # fails when another process made output meanwhile
        except OSError as error:
            raise InvalidArgumentError(f"output_dir: {output} could not be created ({error.strerror}); pass a new path.") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
