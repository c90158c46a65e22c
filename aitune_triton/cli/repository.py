"""``aitune-triton check`` and ``analyze-config``: look at a model repository before serving it."""

from __future__ import annotations

from pathlib import Path

import click

from aitune_triton.cli.common import console, fail
from aitune_triton.errors import AITuneTritonError

__all__ = ["analyze_config", "check"]


@click.command()
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--load", is_flag=True, help="Also load every model in an embedded tritonserver and report READY or "
              "the server's reason; when all are READY, record the server version, load time and peak memory in "
              "REPOSITORY/.aitune_triton-validation.json (aitune-triton deploy sizes from it).")
@click.option("--timeout-s", default=180.0, show_default=True, type=float,
              help="With --load: seconds to wait for the server and for each model load.")
@click.option("--environment", "environment", default=None, type=click.Path(path_type=Path),
              help="Python interpreter of the environment (or image wrapper) to compare the models' package versions "
                   "with [default: this one].")
@click.option("--image", default=None, help="A container image to compare instead (its python3, run through Docker).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when an installed package version differs from the "
              "one that built the artifacts.")
def check(repository: Path, load: bool, timeout_s: float, environment: Path | None, image: str | None,
          strict: bool) -> None:
    """Check REPOSITORY before serving it: every config.pbtxt against the ModelConfig schema, each
    version's files against its manifest.json (missing, extra, SHA-256), config tensors against the
    manifest's IO mapping, artifacts against this machine (GPU, TensorRT), entry model routes
    against the graph model versions present, and the torch / onnxruntime / numpy versions of
    the environment (--environment PYTHON or --image IMAGE, default this one) against those that
    built the artifacts.

    Prints a table per model (OK / WARN / ERROR); exits with status 1 when any finding is an ERROR.
    """
    from aitune_triton.triton.check import check_repository, report_tables

    try:
        report = check_repository(repository, load=load, timeout_s=timeout_s, show_progress=load)
    except AITuneTritonError as error:
        raise fail(error) from error
    for table in report_tables(report):
        console.print(table)
    mismatches = _environment_warnings(repository, environment, image)
    errors = sum(1 for _ in report.findings("ERROR"))
    if strict and mismatches and not errors:
        raise click.ClickException(f"{len(mismatches)} package version(s) differ from the artifacts' (--strict).")
    if errors:
        raise click.ClickException(f"{errors} error(s) in {report.repository}.")
    console.print(f"{report.repository}: no errors ({sum(1 for _ in report.findings('WARN'))} warning(s)).")


def _environment_warnings(repository: Path, environment: Path | None, image: str | None) -> list[str]:
    """Print a ``Warning:`` line per package whose installed version differs from the artifacts'; return them."""
    from aitune_triton.deployment.runtime_env import environment_mismatches, runtime_environment

    if environment is not None and image is not None:
        raise click.UsageError("--environment, --image: pass one (the environment to compare), not both.")
    try:
        if image is not None:
            from aitune_triton.triton.container import image_versions

            wanted = runtime_environment(repository)
            packages = [requirement.package for requirement in wanted.requirements]
            mismatches = environment_mismatches(repository, environment=wanted, installed=image_versions(image, packages),
                                                where=f"in image {image}")
        else:
            mismatches = environment_mismatches(repository, environment)
    except AITuneTritonError as error:
        if environment is not None or image is not None:
            raise fail(error) from error
        mismatches = [f"environment: not compared ({error})"]
    for line in mismatches:
        click.echo(f"Warning: {line}", err=True)
    return mismatches


@click.command("analyze-config")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_dir", default=None, type=click.Path(path_type=Path),
              help="Directory to write one ENTRY_MODEL.model_analyzer.yaml per entry model into.")
@click.option("--protocol", default="http", show_default=True, type=click.Choice(["http", "grpc"]),
              help="Protocol of the perf_analyzer command lines (-i), with -u the placeholder of that endpoint.")
def analyze_config(repository: Path, output_dir: Path | None, protocol: str) -> None:
    """Write Triton Model Analyzer configs for REPOSITORY's entry models and print the equivalent
    perf_analyzer command lines (input shapes: the largest recorded; BLS composing models: the
    graph models each entry model routes to).

    The command lines take the server's address as a placeholder (-u <host:http_port>, or
    <host:grpc_port> with --protocol grpc): `aitune-triton serve` picks free ports and prints them.
    A last line says where perf_analyzer comes from (it is not installed with aitune-triton).
    """
    from aitune_triton.triton.analyze import PERF_ANALYZER_INSTALL
    from aitune_triton.triton.analyze import analyze_config as analyze

    try:
        configs = analyze(repository, output_dir, protocol=protocol)
    except AITuneTritonError as error:
        raise fail(error) from error
    for config in configs:
        where = f" -> {config.path}" if config.path else ""
        console.print(f"# {config.entry_model} (shapes of {config.graph_model}){where}", markup=False)
        if config.path is None:
            console.print(config.yaml(), markup=False)
        console.print(config.perf_analyzer_command, markup=False)
    console.print(f"# {PERF_ANALYZER_INSTALL}", markup=False)
