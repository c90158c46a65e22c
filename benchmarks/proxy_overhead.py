"""Benchmark: the time ``aitune_triton.Module`` adds to each call of a tiny module.

A ``Linear(4, 4)`` is called bare (a ``copy.deepcopy`` made before wrapping, so its calls do not
route through the wrapper) and wrapped, side by side in one run, in four states: passthrough,
recording, tuned with the ``eager`` backend (the backend itself runs the same forward, so the
difference is the proxy's own work: routing, flattening the call, picking the graph spec,
rebuilding the output) and tuned with ``onnxruntime`` (which also includes the ONNX Runtime
session's own cost over torch's). Each round alternates blocks of bare and wrapped calls and keeps
the fastest block of each (the least disturbed by other processes on a shared machine); the
overhead of a round is wrapped minus bare, per call. Three rounds give min / median / max.

Usage: ``.venv/bin/python benchmarks/proxy_overhead.py [--rounds 3] [--clock wall|thread] [--json PATH]``. Another
benchmark can ``from proxy_overhead import measure_proxy_overhead`` and call it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

import aitune_triton

MODES = ("passthrough", "recording", "tuned_eager", "tuned_onnxruntime")


#: ``wall``: elapsed time, what a caller waits; ``thread``: CPU time of the calling thread, which
#: leaves out the time other processes hold the core (steadier on a shared machine; torch runs
#: these tiny ops on the calling thread).
CLOCKS: dict[str, Callable[[], int]] = {"wall": time.perf_counter_ns, "thread": time.thread_time_ns}


def _per_call_us(function: Callable[[], Any], calls: int, clock: Callable[[], int]) -> float:
    start = clock()
    for _ in range(calls):
        function()
    return (clock() - start) / calls / 1e3


def _side_by_side(
    bare: Callable[[], Any], wrapped: Callable[[], Any], calls: int, blocks: int, clock: Callable[[], int]
) -> tuple[float, float]:
    """Fastest per-call time (us) of ``bare`` and of ``wrapped`` over ``blocks`` alternating blocks."""
    bare_us, wrapped_us = [], []
    for _ in range(blocks):
        bare_us.append(_per_call_us(bare, calls, clock))
        wrapped_us.append(_per_call_us(wrapped, calls, clock))
    return min(bare_us), min(wrapped_us)


def _wrapped(mode: str, net: torch.nn.Module, x: torch.Tensor, cache_dir: Path) -> aitune_triton.Module:
    name = None  # a free default name: another benchmark may call measure_proxy_overhead() more than once
    if mode == "passthrough":
        module = aitune_triton.Module(net, name=name, cache_dir=cache_dir)
        module.enable_passthrough()
        return module
    if mode == "recording":
        module = aitune_triton.Module(net, name=name, cache_dir=cache_dir, max_samples=2)
        module.enable_recording()
        return module
    backend = mode.removeprefix("tuned_")
    module = aitune_triton.Module(net, name=name, strategy=aitune_triton.OneBackendStrategy(backend), cache_dir=cache_dir)
    for batch in (1, x.shape[0], 2 * x.shape[0]):
        module(torch.randn(batch, *x.shape[1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.tune()
    return module


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure_proxy_overhead(rounds: int = 3, calls: int = 2000, blocks: int = 5, clock: str = "wall") -> dict[str, Any]:
    """Measure the per-call overhead of ``aitune_triton.Module`` over the bare module.

    Args:
        rounds: Rounds per mode; each gives one overhead value.
        calls: Calls per timed block.
        blocks: Alternating bare / wrapped blocks per round; the fastest of each is kept.
        clock: ``"wall"`` (``time.perf_counter_ns``) or ``"thread"`` (``time.thread_time_ns``,
            the calling thread's CPU time); see :data:`CLOCKS`.

    Returns:
        ``{"module": "Linear(4, 4)", "input_shape": [8, 4], "torch_threads": N, "rounds": rounds,
        "modes": {mode: {"overhead_us": {"min", "median", "max"}, "bare_us": {...},
        "wrapped_us": {...}, "per_round_overhead_us": [...]}}}`` for ``mode`` in
        ``passthrough``, ``recording``, ``tuned_eager``, ``tuned_onnxruntime`` (and ``"clock"``);
        times in microseconds per call.

    Raises:
        ValueError: ``clock`` is not a key of :data:`CLOCKS`, or ``rounds`` is below 1.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock: expected one of {sorted(CLOCKS)}, got {clock!r}")
    if rounds < 1:
        raise ValueError(f"rounds: expected at least 1, got {rounds}")
    timer = CLOCKS[clock]
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aitune_triton-proxy-") as root, torch.no_grad():
        for mode in MODES:
            net = torch.nn.Linear(4, 4).eval()
            bare = copy.deepcopy(net)  # before wrapping: calls of `net` itself route through the wrapper
            module = _wrapped(mode, net, x, Path(root))
            if mode.startswith("tuned"):
                expected, got = bare(x), module(x)
                if not torch.allclose(expected, got, atol=1e-5):
                    raise RuntimeError(f"{mode}: the wrapped module's output differs from eager by {(expected - got).abs().max()}")
            bare_us, wrapped_us = [], []
            for _ in range(rounds):
                b, w = _side_by_side(lambda: bare(x), lambda: module(x), calls, blocks, timer)  # noqa: B023 (run now)
                bare_us.append(b)
                wrapped_us.append(w)
            overheads = [w - b for b, w in zip(bare_us, wrapped_us)]
            results[mode] = {
                "overhead_us": _summary(overheads),
                "bare_us": _summary(bare_us),
                "wrapped_us": _summary(wrapped_us),
                "per_round_overhead_us": overheads,
            }
            del module
    return {"module": "Linear(4, 4)", "input_shape": list(x.shape), "torch_threads": torch.get_num_threads(), "rounds": rounds, "clock": clock, "modes": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="calls per timed block")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    numbers = measure_proxy_overhead(args.rounds, args.calls, clock=args.clock)
    print(f"Per-call overhead of aitune_triton.Module over the bare {numbers['module']} (input {numbers['input_shape']}, "
          f"{numbers['torch_threads']} torch threads, {args.rounds} rounds, {args.clock} clock), microseconds:")
    print(f"{'mode':<20}{'overhead min':>14}{'median':>10}{'max':>10}{'bare':>10}{'wrapped':>10}")
    for mode, row in numbers["modes"].items():
        o = row["overhead_us"]
        print(f"{mode:<20}{o['min']:>14.2f}{o['median']:>10.2f}{o['max']:>10.2f}"
              f"{row['bare_us']['median']:>10.2f}{row['wrapped_us']['median']:>10.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
