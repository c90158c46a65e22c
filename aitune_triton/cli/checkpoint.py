"""``aitune-triton inspect`` and ``describe``: what a checkpoint holds and how it was tuned."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from aitune_triton.cli.common import console, fail
from aitune_triton.errors import AITuneTritonError

__all__ = ["describe", "inspect"]


def _left_out(signature: list[dict], description: str) -> str:
    """The forward parameters a graph spec's calls did not pass (or passed at their default), as
    ``name=default``: a call matches the graph spec only when it leaves them out too."""
    from aitune_triton.graph_diff import describe_leaves

    passed = {path.split(".", 1)[0] for path in describe_leaves(description)}
    left = [
        f"{p['name']}={p.get('default_json') or '...'}" if p.get("has_default") else p["name"]
        for p in signature
        if p["name"] not in passed and p["kind"] not in ("VAR_POSITIONAL", "VAR_KEYWORD")
    ]
    return ", ".join(left) or "-"


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
def inspect(checkpoint: Path) -> None:
    """Show the graph specs, chosen backends and library versions of CHECKPOINT: per graph spec
    every tensor argument (dtype, shape range), every constant argument, and the forward
    parameters its calls left out (a call must pass the same arguments and constants to match;
    GraphSpecMismatchError names what differs).

    A checkpoint of several wrapped submodules shows one table per submodule, titled with its
    attribute path. Exits with status 1 and an "Error:" line when CHECKPOINT is missing or fails
    verification.
    """
    from aitune_triton.checkpoint import read_checkpoint_modules

    try:
        manifest, modules = read_checkpoint_modules(checkpoint)
    except AITuneTritonError as error:
        raise fail(error) from error
    for stored in modules:
        module = stored.description
        where = f"{stored.path}: " if stored.path else ""
        table = Table(title=f"{where}{module.name} ({module.module_class})")
        for column in ("graph spec", "inputs", "constants", "left out", "backend", "max batch"):
            table.add_column(column)
        for entry in module.graphs:
            graph = entry.graph
            inputs = ", ".join(f"{t.path} {t.dtype} {list(t.min_shape)}..{list(t.max_shape)}" for t in graph.inputs)
            constants = ", ".join(f"{path}={value}" for path, value in graph.constants.items()) or "-"
            batch = graph.batch_size_range
            table.add_row(graph.name, inputs, constants, _left_out(module.signature, graph.description),
                          entry.backend.name, str(batch.max) if batch else "-")
        console.print(table)
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v))


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the stored reports as JSON instead of tables.")
def describe(checkpoint: Path, as_json: bool) -> None:
    """Print the tuning report stored in CHECKPOINT: per graph spec, every candidate's precision,
    build time, max abs diff (or accuracy), latencies, throughput, and why it was chosen or not.

    Exits with status 1 and an "Error:" line when CHECKPOINT is missing or fails verification.
    """
    import json

    from aitune_triton.checkpoint import read_checkpoint_modules
    from aitune_triton.strategies.report import report_table

    try:
        _, modules = read_checkpoint_modules(checkpoint)
    except AITuneTritonError as error:
        raise fail(error) from error
    found: list[dict] = []
    for stored in modules:
        module = stored.description
        where = f"{stored.path}: " if stored.path else ""
        for entry in module.graphs:
            report = entry.tune_report()
            if report is None:
                note = f"{where}'{module.name}' {entry.name}: no tuning report stored"
                if as_json:  # stdout holds the JSON alone, so it parses
                    click.echo(note, err=True)
                else:
                    console.print(note, markup=False)
                continue
            found.append({"path": stored.path, "module": module.name, "report": report.to_dict()})
            if not as_json:
                console.print(report_table(report, title=f"{where}'{module.name}' {report.graph}: {report.strategy}"))
    if as_json:
        click.echo(json.dumps(found, indent=2))
