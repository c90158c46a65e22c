"""The nginx configuration of a load balancer in front of Triton replicas (HTTP/REST and gRPC).

:func:`nginx_config` renders ``templates/nginx.conf.j2``: one ``upstream`` per protocol listing
every replica, ``proxy_pass`` for HTTP and ``grpc_pass`` over cleartext HTTP/2 for gRPC, each with
passive failover (``proxy_next_upstream`` / ``grpc_next_upstream`` on connection errors, timeouts
and 502/503/504 answers, inference requests retried on the next replica even after they were sent).
The compose target writes it for its replicas; tests run it on local ports with the nginx binary.
:func:`nginx_check` runs ``nginx -t`` on a configuration where nginx is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.triton.models.planned import template_environment

__all__ = ["nginx_check", "nginx_config"]

#: A host name, IPv4 address or bracketed IPv6 address, then ``:port``: nothing nginx would parse as syntax.
_UPSTREAM = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(\d{1,5})$")
_PATH = re.compile(r"^/[A-Za-z0-9._/\-]*$")
_ADDRESS = re.compile(r"^(?:[0-9.]+|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)?$")


def _check_upstreams(argument: str, upstreams: Sequence[str]) -> list[str]:
    if isinstance(upstreams, str) or not upstreams:
        raise InvalidArgumentError(
            f"{argument}: expected a non-empty list of 'host:port' replica addresses, got {upstreams!r}."
        )
    checked = []
    for upstream in upstreams:
        match = _UPSTREAM.match(upstream) if isinstance(upstream, str) else None
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise InvalidArgumentError(
                f"{argument}: expected 'host:port' (a host name or address and a port 1-65535) for each replica, "
                f"got {upstream!r}. Pass addresses such as 'triton-1:8000' or '127.0.0.1:8000'."
            )
        checked.append(upstream)
    return checked


def _check_positive(argument: str, value: object, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper is not None and value > upper):
        bound = f"1-{upper}" if upper is not None else "a positive integer"
        raise InvalidArgumentError(f"{argument}: expected an integer {bound}, got {value!r}.")
    return value


def nginx_config(
    http_upstreams: Sequence[str],
    grpc_upstreams: Sequence[str],
    *,
    http_port: int = 8000,
    grpc_port: int = 8001,
    listen_address: str = "",
    runtime_dir: str = "/tmp",
    error_log: str = "stderr",
    max_request_bytes: int = 256 * 1024 * 1024,
    connect_timeout_s: int = 2,
    read_timeout_s: int = 300,
    fail_timeout_s: int = 10,
) -> str:
    """The text of an ``nginx.conf`` that balances HTTP and gRPC over Triton replicas.

    Args:
        http_upstreams: Each replica's HTTP/REST address, ``"host:port"`` (``"triton-1:8000"``).
        grpc_upstreams: Each replica's gRPC address, ``"host:port"`` (``"triton-1:8001"``).
        http_port: Port nginx listens on for HTTP/REST (1-65535).
        grpc_port: Port nginx listens on for gRPC (cleartext HTTP/2; 1-65535, not ``http_port``).
        listen_address: Address to listen on (``"127.0.0.1"``); empty: every address.
        runtime_dir: Absolute directory for nginx's pid file and temporary files (created by nginx,
            except the directory itself: it must exist and be writable by nginx's worker user).
        error_log: Absolute file path or ``"stderr"`` for nginx's error log (warnings and above).
        max_request_bytes: Largest request body accepted, in bytes (tensors travel in the body).
        connect_timeout_s: Seconds to connect to a replica before trying the next one.
        read_timeout_s: Seconds a replica may take to answer (or accept a request body).
        fail_timeout_s: Seconds a replica that failed is left out of the rotation.

    Returns:
        The configuration text (``nginx -c`` takes it as the main configuration file).

    Raises:
        InvalidArgumentError: an upstream is not ``host:port``, a list is empty, a port or duration is
            out of range, the two ports are equal, or a path is not absolute / holds characters nginx
            would parse as syntax.
    """
    http_servers = _check_upstreams("http_upstreams", http_upstreams)
    grpc_servers = _check_upstreams("grpc_upstreams", grpc_upstreams)
    _check_positive("http_port", http_port, 65535)
    _check_positive("grpc_port", grpc_port, 65535)
    if http_port == grpc_port:
        raise InvalidArgumentError(f"grpc_port: must differ from http_port, both are {http_port}. Pick two ports.")
    for argument, value in (("max_request_bytes", max_request_bytes), ("connect_timeout_s", connect_timeout_s),
                            ("read_timeout_s", read_timeout_s), ("fail_timeout_s", fail_timeout_s)):
        _check_positive(argument, value)
    if not isinstance(listen_address, str) or not _ADDRESS.match(listen_address):
        raise InvalidArgumentError(
            f"listen_address: expected an IP address, a host name or '' (every address), got {listen_address!r}."
        )
    if not isinstance(runtime_dir, str) or not _PATH.match(runtime_dir):
        raise InvalidArgumentError(
            f"runtime_dir: expected an absolute path of letters, digits and ._-/ only, got {runtime_dir!r}."
        )
    if not isinstance(error_log, str) or not (error_log == "stderr" or _PATH.match(error_log)):
        raise InvalidArgumentError(
            f"error_log: expected 'stderr' or an absolute path of letters, digits and ._-/ only, got {error_log!r}."
        )
    return template_environment().get_template("nginx.conf.j2").render(
        http_upstreams=http_servers,
        grpc_upstreams=grpc_servers,
        http_port=http_port,
        grpc_port=grpc_port,
        listen_prefix=f"{listen_address}:" if listen_address else "",
        runtime_dir=runtime_dir.rstrip("/") or "/",
        error_log=error_log,
        max_request_bytes=max_request_bytes,
        connect_timeout_s=connect_timeout_s,
        read_timeout_s=read_timeout_s,
        fail_timeout_s=fail_timeout_s,
    )


def nginx_binary() -> str | None:
    """Path of the ``nginx`` binary on PATH (or Debian's ``/usr/sbin/nginx``); None when not installed."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():
        found = "/usr/sbin/nginx"
    return found


def nginx_check(config: str, binary: str | None = None, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``nginx -t`` on the configuration text ``config`` (in a temporary prefix directory).

    Upstream host names must resolve on this machine (nginx resolves them while checking).

    Args:
        config: A configuration's text (``nginx_config()``).
        binary: The nginx binary; None: :func:`nginx_binary`.
        timeout_s: Seconds the check may take.

    Returns:
        The finished ``nginx -t`` (``returncode`` 0 when nginx accepts the configuration; its
        messages in ``stderr``).

    Raises:
        InvalidArgumentError: no nginx binary is given or installed.
    """
    binary = binary or nginx_binary()
    if binary is None:
        raise InvalidArgumentError(
            "binary: no nginx found on PATH or at /usr/sbin/nginx. Install it (Debian: apt-get install nginx-light) "
            "or pass its path."
        )
    with tempfile.TemporaryDirectory(prefix="aitune-nginx-check-") as prefix:
        path = Path(prefix) / "nginx.conf"
        path.write_text(config)
        return subprocess.run(
            [binary, "-t", "-p", prefix, "-c", str(path), "-e", "stderr"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
