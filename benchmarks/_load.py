"""Load generation shared by the served benchmarks: closed-loop clients on threads."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence


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
