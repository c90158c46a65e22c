"""The batch size sweep: how large a batch one backend serves best, measured on batches built from
recorded samples.

Every strategy runs it where a graph spec's batch axis proved independent (see
:func:`~aitune_triton.strategies.batching.batch_axes`) unless ``find_max_batch_size=False``: the
graph spec's batch range is widened to the sweep limit before the candidates are built (so
AOTInductor and ONNX Runtime artifacts take the widened dynamic batch dimension), then batch sizes
1, 2, 4, ... up to the limit are timed until throughput grows by less than the gain threshold,
memory runs out or a size fails; the largest size run is compared with eager. The range is
never changed in place: these helpers return new ``dims`` dicts.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from aitune_triton.spec import CallStructure, DimRange
from aitune_triton.strategies.profiler import Profiler
from aitune_triton.strategies.report import BatchSweep

__all__ = [
    "batch_bounds",
    "settled_dims",
    "settled_range",
    "short_profiler",
    "sweep_batch_sizes",
    "sweep_limit",
    "sweep_sizes",
    "widened_dims",
]

#: Dynamic dimension name -> its range; the values are read only through :func:`batch_bounds` and
#: replaced only through :func:`_reaching`.
Dims = dict[str, DimRange]


def batch_bounds(dims: Dims) -> tuple[int, int]:
    """``(min, max)`` of the batch range in ``dims``."""
    return dims["batch"].bounds


def _reaching(bounds: DimRange, size: int) -> DimRange:
    """The range ``bounds`` with its max raised to ``size`` (never lowered; opt kept)."""
    return bounds.with_max(max(bounds.max, size))


def widened_dims(dims: Dims, limit: int) -> Dims:
    """A copy of ``dims`` whose batch range reaches ``limit`` (never narrowed)."""
    new = dict(dims)
    new["batch"] = _reaching(dims["batch"], limit)
    return new


def settled_dims(dims: Dims, max_batch_size: int) -> Dims:
    """A copy of the recorded ``dims`` whose batch range reaches ``max_batch_size`` (never
    narrowed), with that size, the preferred batch size the sweep measured, as the batch's opt."""
    new = widened_dims(dims, max_batch_size)
    batch = new["batch"]
    new["batch"] = batch.with_opt(min(max(max_batch_size, batch.min), batch.max))
    return new


def sweep_limit(dims: Dims, declared: bool, max_batch_size_limit: int) -> int:
    """The largest batch size to sweep: a declared ``BatchDim``'s max, else ``max_batch_size_limit``
    (never below the recorded max)."""
    high = batch_bounds(dims)[1]
    return high if declared else max(high, max_batch_size_limit)


def settled_range(recorded: Dims, best: int | None, sweep: BatchSweep | None) -> tuple[Dims, int | None]:
    """The graph spec's new ``dims`` after the sweep, and its preferred batch size.

    The batch range reaches ``best`` (the kept candidate's best size), never below the recorded
    or declared range; without a measured size (``best`` None) the recorded range stays. ``sweep``
    (the kept candidate's record, when swept) is updated to say what was kept.

    Returns:
        ``(dims, preferred_batch_size)``: a new dict (``recorded`` is not changed), and ``best`` or None.
    """
    if best is None or "batch" not in recorded:
        if sweep is not None:
            sweep.preferred_batch_size = sweep.max_batch_size = None
        return dict(recorded), None
    dims = settled_dims(recorded, best)
    if sweep is not None:
        sweep.preferred_batch_size, sweep.max_batch_size = best, batch_bounds(dims)[1]
    return dims, best


def sweep_sizes(low: int, limit: int) -> list[int]:
    """Powers of two from ``low`` (or the first above it) up to ``limit``, and ``limit`` itself."""
    sizes, size = [], 1
    while size <= limit:
        if size >= low:
            sizes.append(size)
        size *= 2
    if limit >= low and limit not in sizes:
        sizes.append(limit)
    return sizes


def short_profiler(profiler: Profiler) -> Profiler:
    """``profiler`` with at most 3 stable runs, 10 runs and 0.5 s per size: the sweep of the kept
    candidate times several sizes after every candidate was profiled, and only needs where the
    throughput stops growing."""
    min_runs = min(profiler.min_runs, 3)
    return Profiler(
        warmup_runs=profiler.warmup_runs,
        min_runs=min_runs,
        max_runs=max(min_runs, min(profiler.max_runs, 10)),
        max_time_s=min(profiler.max_time_s, 0.5),
        rtol=profiler.rtol,
        min_sample_ms=profiler.min_sample_ms,
    )


def sweep_batch_sizes(
    backend: str,
    infer: Callable[[CallStructure], Any],
    batch: Callable[[int], CallStructure | None],
    sizes: Sequence[int],
    *,
    profiler: Profiler,
    device: torch.device,
    gain_threshold: float,
    recorded_max: int,
    limit_name: str,
    log: Callable[[str], None],
) -> tuple[BatchSweep, CallStructure | None]:
    """Time ``infer`` at each of ``sizes`` until throughput stops growing.

    A size whose throughput (samples per second) is under ``(1 + gain_threshold)`` times the best
    so far stops the sweep, and so does running out of memory (``torch.OutOfMemoryError``,
    ``MemoryError``: caught) or any error at a size above ``recorded_max`` (the artifact does not
    take it; below, the error propagates: a candidate that fails on the recorded range failed).

    Args:
        backend: The backend's label, for the record and the log.
        infer: Runs one call.
        batch: Builds the call of a batch size from recorded samples (None: cannot).
        sizes: Batch sizes to try, increasing.
        profiler: Times each size.
        device: Where ``infer`` runs.
        gain_threshold: Relative throughput gain under which the sweep stops (0.05: 5%).
        recorded_max: The largest batch size recorded or declared.
        limit_name: What bounds ``sizes``, for the stop reason (``max_batch_size_limit 64``).
        log: Receives one-line progress messages.

    Returns:
        The record (its ``preferred_batch_size`` is the best size; the caller settles the max after
        comparing the largest size run with eager) and that largest call (None when none ran).
    """
    record = BatchSweep(backend)
    best_rate, best_size, last_ok = 0.0, None, None
    record.stop_reason = f"reached {limit_name}"
    for size in sizes:
        call = batch(size)
        if call is None:
            record.stop_reason = f"no batch of {size} could be built from the recorded samples"
            break
        try:
            ms = profiler.time(lambda: infer(call), device).median_ms
        except (torch.OutOfMemoryError, MemoryError) as error:
            record.stop_reason = f"batch {size} ran out of memory ({type(error).__name__})"
            log(f"{backend}: {record.stop_reason}")
            break
        except Exception as error:
            if size <= recorded_max:
                raise
            first_line = (str(error).splitlines() or [""])[0][:200]
            record.stop_reason = f"batch {size} failed ({type(error).__name__}: {first_line})"
            log(f"{backend}: {record.stop_reason}")
            break
        record.latencies_ms[str(size)] = ms
        last_ok = call
        rate = size * 1000.0 / ms
        if best_size is not None and rate < best_rate * (1.0 + gain_threshold):
            record.stop_reason = (
                f"batch {size} gave {rate:.4g} samples/s, under {1.0 + gain_threshold:g}x the {best_rate:.4g} of batch "
                f"{best_size} (batch_gain_threshold={gain_threshold:g})"
            )
            break
        best_rate, best_size = max(best_rate, rate), size
    record.preferred_batch_size = best_size
    record.checked_batch_size = None if last_ok is None else max(int(s) for s in record.latencies_ms)
    return record, last_ok
