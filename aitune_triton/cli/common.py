"""What every ``aitune-triton`` command shares: the result console and the error form."""

from __future__ import annotations

import click
from rich.console import Console

__all__ = ["console", "fail"]

# Results go to stdout (pipeable); progress lines go to stderr (aitune_triton._progress).
console = Console(soft_wrap=True, highlight=False)
if not console.is_terminal:  # pipes and logs: tables (the tuning report) unfolded
    console.width = 160


def fail(error: Exception) -> click.ClickException:
    """``error`` as click's ``Error: ...`` line with exit status 1."""
    return click.ClickException(str(error))
