"""Several servers behind one RemoteModule: which replica a request goes to, which replicas are out,
when an out replica is probed again, and when a call gives up.

No I/O here: :class:`~aitune_triton.RemoteModule` and :class:`~aitune_triton.AsyncRemoteModule` send,
probe and sleep; :class:`CallAttempts` decides, so that both clients decide the same way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from aitune_triton.errors import (
    InvalidArgumentError,
    RemoteConnectionClosedError,
    RemoteInferenceError,
    RemoteTimeoutError,
    RemoteUnavailableError,
)
from aitune_triton.triton.client_transport import RetryPolicy, given_up, remote_error, strip_scheme

__all__ = ["CallAttempts", "Replica", "ReplicaSet", "parse_urls"]


def parse_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """``url`` (one ``host:port`` or a list of them, scheme prefixes accepted) as a tuple of ``host:port``.

    Raises:
        InvalidArgumentError: ``url`` is empty, not a string or a list of strings, or lists a URL twice.
    """
    urls = [url] if isinstance(url, str) else list(url) if isinstance(url, (list, tuple)) else None
    if not urls or not all(isinstance(one, str) and one.strip() for one in urls):
        raise InvalidArgumentError(
            f"url: expected 'host:port' of a server's gRPC or HTTP endpoint, or a non-empty list of them (one per "
            f"replica), got {url!r}"
        )
    stripped = tuple(strip_scheme(one.strip()) for one in urls)
    twice = sorted({one for one in stripped if stripped.count(one) > 1})
    if twice:
        raise InvalidArgumentError(f"url: each replica once, got {', '.join(twice)} more than once in {url!r}; remove the repeats")
    return stripped


@dataclass
class Replica:
    """One server of a :class:`ReplicaSet`.

    Attributes:
        url: ``host:port``.
        failures: Failures since it last answered (0: in service).
        probe_at_s: ``time.monotonic()`` after which an out replica may be probed (and put back).
        last_error: The message of its last failure ("" when none).
    """

    url: str
    failures: int = 0
    probe_at_s: float = 0.0
    last_error: str = ""

    @property
    def in_service(self) -> bool:
        """Whether calls go to this replica: it has not failed since it last answered or proved ready."""
        return self.failures == 0


class ReplicaSet:
    """The replicas of one client and their state, shared by its calls (and threads).

    Requests go round robin over the replicas in service. A failed replica is taken out for
    ``retry.wait_s(failures - 1)`` seconds (the back-off doubles with each failure in a row, at most
    ``retry.max_backoff_s``); after that the next call that reaches it probes its readiness first
    and puts it back when the probe answers ready.

    Args:
        urls: ``host:port`` of each replica (see :func:`parse_urls`).
        retry: The back-off policy.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(self, urls: Sequence[str], retry: RetryPolicy, clock: Callable[[], float] = time.monotonic):
        self.replicas = [Replica(url) for url in urls]
        self.retry = retry
        self.clock = clock
        self._next = 0
        self._lock = threading.Lock()

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica's ``host:port``, in the order given."""
        return tuple(replica.url for replica in self.replicas)

    def choose(self, skip: set[str]) -> tuple[Replica, bool] | None:
        """The next replica in round-robin order that is in service or due for a probe, not in
        ``skip``; with True when it must be probed first (its probe is then claimed: other calls
        skip it until its next back-off ends). None when there is none."""
        with self._lock:
            now = self.clock()
            count = len(self.replicas)
            for step in range(count):
                index = (self._next + step) % count
                replica = self.replicas[index]
                if replica.url in skip or not (replica.in_service or replica.probe_at_s <= now):
                    continue
                self._next = (index + 1) % count
                if not replica.in_service:
                    replica.probe_at_s = now + self.retry.wait_s(replica.failures)
                return replica, not replica.in_service
            return None

    def take_out(self, replica: Replica, error: str, probed: bool = False) -> None:
        """Take ``replica`` out after a failure (``probed``: of the probe this call claimed). A
        failure of a request sent before another call took it out only updates its last error."""
        with self._lock:
            replica.last_error = error
            if replica.in_service or probed:
                replica.failures += 1
                replica.probe_at_s = self.clock() + self.retry.wait_s(replica.failures - 1)

    def put_back(self, replica: Replica) -> None:
        """Put ``replica`` back in service (it answered ready, or answered a request)."""
        with self._lock:
            replica.failures = 0
            replica.last_error = ""

    def next_probe_s(self) -> float:
        """Seconds until the first out replica may be probed (0 when one may be now or none is out)."""
        with self._lock:
            now = self.clock()
            waits = [replica.probe_at_s - now for replica in self.replicas if not replica.in_service]
            return max(min(waits, default=0.0), 0.0)


class CallAttempts:
    """One call's way through the replicas: which to try next, when to wait, when to give up.

    A request that could not reach a replica (connection refused, gRPC ``UNAVAILABLE``), or, when
    there are several replicas, whose connection closed before the answer (the server died mid-call),
    takes the replica out and goes to the next one in service at once (inference is idempotent).
    When none is left, the call waits for the first back-off to end and probes that replica: such a
    wait is a retry (at most ``retry.retries`` per call), and never past the deadline.

    Args:
        replicas: The client's replicas.
        where: Names the request for error messages, given a replica's ``host:port``.
        protocol: ``"grpc"`` or ``"http"`` (error messages).
        timeout_s: The client's ``timeout_s`` (error messages).
        deadline_s: ``time.monotonic()`` by which the call must end.
    """

    def __init__(self, replicas: ReplicaSet, where: Callable[[str], str], protocol: str, timeout_s: float, deadline_s: float):
        self.replicas = replicas
        self.where = where
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.attempts = 0
        self._waits = 0
        self._start_s = replicas.clock()
        self._skip: set[str] = set()
        self._probing: Replica | None = None
        self._last: tuple[RemoteInferenceError, BaseException] | None = None

    def next(self) -> tuple[Replica, bool] | float:
        """The replica to try next, with True when its readiness must be probed first (then report
        with :meth:`probed`), or the seconds to wait before asking again.

        Raises:
            RemoteInferenceError: no replica answered and the retries or the time are spent: the last
                error, naming every replica and its last error when there are several.
        """
        chosen = self.replicas.choose(self._skip)
        if chosen is not None:
            self.attempts += 1
            self._probing = chosen[0] if chosen[1] else None
            return chosen
        wait_s = self.replicas.next_probe_s()
        tried = self._last is not None  # a call tries at least once: its first wait is no retry
        if (tried and self._waits >= self.replicas.retry.retries) or self.replicas.clock() + wait_s >= self.deadline_s:
            if self._last is None:
                raise self._given_up(None)
            error, raw = self._last
            raise self._given_up(error) from raw
        self._waits += int(tried)
        self._skip.clear()
        return wait_s

    def left_s(self) -> float:
        """Seconds left to the deadline (at least 1 ms: a request must carry a positive timeout)."""
        return max(self.deadline_s - self.replicas.clock(), 0.001)

    def probed(self, replica: Replica, ready: bool) -> bool:
        """Report the probe of ``replica``: put back when ``ready``, else out again. Returns ``ready``."""
        self._probing = None
        if ready:
            self.replicas.put_back(replica)
            return True
        error = RemoteUnavailableError(
            f"{self.where(replica.url)}: the server answers but is not ready (its models are loading or failed); "
            "check its log and health endpoint."
        )
        self._take_out(replica, error, error, probed=True)
        return False

    def answered(self, replica: Replica) -> None:
        """Report an answer from ``replica``: back in service if another call took it out meanwhile."""
        if not replica.in_service:
            self.replicas.put_back(replica)

    def failed(self, replica: Replica, raw: BaseException) -> None:
        """Report a failed probe or request on ``replica``: taken out when another replica may answer
        the call (or it may come back within the call).

        Raises:
            RemoteInferenceError: the failure is not one to retry elsewhere (the server's own error
                answer, a timeout, a closed connection to the only replica): raised now, as a library error.
        """
        error = remote_error(raw, self.where(replica.url), self.timeout_s)
        probed = self._probing is replica
        self._probing = None
        closed_elsewhere = isinstance(error, RemoteConnectionClosedError) and len(self.replicas.replicas) > 1
        if not (probed or isinstance(error, RemoteUnavailableError) or closed_elsewhere):
            # The server's own answer, or a timeout: raised as it is (the old single-server message kept).
            final = self._given_up(error) if len(self.replicas.replicas) == 1 else error
            if final is raw:
                raise final
            raise final from raw
        self._take_out(replica, error, raw, probed=probed)

    def _take_out(self, replica: Replica, error: RemoteInferenceError, raw: BaseException, probed: bool) -> None:
        self.replicas.take_out(replica, str(error), probed=probed)
        self._skip.add(replica.url)
        self._last = (error, raw)

    def _given_up(self, error: RemoteInferenceError | None) -> RemoteInferenceError:
        """The error a call gives up with: ``error`` (the last one; None when every replica was out
        for the whole call); with several replicas a RemoteUnavailableError (a RemoteTimeoutError
        when the last failure was one) naming each replica's last error."""
        elapsed_s = self.replicas.clock() - self._start_s
        replicas = self.replicas.replicas
        if error is None:
            error = RemoteUnavailableError(
                f"{replicas[0].last_error} Taken out of service, it is not tried again before this call's deadline "
                f"(timeout_s={self.timeout_s:g} s)."
            )
        if len(replicas) == 1:
            return given_up(error, self.attempts, elapsed_s)
        states = " | ".join(
            replica.last_error or f"{self.protocol}://{replica.url}: in service, not reached by this call" for replica in replicas
        )
        kind = RemoteTimeoutError if isinstance(error, RemoteTimeoutError) else RemoteUnavailableError
        return kind(
            f"None of the {len(replicas)} replicas answered within timeout_s={self.timeout_s:g} s "
            f"(gave up after {self.attempts} attempts in {elapsed_s:.1f} s; retries=, timeout_s= set the budget). "
            f"Each replica's last error: {states}"
        )
