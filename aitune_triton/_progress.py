"""Progress lines for long work (tuning, export, server start), on stderr through rich."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.markup import escape

__all__ = ["console", "progress"]

console = Console(stderr=True, highlight=False, soft_wrap=True)
if not console.is_terminal:  # logs and captured output: tables (the tuning report) unfolded
    console.width = 160


@contextlib.contextmanager
def progress(title: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Show a spinner titled ``title`` and yield ``log(message)``, which prints a timestamped line
    (elapsed seconds) and updates the spinner. Lines are printed on non-terminals too, so logs of
    CI runs show each step. ``enabled=False`` yields a no-op logger."""
    if not enabled:
        yield lambda message: None
        return
    start = time.perf_counter()
    with console.status(escape(title)) as status:

        def log(message: str) -> None:
            console.print(f"[dim]{time.perf_counter() - start:7.1f}s[/dim] {escape(message)}")
            status.update(f"{escape(title)}: {escape(message)}")

        yield log
    console.print(f"[dim]{time.perf_counter() - start:7.1f}s[/dim] {escape(title)}: done")
