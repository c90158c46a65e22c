"""Checking a backend against eager outputs, and timing it."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from aitune_triton.errors import OutputMismatchError
from aitune_triton.spec import same_value

__all__ = ["compare_outputs", "measure_latency_ms"]


def compare_outputs(
    reference: Sequence[Any],
    actual: Sequence[Any],
    paths: Sequence[str],
    atol: float,
    rtol: float,
    label: str = "",
) -> tuple[list[str], float]:
    """Compare output leaves: tensors with ``torch.allclose`` semantics (``|a - r| <= atol + rtol * |r|``),
    other leaves (numbers, strings...) by type and equality.

    Args:
        reference: Eager output leaves (tensors, and non-tensor leaves where the output has them).
        actual: Backend output leaves, same order.
        paths: Leaf paths, for messages.
        atol: Absolute tolerance.
        rtol: Relative tolerance.
        label: Prefix for messages (e.g. the sample index).

    Returns:
        ``(mismatches, max_abs_diff)``: one line per mismatching leaf (shape, dtype or values:
        max abs diff and the tolerance it broke), and the largest abs difference over all leaves.
    """
    mismatches: list[str] = []
    worst = 0.0
    if len(reference) != len(actual):
        return [f"{label}expected {len(reference)} output tensors, got {len(actual)}"], float("inf")
    for path, ref, out in zip(paths, reference, actual):
        if not isinstance(ref, torch.Tensor) or not isinstance(out, torch.Tensor):
            if not same_value(ref, out):
                mismatches.append(f"{label}{path}: {_short(out)} != eager {_short(ref)}")
                worst = float("inf")
            continue
        out = out.to(ref.device)
        if tuple(ref.shape) != tuple(out.shape):
            mismatches.append(f"{label}{path}: shape {tuple(out.shape)} != eager {tuple(ref.shape)}")
            continue
        if ref.dtype != out.dtype:
            mismatches.append(f"{label}{path}: dtype {out.dtype} != eager {ref.dtype}")
            continue
        if ref.numel() == 0:
            continue
        if ref.dtype.is_floating_point or ref.dtype.is_complex:
            diff = (out - ref).abs()
            bound = atol + rtol * ref.abs()
            max_diff = float(diff.max())
            worst = max(worst, max_diff)
            if not bool((diff <= bound).all()) or not torch.equal(torch.isnan(ref), torch.isnan(out)):
                mismatches.append(
                    f"{label}{path}: max abs diff {max_diff:.3g} exceeds atol={atol:g} + rtol={rtol:g}*|eager|"
                )
        elif not torch.equal(ref, out):
            mismatches.append(f"{label}{path}: {int((ref != out).sum())} of {ref.numel()} values differ")
            worst = float("inf")
    return mismatches, worst


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({str(value.dtype).removeprefix('torch.')}, shape={tuple(value.shape)})"
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"


def raise_on_mismatch(name: str, mismatches: list[str]) -> None:
    """Raise when ``mismatches`` is not empty.

    Raises:
        OutputMismatchError: listing every mismatch, prefixed by ``name``.
    """
    if mismatches:
        raise OutputMismatchError(f"{name}: outputs differ from eager", mismatches)


def measure_latency_ms(run: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``run()`` in milliseconds over ``repeats`` runs after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return times[len(times) // 2]
