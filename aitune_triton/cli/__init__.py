"""The ``aitune-triton`` command line: a thin layer over the Python API.

One module per group of commands: ``export`` (its flags generated from
:data:`aitune_triton.triton.export_options.EXPORT_OPTIONS`), ``serve``, ``repository`` (``check``,
``analyze-config``), ``checkpoint`` (``inspect``, ``describe``) and ``deploy``. A new command is a
``@click.command`` in one of them (or a new module), added to :data:`main` here.
"""

from __future__ import annotations

import click

from aitune_triton.cli.checkpoint import describe, inspect
from aitune_triton.cli.deploy import deploy
from aitune_triton.cli.export import export
from aitune_triton.cli.repository import analyze_config, check
from aitune_triton.cli.runtime_env import runtime_env
from aitune_triton.cli.serve import serve

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aitune-triton")
def main() -> None:
    """Tune PyTorch modules and serve them with Triton Inference Server.

    Typical flow: tune and save a checkpoint from Python (aitune_triton.Module, .tune(),
    aitune_triton.save), then `aitune-triton export CHECKPOINT -o model_repository/` and
    `aitune-triton serve model_repository/`.
    """


for _command in (export, serve, inspect, describe, check, analyze_config, deploy, runtime_env):
    main.add_command(_command)


if __name__ == "__main__":
    main()
