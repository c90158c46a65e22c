"""What every integration fixture that starts a tritonserver needs first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aitune_triton.errors import TritonServerError
from aitune_triton.triton.server import find_tritonserver


def require_tritonserver() -> None:
    """Find the tritonserver binary, or skip the test when asked to (``AITUNE_TRITON_SKIP_TRITON_TESTS=1``).

    A missing server must not turn the integration suite green: without that variable it fails.
    """
    try:
        find_tritonserver()
    except TritonServerError as error:
        if os.environ.get("AITUNE_TRITON_SKIP_TRITON_TESTS") == "1":
            pytest.skip(f"no tritonserver on this machine: {error}")
        raise


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes other than this one whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":
            found.append(int(entry.name))
    return found
