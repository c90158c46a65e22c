"""Load generation shared by the served benchmarks: closed-loop clients on threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


def throughput(make_caller: Callable[[], Callable[..., Any]], clients: int, seconds: float, inputs: Sequence[dict]) -> float:
    """Requests per second with ``clients`` threads, each with its own caller, for ``seconds``.

    Each thread makes one warm-up call with ``inputs[0]`` (not counted), then calls in a closed
    loop (the next request after the answer), cycling through ``inputs``, until the deadline.
    """
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        call = make_caller()
        call(**inputs[0])
        while time.perf_counter() < deadline:
            call(**inputs[counts[index] % len(inputs)])
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


@dataclass
class LoadResult:
    """What one closed-loop load saw, from the clients' side.

    Attributes:
        clients: Concurrent clients (threads).
        sent: Requests issued (warm-up calls excluded).
        indices: Index of each answered request, in completion order (request ``i`` used
            ``inputs[i % len(inputs)]``).
        latencies_ms: Client-observed latency of each answered request, ms, same order as ``indices``.
        errors: ``(index, error)`` of each request that raised (index -1: a client's warm-up call).
        wrong: Indices whose answer ``check`` rejected.
        elapsed_s: Wall time from the common start to the last answer, seconds.
    """

    clients: int
    sent: int = 0
    indices: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def lost(self) -> int:
        """Requests issued that got neither an answer nor an error (a client thread that hung or died)."""
        return self.sent - len(self.indices) - sum(1 for index, _ in self.errors if index >= 0)

    def per_s(self, weights: Sequence[int] | None = None) -> float:
        """Answered requests per second, or answered items (e.g. sentences) per second when
        ``weights[i % len(weights)]`` is the number of items in request ``i``."""
        items = len(self.indices) if weights is None else sum(weights[i % len(weights)] for i in self.indices)
        return items / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the answered requests' latency, ms (nan when none)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def closed_loop(
    make_caller: Callable[[], Callable[..., Any]],
    inputs: Sequence[dict],
    clients: int,
    *,
    seconds: float | None = None,
    requests: int | None = None,
    check: Callable[[int, Any], bool] | None = None,
    close_callers: bool = False,
    join_timeout_s: float = 600.0,
) -> LoadResult:
    """Closed-loop load: ``clients`` threads, each with its own caller, send the next request as
    soon as their previous one is answered, and the latency of each request is timed by its client.

    Requests share one sequence: request ``i`` (the i-th taken by any client) is
    ``inputs[i % len(inputs)]``. Each thread first makes one warm-up call with ``inputs[0]`` (not
    counted); all threads then start together. The load stops after ``seconds`` (no request is
    started after the deadline) or once ``requests`` requests were taken, whichever is given.

    Args:
        make_caller: Called once per thread, in that thread; returns the callable taking one
            request's keyword arguments (e.g. a ``RemoteModule`` or a tuned module under no_grad).
        inputs: The requests' keyword arguments, cycled through.
        clients: Concurrent clients, >= 1.
        seconds: Duration of the load, s.
        requests: Number of requests to send.
        check: ``check(i, answer)`` is True when request ``i``'s answer is right; a False adds
            ``i`` to ``wrong``.
        close_callers: Call each caller's ``close()`` when its thread is done (a ``RemoteModule``
            made per client releases its connections).
        join_timeout_s: How long to wait for the threads after the load; a thread still running
            then leaves its request counted as lost.

    Returns:
        The :class:`LoadResult`.

    Raises:
        ValueError: not exactly one of ``seconds`` and ``requests`` given, or ``clients`` < 1.
    """
    if (seconds is None) == (requests is None) or clients < 1:
        raise ValueError(f"closed_loop: give exactly one of seconds and requests, and clients >= 1 (got {seconds=}, {requests=}, {clients=})")
    result = LoadResult(clients=clients)
    lock = threading.Lock()
    start_together = threading.Barrier(clients + 1)
    deadline = [float("inf")]

    def take() -> int | None:
        with lock:
            if (requests is not None and result.sent >= requests) or time.perf_counter() >= deadline[0]:
                return None
            result.sent += 1
            return result.sent - 1

    def worker() -> None:
        try:
            call = make_caller()
            call(**inputs[0])
        except Exception as error:  # this client never starts; its failure is reported, not raised in a thread
            with lock:
                result.errors.append((-1, f"warm-up: {type(error).__name__}: {error}"))
            start_together.wait()
            return
        start_together.wait()
        while (index := take()) is not None:
            begin = time.perf_counter()
            try:
                answer = call(**inputs[index % len(inputs)])
            except Exception as error:  # every failure of a request is counted, none stops the load
                with lock:
                    result.errors.append((index, f"{type(error).__name__}: {error}"))
                continue
            latency_ms = (time.perf_counter() - begin) * 1e3
            right = check is None or check(index, answer)
            with lock:
                result.indices.append(index)
                result.latencies_ms.append(latency_ms)
                if not right:
                    result.wrong.append(index)
        if close_callers:
            call.close()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start_together.wait()
    start = time.perf_counter()
    if seconds is not None:
        deadline[0] = start + seconds
    for thread in threads:
        thread.join(timeout=join_timeout_s)
    result.elapsed_s = time.perf_counter() - start
    return result
