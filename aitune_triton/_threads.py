"""Scoped torch intra-op thread counts: a tuned backend runs with its measured count and the
caller's own setting comes back after the call."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)``, then restore the caller's count.

    The count read and restored is the calling thread's (``torch.get_num_threads()``: with the
    OpenMP build of torch it is a per-thread setting, so another Python thread's calls are not
    changed by this one's). Nesting is safe: each level restores what it found. Nothing is set
    when ``threads`` is None or already the current count.

    Args:
        threads: Intra-op threads for the body (>= 1), or None to leave the setting alone.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    if previous == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
