"""Warnings that point at the user's own line, not at aitune_triton or torch.nn internals."""

from __future__ import annotations

import sys
import warnings
from types import FrameType
from pathlib import Path

__all__ = ["warn"]

_PACKAGE = str(Path(__file__).resolve().parent)
_TORCH_MODULE_CALLS = str(Path("torch", "nn", "modules"))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller frame outside this package and ``torch.nn``
    (a tuned call goes through ``nn.Module.__call__`` and several of our frames first)."""
    level = 2
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or _TORCH_MODULE_CALLS in frame.f_code.co_filename
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
