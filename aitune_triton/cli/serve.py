"""``aitune-triton serve``: a real Triton server on a model repository until interrupted."""

from __future__ import annotations

import signal
import time
import warnings
from pathlib import Path

import click

from aitune_triton.cli.common import console, fail
from aitune_triton.errors import AITuneTritonError

__all__ = ["serve"]


@click.command()
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--http-port", default=None, type=int, help="HTTP port [default: a free port].")
@click.option("--grpc-port", default=None, type=int, help="gRPC port [default: a free port].")
@click.option("--metrics-port", default=None, type=int, help="Metrics port [default: a free port].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="IPv4 address HTTP, gRPC and metrics listen on; 0.0.0.0 opens them to every interface "
                   "(Triton has no authentication: only on a trusted network).")
@click.option("--tritonserver", "tritonserver", default=None, type=click.Path(path_type=Path),
              help="tritonserver binary [default: the one in the nvidia-pytriton wheel, else PATH].")
@click.option("--log-file", default=None, type=click.Path(path_type=Path),
              help="File that keeps the server log [default: a temporary file].")
@click.option("--quiet-log", is_flag=True, help="Do not echo server log lines.")
@click.option("--timeout-s", default=180.0, show_default=True, type=float,
              help="Seconds to wait for the server and its models to be ready.")
@click.option("--container", is_flag=True, help="Run the NGC tritonserver image through Docker (pip install "
              "'aitune-triton[docker]' and a running engine) with REPOSITORY mounted, instead of a local binary.")
@click.option("--image", default=None, help="With --container: the image [default: built from --runtime-env, else "
              "the NGC image of the server version the manifests record].")
@click.option("--runtime-env", "runtime_env", default=None, type=click.Path(path_type=Path),
              help="With --container: a directory written by `aitune-triton runtime-env`, built into the image.")
def serve(repository: Path, http_port: int | None, grpc_port: int | None, metrics_port: int | None, host: str,
          tritonserver: Path | None, log_file: Path | None, quiet_log: bool, timeout_s: float, container: bool,
          image: str | None, runtime_env: Path | None) -> None:
    """Serve REPOSITORY with a real Triton server until interrupted (Ctrl-C or SIGTERM).

    Listens on 127.0.0.1 (this machine only) unless --host says otherwise. Exits with status 1
    and an "Error:" line holding the server's own error lines when it cannot start or a model
    fails to load, and with status 1 saying how it died (signal or exit code) and where its log
    is kept when the server ends on its own.
    """
    from aitune_triton.triton.server import TritonServer

    signal.signal(signal.SIGTERM, _interrupt)  # before the start, so a SIGTERM while loading stops it too
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            server = TritonServer(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                  tritonserver=tritonserver, log_path=log_file, stream_log=not quiet_log,
                                  timeout_s=timeout_s, host=host, container=container, image=image,
                                  runtime_env=runtime_env)
        for warning in caught:
            click.echo(f"Warning: {warning.message}", err=True)
        server.start()
    except KeyboardInterrupt:
        raise click.Abort() from None
    except AITuneTritonError as error:
        raise fail(error) from error
    try:  # a SIGTERM right after the line below is printed is a stop too
        console.print(f"Serving {repository}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
                      f"metrics {server.metrics_url}, log {server.log_path}. Ctrl-C stops.")
        while server.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop short
        errors = server.error_lines()
        server.stop()
    if server.exit_message is not None:  # it ended on its own, not by Ctrl-C / SIGTERM here
        raise click.ClickException(f"{server.exit_message} while serving; its log is kept at {server.log_path}.")
    if errors:
        console.print(f"Server stopped; its log ({server.log_path}) has error lines.")
    else:
        console.print("Server stopped.")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
