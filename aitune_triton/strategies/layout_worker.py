"""The worker process of a layout measurement (:mod:`aitune_triton.strategies.layout`): one
emulated Triton instance that loads the kept backend's artifact with a given intra-op thread
count and runs the recorded calls on command."""

from __future__ import annotations

import copy
import io
import os
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import torch

__all__ = ["main", "serve"]


class _Flat:
    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors


class _Call:
    """What an artifact backend's ``infer`` reads of a call: its flat tensors."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.flat = _Flat(tensors)


def serve(pipe: Any, backend_data: dict[str, Any], graph_data: dict[str, Any], calls: dict[str, bytes]) -> None:
    """Answer commands from ``pipe`` until ``("stop",)``; each answer is ``("ok", value)`` or ``("error", text)``.

    Commands:
        ``("load", threads)``: load the artifact with ``threads`` intra-op threads (torch and, when
            the backend has that option, its ONNX Runtime session) and run each call once.
        ``("latency", threads, seconds)``: per call label, the median ms of back-to-back runs
            (``seconds`` shared between the calls, at least 3 runs each).
        ``("throughput", threads, start, seconds)``: from ``time.monotonic() == start``, run the
            ``"batch"`` call until ``start + seconds``; answer ``(calls finished, seconds taken)``.

    Args:
        pipe: This end of a ``multiprocessing.Pipe``.
        backend_data: ``Backend.to_dict()`` of the kept backend.
        graph_data: ``GraphSpec.to_dict()`` of its graph spec.
        calls: Label -> the call's flat input tensors, saved with ``torch.save``.
    """
    from aitune_triton.backends import Backend, LoadContext
    from aitune_triton.spec import CallStructure, GraphSpec

    graph = GraphSpec.from_dict(graph_data)
    inputs = {label: cast(CallStructure, _Call(torch.load(io.BytesIO(data), weights_only=True))) for label, data in calls.items()}
    loaded: dict[int, Backend] = {}

    def load(threads: int) -> Backend:
        torch.set_num_threads(threads)
        if threads not in loaded:
            data = copy.deepcopy(backend_data)
            if "intra_op_num_threads" in data.get("options", {}):
                data["options"]["intra_op_num_threads"] = threads
            context = LoadContext(
                module=cast(torch.nn.Module, None),  # artifact backends load without the module
                graph=graph,
                device=torch.device(data.get("device") or "cpu"),
                artifacts={role: Path(path) for role, path in data.get("artifacts", {}).items()},
            )
            backend = Backend.from_dict(data, context)
            for call in inputs.values():
                backend.infer(call)
            loaded[threads] = backend
        return loaded[threads]

    while True:
        try:
            command = pipe.recv()
        except EOFError:
            return
        if command[0] == "stop":
            return
        try:
            with torch.no_grad():
                backend = load(command[1])
                if command[0] == "load":
                    answer: Any = None
                elif command[0] == "latency":
                    answer = {label: _median_ms(backend, call, command[2] / len(inputs)) for label, call in inputs.items()}
                else:
                    answer = _throughput(backend, inputs["batch"], command[2], command[3])
            pipe.send(("ok", answer))
        except Exception as error:  # reported to the parent, which records why the layout was not measured
            pipe.send(("error", f"{type(error).__name__}: {error}"))


def _median_ms(backend: Any, call: Any, seconds: float) -> float:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 500):
        start = time.perf_counter()
        backend.infer(call)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _throughput(backend: Any, call: Any, start: float, seconds: float) -> tuple[int, float]:
    while time.monotonic() < start:
        time.sleep(0.001)
    end, finished, last = start + seconds, 0, start
    while last < end:
        backend.infer(call)
        finished += 1
        last = time.monotonic()
    return finished, last - start


def main(argv: list[str]) -> None:
    """Entry point (``python -m aitune_triton.strategies.layout_worker FD``): the first message on the
    connection at file descriptor ``FD`` is ``(backend_data, graph_data, calls)`` (see :func:`serve`)."""
    pipe = Connection(int(argv[0]))
    try:
        backend_data, graph_data, calls = pipe.recv()
    except EOFError:
        return
    serve(pipe, backend_data, graph_data, calls)


if __name__ == "__main__":
    main(sys.argv[1:])
    # Nothing to flush or save: skip the interpreter's teardown of torch and ONNX Runtime, which took
    # about 2 s per worker here, while the tune waits for the workers to exit.
    sys.stdout.flush()
    os._exit(0)
