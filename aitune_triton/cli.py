"""The ``aitune-triton`` command line: a thin layer over the Python API."""

from __future__ import annotations

import signal
import time
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from aitune_triton.errors import AITuneTritonError

__all__ = ["main"]

# Results go to stdout (pipeable); progress lines go to stderr (aitune_triton._progress).
console = Console(soft_wrap=True, highlight=False)
if not console.is_terminal:  # pipes and logs: tables (the tuning report) unfolded
    console.width = 160


def _fail(error: Exception) -> click.ClickException:
    return click.ClickException(str(error))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aitune-triton")
def main() -> None:
    """Tune PyTorch modules and serve them with Triton Inference Server.

    Typical flow: tune and save a checkpoint from Python (aitune_triton.Module, .tune(),
    aitune_triton.save), then `aitune-triton export CHECKPOINT -o model_repository/` and
    `aitune-triton serve model_repository/`.
    """


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repository", required=True, type=click.Path(path_type=Path),
              help="Model repository directory to write into (created when missing).")
@click.option("--name", default=None, help="Entry model name; default the module's name. Graph models are NAME.graph_N. "
              "Only for a checkpoint of one module.")
@click.option("--version", "version", default=None, type=int,
              help="Version directory to write in every model (one none of them has) [default: each model's next].")
@click.option("--instance-count", default=None, type=int,
              help="Model instances per device (instance_group count); each is a separate process "
                   "[default: the count of the layout measured at tune time, else 1].")
@click.option("--instance-kind", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "gpu"]),
              help="KIND_CPU or KIND_GPU instances; auto picks GPU when the backend was tuned on CUDA.")
@click.option("--gpus", default=None, help="GPU indices of KIND_GPU instances, comma-separated [default: every GPU].")
@click.option("--instance-group", "instance_groups", multiple=True, metavar="GRAPH=KIND:COUNT[:GPUS]",
              help="Instances of one graph model (graph_0 or NAME.graph_0), e.g. graph_1=cpu:2 or graph_0=gpu:1:0,1; "
                   "repeatable. The others get --instance-kind x --instance-count.")
@click.option("--intra-op-threads", default="measured", show_default=True,
              help="Intra-op threads of torch / ONNX Runtime per graph model instance (keep instances x threads <= "
                   "cores); 'auto': the runtime's own default; 'measured': the threads of the layout measured at tune "
                   "time with the model's instance count, else 1.")
@click.option("--max-queue-delay-microseconds", default=100, show_default=True, type=int,
              help="Dynamic batcher queue delay for models that batch (max_batch_size > 0).")
@click.option("--preferred-batch-size", multiple=True, type=int,
              help="Batch size the dynamic batcher aims for; repeatable [default: the size the tuning measured].")
@click.option("--preserve-ordering", is_flag=True, help="Dynamic batcher: responses in the order requests came.")
@click.option("--priority-levels", default=0, show_default=True, type=int, help="Dynamic batcher priority levels.")
@click.option("--default-priority-level", default=0, show_default=True, type=int,
              help="Priority level of a request that names none (1..--priority-levels).")
@click.option("--queue-timeout-action", default=None, type=click.Choice(["REJECT", "DELAY"]),
              help="Queue policy: what happens to a request past its timeout [default: REJECT].")
@click.option("--queue-timeout-microseconds", default=None, type=int, help="Queue policy: request timeout (0: none).")
@click.option("--allow-timeout-override", is_flag=True, help="Queue policy: a request's own timeout may replace it.")
@click.option("--max-queue-size", default=None, type=int, help="Queue policy: queued requests before rejecting (0: unbounded).")
@click.option("--version-policy", default="latest:1", show_default=True,
              help="Versions served: latest:N, all or specific:V1,V2 (graph and entry models).")
@click.option("--parameter", "parameters", multiple=True, metavar="KEY=VALUE",
              help="Free config parameter of every graph model; repeatable.")
@click.option("--response-cache", is_flag=True, help="Enable Triton's response cache for graph models "
              "(start the server with a cache: --cache-config local,size=...).")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Write model_warmup from the recorded calls at the smallest and largest shape of each graph spec "
              "(inputs under each model's warmup/): Triton runs them on every instance before a model is ready, so the "
              "first requests do not pay for warming up (or, for inductor, for the recorded shapes' compilation). "
              "--no-warmup skips it (faster load).")
@click.option("--tensorrt-cuda-graphs", is_flag=True, help="TensorRT models: capture CUDA graphs.")
@click.option("--tensorrt-profile", "tensorrt_profiles", multiple=True, type=int,
              help="TensorRT models: optimization profile index per instance; repeatable.")
@click.option("--entry-instance-count", default=4, show_default=True, type=int,
              help="Instances of the entry (router) model: how many requests through it run at once.")
@click.option("--target", default="python", show_default=True, type=click.Choice(["python", "native"]),
              help="python: every graph model is a Python-backend model. native: graph models whose backend declares a "
                   "Triton backend of its own (onnxruntime: onnxruntime_onnx, aoti: torch_aoti) are served by it; the "
                   "others stay Python-backend models (the reason is printed).")
@click.option("--preprocess", default=None, metavar="MODULE:FUNCTION",
              help="A step (declared with aitune_triton.triton.steps.step) run before the module, as the model "
                   "NAME.preprocess; with it or --postprocess an ensemble model wires step -> module -> step. MODULE is "
                   "imported from the current directory or the installed packages.")
@click.option("--postprocess", default=None, metavar="MODULE:FUNCTION",
              help="A step run after the module, taking its outputs (and the preprocess step's) by name.")
@click.option("--ensemble-name", default=None, help="Name of the ensemble model [default: NAME_ensemble].")
@click.option("--router/--no-router", default=None,
              help="--router: always an entry (router) model in front of NAME.graph_N graph models. --no-router: a module "
                   "with one graph spec is one model NAME, called without a BLS hop. Default: no router for one graph "
                   "spec with --target python, a router otherwise.")
@click.option("--quiet", is_flag=True, help="Print only the result, no progress lines.")
@click.option("--dry-run", is_flag=True, help="Print the planned tree (files with sizes) and every config.pbtxt; "
              "write nothing.")
def export(checkpoint: Path, repository: Path, name: str | None, version: int | None, instance_count: int | None,
           instance_kind: str, gpus: str | None, instance_groups: tuple[str, ...], intra_op_threads: str,
           max_queue_delay_microseconds: int, preferred_batch_size: tuple[int, ...], preserve_ordering: bool,
           priority_levels: int, default_priority_level: int, queue_timeout_action: str | None,
           queue_timeout_microseconds: int | None, allow_timeout_override: bool, max_queue_size: int | None,
           version_policy: str, parameters: tuple[str, ...], response_cache: bool, warmup: bool,
           tensorrt_cuda_graphs: bool, tensorrt_profiles: tuple[int, ...], entry_instance_count: int, target: str,
           preprocess: str | None, postprocess: str | None, ensemble_name: str | None, router: bool | None,
           quiet: bool, dry_run: bool) -> None:
    """Export CHECKPOINT (written by aitune_triton.save) to a Triton model repository.

    Writes one Python-backend graph model per tuned graph spec and an entry model named after
    the module; a checkpoint of a model or pipeline holding several wrapped submodules gives each
    its own entry and graph models, named after its stored name. Each export adds a new version
    directory, existing versions are never rewritten. With --target native, graph models whose
    backend declares a Triton backend of its own are served by it (the table says which), the
    others stay Python-backend models and a line says why. --preprocess / --postprocess add step
    models and an ensemble (NAME_ensemble, or --ensemble-name) that clients send raw data to.
    Exits with status 1 and an "Error:" line (nothing written) when the checkpoint is missing or
    fails verification, a name is invalid, an option value cannot be used, a graph spec cannot be
    served, or a step cannot be resolved or does not fit the module's tensors.
    """
    from aitune_triton.triton.exporter import KEEP_ROUTER, LEAVE_OUT_NAME
    from aitune_triton.triton.exporter import export as export_checkpoint

    import sys

    if "" not in sys.path and "." not in sys.path:  # MODULE:FUNCTION from the current directory, as `python -m` finds it
        sys.path.insert(0, "")
    try:
        options = _export_options(
            instance_count, instance_kind, gpus, instance_groups, intra_op_threads, max_queue_delay_microseconds,
            preferred_batch_size, preserve_ordering, priority_levels, default_priority_level, queue_timeout_action,
            queue_timeout_microseconds, allow_timeout_override, max_queue_size, version_policy, parameters,
            response_cache, warmup, tensorrt_cuda_graphs, tensorrt_profiles, entry_instance_count,
        )
        if dry_run:
            plan = export_checkpoint(checkpoint, repository, name=name, options=options, dry_run=True, target=target,
                                     preprocess=preprocess, postprocess=postprocess, ensemble_name=ensemble_name,
                                     router=router, version=version)
        else:
            result = export_checkpoint(checkpoint, repository, name=name, options=options, show_progress=not quiet,
                                       target=target, preprocess=preprocess, postprocess=postprocess,
                                       ensemble_name=ensemble_name, router=router, version=version)
    except AITuneTritonError as error:
        message = str(error).replace(LEAVE_OUT_NAME, "Drop --name.").replace(KEEP_ROUTER, "Drop --no-router.")
        raise click.ClickException(message) from error
    if dry_run:
        console.print(plan.tree(), markup=False)
        for planned in plan.models:
            console.print(f"\n# {planned.name}/config.pbtxt\n{planned.config_text}", markup=False)
        return
    table = Table(title=f"Exported to {result.repository}")
    table.add_column("model")
    table.add_column("version", justify="right")
    native = target == "native"
    if native:
        table.add_column("served by")
    for model, version in result.versions.items():
        role = ("  (entry)" if model in result.entry_models.values() else "  (ensemble)" if model == result.ensemble_model
                else "  (step)" if model in result.step_models else "")
        row = [model + role, str(version)]
        table.add_row(*row, *([result.targets.get(model, "python")] if native else []))
    console.print(table)
    for model, reason in result.python_reasons.items():
        console.print(f"{model} stays a Python-backend model: {reason}", markup=False)


def _ints(option: str, text: str) -> tuple[int, ...]:
    from aitune_triton.errors import InvalidOptionError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidOptionError(f"{option}: expected comma-separated integers, got {text!r}.") from None


def _export_options(instance_count: int | None, instance_kind: str, gpus: str | None, instance_groups: tuple[str, ...],
                    intra_op_threads: str, max_queue_delay_microseconds: int, preferred_batch_size: tuple[int, ...],
                    preserve_ordering: bool, priority_levels: int, default_priority_level: int,
                    queue_timeout_action: str | None, queue_timeout_microseconds: int | None,
                    allow_timeout_override: bool, max_queue_size: int | None, version_policy: str,
                    parameters: tuple[str, ...], response_cache: bool, warmup: bool, tensorrt_cuda_graphs: bool,
                    tensorrt_profiles: tuple[int, ...], entry_instance_count: int) -> Any:
    """The export flags as one :class:`TritonModelOptions` (the typed options validate every value)."""
    from aitune_triton.errors import InvalidOptionError
    from aitune_triton.triton.config import TritonModelOptions
    from aitune_triton.triton.options import (
        DynamicBatching, InstanceGroup, QueuePolicy, TensorRTOptimization, VersionPolicy,
    )

    groups = {}
    for text in instance_groups:
        graph, equals, spec = text.partition("=")
        parts = spec.split(":")
        if not equals or not graph or len(parts) not in (2, 3):
            raise InvalidOptionError(f"--instance-group: expected GRAPH=KIND:COUNT[:GPUS] (graph_1=cpu:2), got {text!r}.")
        try:
            count = int(parts[1])
        except ValueError:
            raise InvalidOptionError(f"--instance-group: expected an integer COUNT in GRAPH=KIND:COUNT, got {text!r}.") from None
        groups[graph] = InstanceGroup(parts[0], count, _ints("--instance-group", parts[2]) if len(parts) == 3 else ())
    free = {}
    for text in parameters:
        key, equals, value = text.partition("=")
        if not equals or not key:
            raise InvalidOptionError(f"--parameter: expected KEY=VALUE, got {text!r}.")
        free[key] = value
    threads: int | str | None
    if intra_op_threads == "auto":
        threads = None
    elif intra_op_threads == "measured":
        threads = intra_op_threads
    else:
        try:
            threads = int(intra_op_threads)
        except ValueError:
            raise InvalidOptionError(
                f"--intra-op-threads: expected an integer >= 1, 'auto' or 'measured', got {intra_op_threads!r}."
            ) from None
    queue_flags = (queue_timeout_action, queue_timeout_microseconds, max_queue_size)
    queue = None
    if any(flag is not None for flag in queue_flags) or allow_timeout_override:
        queue = QueuePolicy(queue_timeout_action or "REJECT", queue_timeout_microseconds or 0, allow_timeout_override,
                            max_queue_size or 0)
    return TritonModelOptions(
        instance_count=instance_count,
        instance_kind=instance_kind,
        entry_instance_count=entry_instance_count,
        dynamic_batching=DynamicBatching(preferred_batch_size, max_queue_delay_microseconds, preserve_ordering,
                                         priority_levels, default_priority_level, queue),
        instance_groups=groups,
        intra_op_threads=threads,
        version_policy=VersionPolicy.parse(version_policy),
        parameters=free,
        response_cache=response_cache,
        warmup=warmup,
        tensorrt=TensorRTOptimization(tensorrt_cuda_graphs, tensorrt_profiles),
        gpus=_ints("--gpus", gpus) if gpus else (),
    )


@main.command()
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
def serve(repository: Path, http_port: int | None, grpc_port: int | None, metrics_port: int | None, host: str,
          tritonserver: Path | None, log_file: Path | None, quiet_log: bool, timeout_s: float) -> None:
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
                                  timeout_s=timeout_s, host=host)
        for warning in caught:
            click.echo(f"Warning: {warning.message}", err=True)
        server.start()
    except KeyboardInterrupt:
        raise click.Abort() from None
    except AITuneTritonError as error:
        raise _fail(error) from error
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


@main.command()
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--load", is_flag=True, help="Also load every model in an embedded tritonserver and report READY or "
              "the server's reason.")
@click.option("--timeout-s", default=180.0, show_default=True, type=float,
              help="With --load: seconds to wait for the server and for each model load.")
def check(repository: Path, load: bool, timeout_s: float) -> None:
    """Check REPOSITORY before serving it: every config.pbtxt against the ModelConfig schema, each
    version's files against its manifest.json (missing, extra, SHA-256), config tensors against the
    manifest's IO mapping, artifacts against this machine (GPU, TensorRT), entry model routes
    against the graph model versions present.

    Prints a table per model (OK / WARN / ERROR); exits with status 1 when any finding is an ERROR.
    """
    from aitune_triton.triton.check import check_repository, report_tables

    try:
        report = check_repository(repository, load=load, timeout_s=timeout_s, show_progress=load)
    except AITuneTritonError as error:
        raise _fail(error) from error
    for table in report_tables(report):
        console.print(table)
    errors = sum(1 for _ in report.findings("ERROR"))
    if errors:
        raise click.ClickException(f"{errors} error(s) in {report.repository}.")
    console.print(f"{report.repository}: no errors ({sum(1 for _ in report.findings('WARN'))} warning(s)).")


@main.command("analyze-config")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output_dir", default=None, type=click.Path(path_type=Path),
              help="Directory to write one ENTRY_MODEL.model_analyzer.yaml per entry model into.")
def analyze_config(repository: Path, output_dir: Path | None) -> None:
    """Write Triton Model Analyzer configs for REPOSITORY's entry models and print the equivalent
    perf_analyzer command lines (input shapes: the largest recorded; BLS composing models: the
    graph models each entry model routes to).
    """
    from aitune_triton.triton.analyze import analyze_config as analyze

    try:
        configs = analyze(repository, output_dir)
    except AITuneTritonError as error:
        raise _fail(error) from error
    for config in configs:
        where = f" -> {config.path}" if config.path else ""
        console.print(f"# {config.entry_model} (shapes of {config.graph_model}){where}", markup=False)
        if config.path is None:
            console.print(config.yaml(), markup=False)
        console.print(config.perf_analyzer_command, markup=False)


def _left_out(signature: list[dict], description: str) -> str:
    """The forward parameters a graph spec's calls did not pass (or passed at their default), as
    ``name=default``: a call matches the graph spec only when it leaves them out too."""
    from aitune_triton.graph_diff import describe_leaves

    passed = {path.split(".", 1)[0] for path in describe_leaves(description)}
    left = [
        f"{p['name']}={p.get('default_json') or '...'}" if p.get("has_default") else p["name"]
        for p in signature
        if p["name"] not in passed and p["kind"] not in ("VAR_POSITIONAL", "VAR_KEYWORD")
    ]
    return ", ".join(left) or "-"


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
def inspect(checkpoint: Path) -> None:
    """Show the graph specs, chosen backends and library versions of CHECKPOINT: per graph spec
    every tensor argument (dtype, shape range), every constant argument, and the forward
    parameters its calls left out (a call must pass the same arguments and constants to match;
    GraphSpecMismatchError names what differs).

    A checkpoint of several wrapped submodules shows one table per submodule, titled with its
    attribute path. Exits with status 1 and an "Error:" line when CHECKPOINT is missing or fails
    verification.
    """
    from aitune_triton.checkpoint import read_checkpoint_modules

    try:
        manifest, modules = read_checkpoint_modules(checkpoint)
    except AITuneTritonError as error:
        raise _fail(error) from error
    for stored in modules:
        module = stored.description
        where = f"{stored.path}: " if stored.path else ""
        table = Table(title=f"{where}{module.name} ({module.module_class})")
        for column in ("graph spec", "inputs", "constants", "left out", "backend", "max batch"):
            table.add_column(column)
        for entry in module.graphs:
            graph = entry.graph
            inputs = ", ".join(f"{t.path} {t.dtype} {list(t.min_shape)}..{list(t.max_shape)}" for t in graph.inputs)
            constants = ", ".join(f"{path}={value}" for path, value in graph.constants.items()) or "-"
            batch = graph.batch_size_range
            table.add_row(graph.name, inputs, constants, _left_out(module.signature, graph.description),
                          entry.backend.name, str(batch.max) if batch else "-")
        console.print(table)
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v))


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the stored reports as JSON instead of tables.")
def describe(checkpoint: Path, as_json: bool) -> None:
    """Print the tuning report stored in CHECKPOINT: per graph spec, every candidate's precision,
    build time, max abs diff (or accuracy), latencies, throughput, and why it was chosen or not.

    Exits with status 1 and an "Error:" line when CHECKPOINT is missing or fails verification.
    """
    import json

    from aitune_triton.checkpoint import read_checkpoint_modules
    from aitune_triton.strategies.report import report_table

    try:
        _, modules = read_checkpoint_modules(checkpoint)
    except AITuneTritonError as error:
        raise _fail(error) from error
    found: list[dict] = []
    for stored in modules:
        module = stored.description
        where = f"{stored.path}: " if stored.path else ""
        for entry in module.graphs:
            report = entry.tune_report()
            if report is None:
                note = f"{where}'{module.name}' {entry.name}: no tuning report stored"
                if as_json:  # stdout holds the JSON alone, so it parses
                    click.echo(note, err=True)
                else:
                    console.print(note, markup=False)
                continue
            found.append({"path": stored.path, "module": module.name, "report": report.to_dict()})
            if not as_json:
                console.print(report_table(report, title=f"{where}'{module.name}' {report.graph}: {report.strategy}"))
    if as_json:
        click.echo(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
