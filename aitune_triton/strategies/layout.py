"""Served layouts by measurement: how many instances of a graph model, with how many intra-op
threads each, and how many threads the tuned backend uses in process.

A Triton Python-backend instance is its own process (a stub), so a layout ``I x T`` (``I``
instances of ``T`` intra-op threads) is measured with ``I`` worker processes (fresh
interpreters, :mod:`aitune_triton.strategies.layout_worker`), each loading the kept backend's built artifact the way the backend loads it, with
``T`` torch threads (and ``T`` ONNX Runtime session threads). Only layouts that fill the machine
are measured (``I * T`` = the cores this process may use, ``I`` <= :data:`MAX_INSTANCES`): on 2
cores ``1x2`` and ``2x1``.

Per layout:

* **single-stream latency**: one worker runs the typical recorded call and the batch the dynamic
  batcher would form (the batch sweep's preferred size, else the largest recorded call) back to
  back; the median per call, in ms;
* **throughput under concurrency**: all ``I`` workers run that batch call at once for a fixed time;
  the samples (batch rows) all of them finished per second.

The layouts are measured in rounds, in the reverse order every other round (ONNX Runtime's worker
threads keep spinning after a call and slow what runs next), and each layout keeps its best round
(lowest latency, highest throughput): another job on the machine only ever slows a round down.

The rule (:func:`choose_layout`): among the layouts whose single-stream latency at the typical
call is within ``latency_tolerance`` (default 10%) of the best layout's, the one with the highest
throughput; a tie keeps fewer instances (less memory).

In process, the kept backend is timed with 1..cores torch threads (at most :data:`MAX_INSTANCES`)
at each recorded shape the evaluation uses (smallest, typical and largest call; one shape counted
once) and the count with the lowest geometric mean over them is kept
(:attr:`LayoutReport.in_process_threads`): each shape weighs the same, so a count that is twice as
slow at the small calls (as 2 threads were at 1 x 16 tokens on MiniLM, issue 18) loses to one a
little slower at the large ones. The tuned module runs the backend under that count and restores
the caller's afterwards (one count per graph spec: the call is not timed per shape when it runs).
Backends whose options carry their own thread count, ``intra_op_num_threads`` (ONNX Runtime) or
``inference_num_threads`` (OpenVINO), keep it: their thread pools are their own, so torch's count
does not reach them.
"""

from __future__ import annotations

import io
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from aitune_triton._threads import torch_threads
from aitune_triton.backends import Backend
from aitune_triton.errors import InvalidArgumentError
from aitune_triton.spec import CallStructure, GraphSpec
from aitune_triton.strategies.batching import batch_of
from aitune_triton.strategies.profiler import Profiler
from aitune_triton.strategies.over_range import distinct_shapes

__all__ = [
    "DEFAULT_LATENCY_TOLERANCE",
    "MAX_INSTANCES",
    "LayoutReport",
    "LayoutResult",
    "available_cores",
    "choose_layout",
    "layout_window_s",
    "layouts_for",
    "measure_in_process",
    "measure_layout",
]

#: Most instances (worker processes) a measured layout has.
MAX_INSTANCES = 8
#: Default of the rule's latency tolerance: layouts within 10% of the best single-stream latency.
DEFAULT_LATENCY_TOLERANCE = 0.10
#: Seconds a worker may take to start and load the artifact (torch.compile of an Inductor program included).
_LOAD_TIMEOUT_S = 600.0


@dataclass
class LayoutResult:
    """One measured layout.

    Attributes:
        instances: Instances (processes) of the graph model.
        threads: Intra-op threads per instance.
        latency_ms: Median single-stream latency of the typical recorded call, in ms.
        batch_latency_ms: Median single-stream latency of the batch call, in ms.
        throughput: Samples (batch rows) per second with every instance busy on the batch call.
    """

    instances: int
    threads: int
    latency_ms: float | None = None
    batch_latency_ms: float | None = None
    throughput: float | None = None

    @property
    def label(self) -> str:
        """``"2x1"``: instances x threads."""
        return f"{self.instances}x{self.threads}"


@dataclass
class LayoutReport:
    """What the layout measurement found for one graph spec, and what it chose.

    Attributes:
        cores: CPU cores this process could use when measured.
        layouts: Every measured layout (empty when skipped).
        instances: The chosen instance count, or None (skipped or failed: see ``reason``).
        threads: The chosen intra-op threads per instance, or None.
        reason: Why that layout was chosen, or why none was measured.
        batch_size: Rows of the batch call the throughput counts.
        in_process_threads: Torch intra-op threads the tuned backend runs with in process, or None
            (the caller's own setting applies).
        in_process_latencies_ms: Threads (as a string, JSON keys) -> geometric mean over the
            measured shapes of the median in-process latency, in ms (older reports: the typical
            call's median).
        in_process_shape_latencies_ms: Shape (``"smallest"``, ``"typical"``, ``"largest"``; a
            shape equal to one before it is left out) -> threads -> median latency, in ms.
        in_process_reason: Why that count, or why none was measured.
    """

    cores: int = 0
    layouts: list[LayoutResult] = field(default_factory=list)
    instances: int | None = None
    threads: int | None = None
    reason: str = ""
    batch_size: int = 1
    in_process_threads: int | None = None
    in_process_latencies_ms: dict[str, float] = field(default_factory=dict)
    in_process_shape_latencies_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    in_process_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayoutReport":
        """Rebuild from :meth:`to_dict` (unknown keys of newer versions are left out)."""
        known = set(cls.__dataclass_fields__)
        values = {key: value for key, value in data.items() if key in known}
        fields = set(LayoutResult.__dataclass_fields__)
        values["layouts"] = [LayoutResult(**{k: v for k, v in entry.items() if k in fields}) for entry in data.get("layouts") or []]
        return cls(**values)

    def result(self, instances: int) -> LayoutResult | None:
        """The measured layout with ``instances`` instances, or None."""
        return next((r for r in self.layouts if r.instances == instances), None)

    def summary(self) -> str:
        """One line for logs and the report: the chosen layout and the in-process threads."""
        served = f"layout {self.instances}x{self.threads}: {self.reason}" if self.instances else f"layout: {self.reason}"
        threads = f"in process {self.in_process_threads} thread(s)" if self.in_process_threads else "in process: " + self.in_process_reason
        return f"{served}; {threads}"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: Batch calls a throughput window should hold; with :data:`MIN_WINDOW_S`, what a fast call's window is cut to.
WINDOW_CALLS = 100
#: Shortest throughput window, in seconds.
MIN_WINDOW_S = 0.2


def layout_window_s(longest_s: float, call_ms: float | None) -> float:
    """The throughput window per layout and round: long enough for :data:`WINDOW_CALLS` batch calls
    of ``call_ms`` (the kept backend's latency at the batch measured) and at least
    :data:`MIN_WINDOW_S`, at most ``longest_s``. A 0.1 ms call needs no second-long window: a tiny
    CNN's layout measurement took 12 s of a 38 s tune with 1 s windows. ``call_ms`` None: ``longest_s``."""
    if not call_ms or call_ms <= 0:
        return longest_s
    return min(longest_s, max(MIN_WINDOW_S, WINDOW_CALLS * call_ms / 1000.0))


def layouts_for(cores: int) -> list[tuple[int, int]]:
    """``(instances, threads)`` layouts that fill ``cores``: ``instances * threads == cores``,
    instances up to :data:`MAX_INSTANCES`, fewest instances first (2 cores: ``[(1, 2), (2, 1)]``)."""
    return [(count, cores // count) for count in range(1, min(cores, MAX_INSTANCES) + 1) if cores % count == 0]


def choose_layout(results: Sequence[LayoutResult], latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE) -> tuple[LayoutResult, str]:
    """The rule: among the layouts whose single-stream latency is within ``latency_tolerance`` of
    the best one, the highest throughput; a tie keeps fewer instances.

    Args:
        results: Measured layouts (those without a latency or a throughput are left out).
        latency_tolerance: Fraction over the best latency a layout may take (0.10: 10%).

    Returns:
        The chosen layout and the reason, one phrase.

    Raises:
        InvalidArgumentError: (a ValueError) no layout has both measurements, or the tolerance is negative.
    """
    if not isinstance(latency_tolerance, (int, float)) or isinstance(latency_tolerance, bool) or latency_tolerance < 0:
        raise InvalidArgumentError(f"latency_tolerance: expected a fraction >= 0 (0.1: 10%), got {latency_tolerance!r}")
    measured = [r for r in results if r.latency_ms is not None and r.throughput is not None]
    if not measured:
        raise InvalidArgumentError(f"results: expected at least one layout with a latency and a throughput, got {list(results)!r}")
    fastest = min(measured, key=lambda r: (r.latency_ms or 0.0, r.instances))
    budget = (fastest.latency_ms or 0.0) * (1.0 + latency_tolerance)
    eligible = [r for r in measured if r.latency_ms is not None and r.latency_ms <= budget]
    chosen = max(eligible, key=lambda r: (r.throughput or 0.0, -r.instances))
    left_out = [r.label for r in measured if r not in eligible]
    return chosen, (
        f"highest throughput ({chosen.throughput:.4g} samples/s) among the layouts within {latency_tolerance:.0%} of the "
        f"best single-stream latency ({fastest.latency_ms:.3g} ms, {fastest.label})"
        + (f"; over the latency budget: {', '.join(left_out)}" if left_out else "")
    )


def measure_layout(
    backend: Backend,
    graph: GraphSpec,
    typical: CallStructure,
    batch: CallStructure,
    *,
    seconds: float = 1.0,
    rounds: int = 2,
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
    log: Callable[[str], None] = lambda message: None,
    shapes: Mapping[str, CallStructure] | None = None,
) -> LayoutReport:
    """Measure the served layouts and the in-process threads of the kept ``backend`` (see the module docstring).

    Never raises for a measurement that cannot be made: the report says why (a layout that does
    not apply, a worker that failed) and holds no choice, so the export keeps its defaults.

    Args:
        backend: The kept backend, built and active.
        graph: Its graph spec.
        typical: The typical recorded call.
        batch: The call the dynamic batcher would form (the throughput is counted in its rows).
        seconds: Throughput window per layout and round; the latency gets half of it.
        rounds: Measurement rounds (the order reverses every other round).
        latency_tolerance: The rule's tolerance (see :func:`choose_layout`).
        log: Receives one-line progress messages.
        shapes: The recorded calls the in-process threads are timed at (``"smallest"``,
            ``"typical"``, ``"largest"``); None: ``typical`` alone.
    """
    cores = available_cores()
    report = LayoutReport(cores=cores, batch_size=batch_of(graph, batch))
    measure_in_process(backend, shapes or {"typical": typical}, cores, report)
    layouts = layouts_for(cores)
    if backend.triton_runtime is None:
        report.reason = f"not measured: the {backend.name} backend has no artifact a served instance loads"
    elif backend.device.type != "cpu":
        report.reason = f"not measured: layouts are measured for CPU instances, the backend runs on {backend.device}"
    elif len(layouts) < 2:
        report.reason = f"not measured: one layout fits {cores} core(s)"
    else:
        log(f"{graph.name}: measuring served layouts {', '.join(f'{i}x{t}' for i, t in layouts)} ({rounds} rounds)")
        try:
            report.layouts = _measure_served(backend, graph, typical, batch, layouts, seconds, rounds, report.batch_size)
            chosen, why = choose_layout(report.layouts, latency_tolerance)
            report.instances, report.threads, report.reason = chosen.instances, chosen.threads, why
        except Exception as error:  # a worker that cannot load or run the artifact: export keeps its defaults
            report.reason = f"not measured: {type(error).__name__}: {error}"
    log(f"{graph.name}: {report.summary()}")
    return report


def measure_in_process(backend: Backend, shapes: Mapping[str, CallStructure], cores: int, report: LayoutReport) -> None:
    """Time ``backend`` at each of ``shapes`` with 1..cores torch threads; keep the count with the
    lowest geometric mean over the shapes (see the module docstring) in ``report``."""
    if backend.triton_runtime is None:
        report.in_process_reason = f"not measured: the {backend.name} backend runs the caller's module as it is"
        return
    # ONNX Runtime and OpenVINO run their own thread pools (torch's thread count does not reach them),
    # sized by the option measured at build or given.
    for option in ("intra_op_num_threads", "inference_num_threads"):
        if option in backend.options:
            report.in_process_reason = f"the backend's own {option}={backend.options[option]}"
            return
    if backend.device.type != "cpu" or cores < 2:
        report.in_process_reason = f"not measured: one choice ({cores} core(s), device {backend.device})"
        return
    calls = {label: call for label, call in shapes.items() if distinct_shapes(shapes)[label] == label}
    profiler = Profiler(warmup_runs=1, min_runs=3, max_runs=30, max_time_s=0.3)
    counts = list(range(1, min(cores, MAX_INSTANCES) + 1))
    timings: dict[str, dict[int, float]] = {label: {} for label in calls}
    with torch.no_grad():
        for round_index in range(2):
            for threads in counts if round_index % 2 == 0 else reversed(counts):
                with torch_threads(threads):
                    for label, call in calls.items():
                        ms = profiler.time(lambda: backend.infer(call), backend.device).median_ms  # noqa: B023 (run now)
                        timings[label][threads] = min(timings[label].get(threads, ms), ms)
    means = {n: math.exp(statistics.fmean(math.log(max(per[n], 1e-9)) for per in timings.values())) for n in counts}
    best = min(means, key=lambda n: (means[n], n))
    report.in_process_threads = best
    report.in_process_latencies_ms = {str(n): ms for n, ms in sorted(means.items())}
    report.in_process_shape_latencies_ms = {label: {str(n): ms for n, ms in sorted(per.items())} for label, per in timings.items()}
    report.in_process_reason = (
        f"fastest over the recorded shapes {', '.join(calls)} (geometric mean {means[best]:.3g} ms, each shape weighed the same)"
    )


def _tensors(call: CallStructure) -> bytes:
    buffer = io.BytesIO()
    torch.save([t.detach().cpu() for t in call.flat.tensors], buffer)
    return buffer.getvalue()


class _Workers:
    """Worker processes, one per instance, each serving commands over a socket pair.

    Each is a fresh interpreter running ``python -m aitune_triton.strategies.layout_worker``, not a
    ``multiprocessing`` child: ``spawn`` and ``forkserver`` import the caller's ``__main__`` again
    in every child, which re-runs a script without a ``__main__`` guard (its recording and tuning
    included), and ``fork`` copies a process whose torch thread pools are already running.
    """

    def __init__(self, count: int, backend: Backend, graph: GraphSpec, calls: dict[str, bytes]):
        import aitune_triton

        package_root = str(Path(aitune_triton.__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.pipes: list[Connection] = []
        self.processes: list[subprocess.Popen] = []
        try:
            for _ in range(count):
                mine, theirs = socket.socketpair()
                with theirs:
                    process = subprocess.Popen(
                        [sys.executable, "-m", "aitune_triton.strategies.layout_worker", str(theirs.fileno())],
                        pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    )
                self.processes.append(process)
                self.pipes.append(Connection(mine.detach()))
                self.pipes[-1].send((backend.to_dict(), graph.to_dict(), calls))
        except BaseException:
            self.close()
            raise

    def ask(self, count: int, command: tuple, timeout_s: float) -> list[Any]:
        """Send ``command`` to the first ``count`` workers, then wait for every answer."""
        for pipe in self.pipes[:count]:
            pipe.send(command)
        answers = []
        for index, pipe in enumerate(self.pipes[:count]):
            if not pipe.poll(timeout_s):
                raise TimeoutError(f"layout worker {index} did not answer {command[0]!r} within {timeout_s:.0f} s")
            try:
                status, value = pipe.recv()
            except (EOFError, OSError):
                raise RuntimeError(f"layout worker {index} died (exit code {self.processes[index].poll()})") from None
            if status != "ok":
                raise RuntimeError(f"layout worker {index}: {value}")
            answers.append(value)
        return answers

    def close(self) -> None:
        """Stop every worker process: each is asked to stop; one that has not exited within 5 s is killed."""
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except (OSError, ValueError):
                pass
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for pipe in self.pipes:
            pipe.close()


def _measure_served(
    backend: Backend, graph: GraphSpec, typical: CallStructure, batch: CallStructure,
    layouts: list[tuple[int, int]], seconds: float, rounds: int, rows: int,
) -> list[LayoutResult]:
    results = {layout: LayoutResult(*layout) for layout in layouts}
    workers = _Workers(max(i for i, _ in layouts), backend, graph, {"typical": _tensors(typical), "batch": _tensors(batch)})
    budget_s = 30.0 + 10 * seconds
    try:
        for round_index in range(rounds):
            for instances, threads in layouts if round_index % 2 == 0 else list(reversed(layouts)):
                result = results[(instances, threads)]
                workers.ask(instances, ("load", threads), _LOAD_TIMEOUT_S)
                latencies = workers.ask(1, ("latency", threads, seconds / 2), budget_s)[0]
                result.latency_ms = _lowest(result.latency_ms, latencies["typical"])
                result.batch_latency_ms = _lowest(result.batch_latency_ms, latencies["batch"])
                start = time.monotonic() + 0.05
                finished = workers.ask(instances, ("throughput", threads, start, seconds), budget_s)
                rate = sum(calls * rows / elapsed for calls, elapsed in finished if elapsed > 0)
                result.throughput = max(result.throughput or 0.0, rate)
    finally:
        workers.close()
    return list(results.values())


def _lowest(known: float | None, value: float) -> float:
    return value if known is None else min(known, value)
