"""What RemoteModule and AsyncRemoteModule set up alike: their checked arguments, their replicas and
the tritonclient module of their protocol (the duplicated constructors of both clients, once)."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Sequence

from aitune_triton.triton.client_calls import check_arguments
from aitune_triton.triton.client_transport import RetryPolicy, check_timeout
from aitune_triton.triton.replicas import CallAttempts, ReplicaSet, parse_urls

__all__ = ["RemoteBase", "READY_PROBE_TIMEOUT_S"]

#: Longest wait for a readiness probe of a replica taken out (gRPC and the async clients), in
#: seconds: a replica that hangs must not use up a call that another replica can answer.
READY_PROBE_TIMEOUT_S = 2.0


class RemoteBase:
    """The arguments both clients take (see :class:`~aitune_triton.RemoteModule`), checked, and the
    replica set their calls go through.

    Raises:
        InvalidArgumentError: a bad ``url``, ``protocol``, ``output_structure``, ``timeout_s``,
            ``retries``, ``backoff_s`` or ``max_backoff_s``, naming it.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        model_name: str,
        protocol: str,
        timeout_s: float,
        output_structure: str,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
    ):
        check_arguments(protocol, output_structure)
        self.timeout_s = check_timeout(timeout_s)
        self._replicas = ReplicaSet(parse_urls(url), RetryPolicy(retries, backoff_s, max_backoff_s))
        self.output_structure = output_structure
        self.model_name = model_name
        self.protocol = protocol
        self._module: ModuleType
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module = client_module

    @property
    def urls(self) -> tuple[str, ...]:
        """``host:port`` of every replica, in the order given."""
        return self._replicas.urls

    @property
    def url(self) -> str:
        """``host:port`` of the first replica (the only one unless several were given). Setting it
        points the client at that one server from the next request on (the routes read stay)."""
        return self._replicas.urls[0]

    @url.setter
    def url(self, url: str) -> None:
        self._replicas = ReplicaSet(parse_urls(url), self._replicas.retry)

    @property
    def retry(self) -> RetryPolicy:
        """The retry and back-off policy (settable)."""
        return self._replicas.retry

    @retry.setter
    def retry(self, retry: RetryPolicy) -> None:
        self._replicas.retry = retry

    def _attempts(self, what: str, deadline_s: float) -> CallAttempts:
        """A call's attempts; ``what`` names it in errors as ``what (grpc://host:port)``."""
        return CallAttempts(self._replicas, lambda url: f"{what} ({self.protocol}://{url})", self.protocol, self.timeout_s, deadline_s)

    def _config_attempts(self) -> CallAttempts:
        """The attempts of reading the entry model's configuration, within ``timeout_s`` from now."""
        return CallAttempts(
            self._replicas,
            lambda url: f"{self.protocol}://{url}: cannot read the configuration of model {self.model_name!r}",
            self.protocol,
            self.timeout_s,
            time.monotonic() + self.timeout_s,
        )
