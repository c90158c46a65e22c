"""``aitune-triton deploy``: write the files that deploy a model repository with a registered target."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from aitune_triton.cli.common import console, fail
from aitune_triton.errors import AITuneTritonError, InvalidArgumentError

__all__ = ["deploy"]


def _node_selector(values: tuple[str, ...]) -> dict[str, str]:
    selector = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"--node-selector: expected LABEL=VALUE, got {value!r}.")
        selector[key] = label
    return selector


def _options(target: str, given: dict[str, Any]) -> Any:
    """The target's options from the flags given (the others keep the target's defaults).

    Raises:
        InvalidArgumentError: a flag given that the target does not take (named), or an invalid value.
    """
    from aitune_triton.deployment import deployment_target

    options_type = deployment_target(target).options_type
    fields = {field.name for field in dataclasses.fields(options_type)}
    unknown = sorted(name for name in given if name not in fields)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        flag_names = {parameter.name for parameter in deploy.params}  # the target's fields the command line sets
        taken = sorted(fields & flag_names)
        raise InvalidArgumentError(f"{flags}: not an option of deployment target {target!r} (it takes "
                                   f"{', '.join('--' + f.replace('_', '-') for f in taken)}).")
    return options_type(**given)


@click.command()
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Deployment target: kubernetes, kserve, ... (the registered ones).")
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(path_type=Path),
              help="New directory for the files (must not exist).")
@click.option("--name", default=None, help="Name of the deployed service; default: from the repository directory.")
@click.option("--replicas", type=int, default=None, help="Replicas (the autoscaler's minimum), >= 1.  [default: 1]")
@click.option("--max-replicas", type=int, default=None, help="The autoscaler's maximum.  [default: 2 x replicas]")
@click.option("--image", default=None, help="Triton image; default: the NGC image of the server version "
              "`check --load` validated the repository with.")
@click.option("--namespace", default=None, help="Kubernetes namespace.  [default: default]")
@click.option("--storage-uri", default=None, help="Where the repository is stored: s3://..., gs://... (kserve also pvc://...).")
@click.option("--pvc", default=None, help="PersistentVolumeClaim holding the repository at its root.")
@click.option("--cpu", default=None, help="CPU request per replica (a Kubernetes quantity).  [default: 1]")
@click.option("--memory", default=None, help="Memory request per replica; default: sized from the measured peak.")
@click.option("--gpus", type=int, default=None, help="nvidia.com/gpu per replica when models have KIND_GPU instances.")
@click.option("--node-selector", multiple=True, metavar="LABEL=VALUE", help="Node label a replica must run on (repeatable).")
@click.option("--monitor", default=None, type=click.Choice(["none", "service", "pod"]),
              help="kubernetes: also write a ServiceMonitor or PodMonitor (Prometheus Operator).")
def deploy(repository: Path, target: str, output_dir: Path, node_selector: tuple[str, ...], **flags: Any) -> None:
    """Write the files that deploy REPOSITORY (an exported model repository) with --target into -o DIR.

    The repository is checked first (as `aitune-triton check`, without loading); probes, memory and the
    image tag come from what `aitune-triton check --load REPOSITORY` recorded (without it: documented
    defaults, said in the files). DIR is written atomically: complete, or absent.
    """
    from aitune_triton.deployment import deploy as deploy_repository
    from aitune_triton.deployment import deployment_target_names

    try:
        if target not in deployment_target_names():
            raise InvalidArgumentError(f"--target: unknown deployment target {target!r}; choose one of "
                                       f"{', '.join(deployment_target_names())}.")
        given = {name: value for name, value in flags.items() if value is not None}
        if node_selector:
            given["node_selector"] = _node_selector(node_selector)
        written = deploy_repository(repository, target, output_dir, _options(target, given))
    except AITuneTritonError as error:
        raise fail(error) from error
    for path in sorted(written.iterdir()):
        console.print(str(path), markup=False)
