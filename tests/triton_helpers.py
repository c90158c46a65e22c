"""What every integration fixture that starts a tritonserver needs first."""

from __future__ import annotations

import os

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
