"""``aitune-triton export``: a checkpoint into a Triton model repository.

Its option flags are generated from :data:`~aitune_triton.triton.export_options.EXPORT_OPTIONS`,
the one declaration of each export option (name, type, help, default, the option type field it
fills); ``--options FILE`` reads the same options from a YAML or JSON file, and flags given on the
command line win over the file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource
from rich.table import Table

from aitune_triton.cli.common import console
from aitune_triton.errors import AITuneTritonError
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.export_options import EXPORT_OPTIONS, ExportOption, export_arguments, read_options_file

__all__ = ["export"]


def _click_option(option: ExportOption) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one declared export option."""
    flag = f"--{option.name}"
    settings: dict[str, Any] = {"help": option.help, "show_default": option.show_default, "default": option.default}
    if option.metavar:
        settings["metavar"] = option.metavar
    if option.kind is bool and option.negatable:
        return click.option(f"{flag}/--no-{option.name}", option.key, **settings)
    if option.kind is bool:
        return click.option(flag, option.key, is_flag=True, **settings)
    settings["type"] = click.Choice(list(option.kind)) if isinstance(option.kind, tuple) else option.kind
    if option.multiple:
        settings.update(multiple=True, default=None)
    return click.option(flag, option.key, **settings)


def _declared_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with a click option per declared export option, in the declaration's order."""
    for option in reversed(EXPORT_OPTIONS):
        command = _click_option(option)(command)
    return command


def _arguments(
    context: click.Context, options_file: Path | None, given: dict[str, Any]
) -> tuple[TritonModelOptions, dict[str, Any]]:
    """The typed options and ``export``'s other arguments: the options file's values, with the flags
    given explicitly on the command line on top (a flag left at its default does not hide the file's value)."""
    explicit = {
        key: value for key, value in given.items()
        if context.get_parameter_source(key) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    }
    file_values, labels = read_options_file(options_file) if options_file is not None else ({}, {})
    labels = {key: label for key, label in labels.items() if key not in explicit}
    return export_arguments({**file_values, **explicit}, labels)


def _print_result(result: Any, target: str) -> None:
    """The exported models and versions; a "served by" column for any target but ``python``."""
    shows_target = target != "python"
    table = Table(title=f"Exported to {result.repository}")
    table.add_column("model")
    table.add_column("version", justify="right")
    if shows_target:
        table.add_column("served by")
    for model, version in result.versions.items():
        role = ("  (entry)" if model in result.entry_models.values() else "  (ensemble)" if model == result.ensemble_model
                else "  (step)" if model in result.step_models else "")
        table.add_row(model + role, str(version), *([result.targets.get(model, "python")] if shows_target else []))
    console.print(table)
    for model, reason in result.python_reasons.items():
        console.print(f"{model} stays a Python-backend model: {reason}", markup=False)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repository", required=True, type=click.Path(path_type=Path),
              help="Model repository directory to write into (created when missing).")
@_declared_options
@click.option("--options", "options_file", default=None, type=click.Path(path_type=Path), metavar="FILE",
              help="A YAML or JSON file of export options: a mapping of option name (instance-count, or "
                   "instance_count) -> value, as the flags above take them (a list for a repeatable one). Flags given "
                   "on the command line win over the file; an unknown name is an error.")
@click.option("--quiet", is_flag=True, help="Print only the result, no progress lines.")
@click.option("--dry-run", is_flag=True, help="Print the planned tree (files with sizes) and every config.pbtxt; "
              "write nothing.")
@click.pass_context
def export(context: click.Context, checkpoint: Path, repository: Path, options_file: Path | None, quiet: bool,
           dry_run: bool, **given: Any) -> None:
    """Export CHECKPOINT (written by aitune_triton.save) to a Triton model repository.

    Writes one Python-backend graph model per tuned graph spec and an entry model named after
    the module; a checkpoint of a model or pipeline holding several wrapped submodules gives each
    its own entry and graph models, named after its stored name. Each export adds a new version
    directory, existing versions are never rewritten. With --target native, graph models whose
    backend declares a Triton backend of its own are served by it (the table says which), the
    others stay Python-backend models and a line says why. --preprocess / --postprocess add step
    models and an ensemble (NAME_ensemble, or --ensemble-name) that clients send raw data to.
    --options FILE takes the same options from a YAML or JSON file.
    Exits with status 1 and an "Error:" line (nothing written) when the checkpoint is missing or
    fails verification, a name is invalid, an option value (or the options file) cannot be used, a
    graph spec cannot be served, or a step cannot be resolved or does not fit the module's tensors.
    """
    from aitune_triton.triton.exporter import KEEP_ROUTER, LEAVE_OUT_NAME
    from aitune_triton.triton.exporter import export as export_checkpoint

    if "" not in sys.path and "." not in sys.path:  # MODULE:FUNCTION from the current directory, as `python -m` finds it
        sys.path.insert(0, "")
    try:
        options, arguments = _arguments(context, options_file, given)
        target = arguments.pop("target", "python")
        if dry_run:
            plan = export_checkpoint(checkpoint, repository, options=options, dry_run=True, target=target, **arguments)
        else:
            result = export_checkpoint(checkpoint, repository, options=options, show_progress=not quiet, target=target,
                                       **arguments)
    except AITuneTritonError as error:
        message = str(error).replace(LEAVE_OUT_NAME, "Drop --name.").replace(KEEP_ROUTER, "Drop --no-router.")
        raise click.ClickException(message) from error
    if dry_run:
        console.print(plan.tree(), markup=False)
        for planned in plan.models:
            console.print(f"\n# {planned.name}/config.pbtxt\n{planned.config_text}", markup=False)
        return
    _print_result(result, target)
