"""``check_repository``: find what would make Triton refuse (or misserve) a model repository, before it runs.

For every model directory of the repository:

* ``config.pbtxt`` parses against the ModelConfig schema and names its directory (Triton's model
  repository docs: the configuration's name, when given, must match the directory);
* each version's ``manifest.json`` matches its files: a listed file missing, a file whose
  SHA-256 differs (modified after export), a file the manifest does not list;
* the latest version's manifest IO mapping (names, dtypes, dims, ``max_batch_size``) matches
  ``config.pbtxt`` (Triton serves a configuration against the latest version's files);
* the artifact fits this machine: tuned on a GPU of another compute capability, or a TensorRT
  plan for another TensorRT version, is an error; a CUDA model (or KIND_GPU instances) on a
  machine without CUDA is a warning; an AOTInductor package of another torch version is a warning;
* an entry model's routes point at graph model versions that exist and whose ``io.json`` is the
  IO mapping the routes hold.

With ``load=True`` an embedded ``tritonserver`` (model control mode explicit, nothing loaded at
start) loads each model, graph models first, and reports READY or the server's own reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.served.routes import ROUTES_PARAMETER, Routes, RoutesError
from aitune_triton.triton.check_report import ERROR, OK, WARN, CheckReport, Finding, ModelCheck, report_tables
from aitune_triton.triton.config import read_model_config
from aitune_triton.triton.validation import (
    Validation,
    process_tree_peak_rss_bytes,
    repository_fingerprint,
    write_validation,
)
from aitune_triton.triton.repository_layout import checkpoint_error, is_checkpoint, is_model_dir
from aitune_triton.triton.manifest import (
    MANIFEST_FILE,
    ManifestError,
    ModelKind,
    ModelManifest,
    TensorManifest,
    latest_version,
    model_kind,
    read_manifest,
    tensors_of,
    tensorrt_version,
    version_files,
)

__all__ = ["OK", "WARN", "ERROR", "CheckReport", "Finding", "ModelCheck", "check_repository", "report_tables"]

def _bindings(backend: str) -> tuple[bool, bool]:
    """``(gpu_architecture_bound, torch_version_bound)`` as the backend class declares them.

    A backend not registered in this installation (written by a newer aitune_triton, say) counts
    as bound to its GPU architecture, so a mismatch is an error rather than a silent pass.
    """
    from aitune_triton.backends import get_backend_class
    from aitune_triton.errors import UnknownBackendError

    try:
        backend_class = get_backend_class(backend)
    except UnknownBackendError:
        return True, False
    return backend_class.gpu_architecture_bound, backend_class.torch_version_bound


def _tensors_problems(side: str, expected: list[TensorManifest], actual: list[TensorManifest]) -> list[str]:
    problems = []
    declared = {t.name: t for t in actual}
    listed = {t.name: t for t in expected}
    for name in sorted(set(listed) - set(declared)):
        problems.append(f"{side} {name!r} is in the manifest's IO mapping but not in config.pbtxt")
    for name in sorted(set(declared) - set(listed)):
        problems.append(f"{side} {name!r} is in config.pbtxt but not in the manifest's IO mapping")
    for name in sorted(set(listed) & set(declared)):
        want, have = listed[name], declared[name]
        if want.data_type != have.data_type:
            problems.append(f"{side} {name!r}: config.pbtxt says {have.data_type}, the manifest {want.data_type}")
        if want.dims != have.dims:
            problems.append(f"{side} {name!r}: config.pbtxt dims {list(have.dims)}, the manifest {list(want.dims)}")
    return problems


def _check_files(check: ModelCheck, version_dir: Path, manifest: ModelManifest, version: int) -> None:
    from aitune_triton._versions import sha256_file

    present = set(version_files(version_dir))
    for name, expected in sorted(manifest.sha256.items()):
        path = version_dir / name
        if not path.is_file():
            check.add(ERROR, f"{name}: listed in manifest.json but missing; export the model again.", version)
            continue
        actual = sha256_file(path)
        if actual != expected:
            check.add(ERROR, f"{name}: SHA-256 mismatch, manifest {expected[:12]}..., file {actual[:12]}...; the file "
                             "was modified or corrupted after export. Export the model again.", version)
    for name in sorted(present - set(manifest.sha256)):
        check.add(WARN, f"{name}: not listed in manifest.json (added after export?); remove it or export again.", version)


def _check_environment(check: ModelCheck, manifest: ModelManifest, version: int, platform: str = "") -> None:
    """Artifacts against this machine; ``platform`` is the config's (``tensorrt_plan`` for a TensorRT plan)."""
    import torch

    device = manifest.device
    backend = manifest.backend or ""
    architecture_bound, torch_bound = _bindings(backend) if backend else (False, False)
    if device.is_cuda:
        tuned = f"tuned on {device.device}" + (f" ({device.gpu_name}, compute capability {device.compute_capability})"
                                              if device.gpu_name else "")
        if not torch.cuda.is_available():
            check.add(WARN, f"{tuned}, but this machine has no CUDA: a server here cannot run it (or runs it on a "
                            "KIND_GPU instance it cannot create). Serve it on a machine like the one it was tuned on.",
                      version)
        else:
            major, minor = torch.cuda.get_device_capability(0)
            here = f"{major}.{minor}"
            if device.compute_capability and device.compute_capability != here:
                severity = ERROR if architecture_bound else WARN
                check.add(severity, f"{tuned}; this machine's GPU ({torch.cuda.get_device_name(0)}) has compute "
                                    f"capability {here}. {backend} artifacts hold kernels for the GPU they were built "
                                    "on: tune again on this GPU.", version)
            if device.cuda_version and torch.version.cuda and device.cuda_version.split(".")[0] != torch.version.cuda.split(".")[0]:
                check.add(WARN, f"tuned with CUDA {device.cuda_version}; torch here uses CUDA {torch.version.cuda}.", version)
    if platform == "tensorrt_plan" and device.tensorrt_version:
        installed = tensorrt_version()
        if installed != device.tensorrt_version:
            check.add(ERROR, f"TensorRT plan built with TensorRT {device.tensorrt_version}; this machine has "
                             f"{installed or 'no TensorRT'}. A plan runs only on the TensorRT version that built it: "
                             "tune again here.", version)
    if torch_bound:
        built = device.torch_version or manifest.versions.get("torch")
        if built and built != torch.__version__:
            check.add(WARN, f"{backend} package built with torch {built}; torch here is {torch.__version__}. "
                            "AOTInductor packages may not load in another torch version: tune again.", version)


def _check_routes(check: ModelCheck, repository: Path, config: Any) -> None:
    try:
        routes = Routes.from_json(config.parameters[ROUTES_PARAMETER].string_value)
    except RoutesError as error:
        check.add(ERROR, f"config.pbtxt: parameter {ROUTES_PARAMETER!r} is not the routes JSON ({error}); export again.")
        return
    for route in routes.graphs:
        name, version = route.model_name, route.version
        version_dir = repository / name / str(version)
        if not (repository / name).is_dir():
            check.add(ERROR, f"routes: graph model {name!r} does not exist in the repository; export the module again.")
            continue
        if not version_dir.is_dir():
            check.add(ERROR, f"routes: graph model {name!r} has no version {version} (the routes pin it); "
                             "export the module again.")
            continue
        try:
            io = json.loads((version_dir / "io.json").read_text())
        except (OSError, ValueError) as error:
            check.add(ERROR, f"routes: {name}/{version}/io.json cannot be read ({error}); export the module again.")
            continue
        if io != route.io:
            check.add(ERROR, f"routes: the IO mapping for {name!r} version {version} differs from its io.json; "
                             "export the module again.")
        latest = latest_version(repository / name)
        if latest != version:
            check.add(WARN, f"routes pin {name!r} version {version}, but its latest version is {latest} (the one "
                            "its config serves); export the module again.")


def _check_ensemble(check: ModelCheck, repository: Path, config: Any) -> None:
    """Each model an ensemble calls exists with the version it pins (-1: the latest)."""
    for step in config.ensemble_scheduling.step:
        name, version = step.model_name, step.model_version
        if not (repository / name).is_dir():
            check.add(ERROR, f"ensemble: step model {name!r} does not exist in the repository; export again.")
        elif version != -1 and not (repository / name / str(version)).is_dir():
            check.add(ERROR, f"ensemble: step model {name!r} has no version {version} (the ensemble pins it); export again.")
        elif version != -1 and version not in (served := _served_versions(repository / name)):
            check.add(ERROR, f"ensemble pins {name!r} version {version}, but that model's version_policy serves "
                             f"only {sorted(served)}, so Triton fails to load the ensemble. Export the ensemble again "
                             "(an export pins the newest versions), or export the module with a version policy "
                             "that keeps the pinned one (version_policy=VersionPolicy(all=True), --version-policy all).")


def _served_versions(model_dir: Path) -> set[int]:
    """The versions of ``model_dir`` its config's ``version_policy`` serves (Triton's default: the latest one)."""
    present = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    try:
        policy = read_model_config(model_dir / "config.pbtxt").version_policy
    except (OSError, text_format.ParseError):
        return set(present[-1:])
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(present) & set(policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" else 1
    return set(present[-max(count, 1):])


def _check_warmup(check: ModelCheck, model_dir: Path, config: Any) -> None:
    """Each ``model_warmup`` input file exists under ``warmup/`` with the byte size its dims and
    data type give; Triton fails the whole model load otherwise (model configuration docs, "Model
    Warmup": ``input_data_file`` is read from the model directory's ``warmup/`` folder)."""
    import numpy as np
    from tritonclient.utils import triton_to_np_dtype

    for warmup in config.model_warmup:
        for name, tensor in warmup.inputs.items():
            if tensor.WhichOneof("input_data_type") != "input_data_file":
                continue
            path = model_dir / "warmup" / tensor.input_data_file
            label = f"model_warmup {warmup.name!r}: input {name!r}"
            if not path.is_file():
                check.add(ERROR, f"{label}: {path.relative_to(model_dir)} is missing; Triton fails the load without it. "
                                 "Export the model again.")
                continue
            type_name = mc.DataType.Name(tensor.data_type)[len("TYPE_"):]
            if type_name == "STRING":
                continue
            item_bytes = 2 if type_name == "BF16" else np.dtype(triton_to_np_dtype(type_name)).itemsize
            expected = item_bytes * int(np.prod(list(tensor.dims), dtype=np.int64))
            if path.stat().st_size != expected:
                check.add(ERROR, f"{label}: {path.relative_to(model_dir)} holds {path.stat().st_size} bytes, dims "
                                 f"{list(tensor.dims)} of {type_name} need {expected}. Export the model again.")


def _check_model(repository: Path, model_dir: Path) -> ModelCheck:
    check = ModelCheck(model_dir.name, model_kind(model_dir))
    config = None
    config_path = model_dir / "config.pbtxt"
    if not is_model_dir(model_dir) and not any(p.is_dir() and p.name.isdigit() for p in model_dir.iterdir()):
        check.add(ERROR, "not a model directory (no config.pbtxt, no version directory): Triton fails to start on a "
                         "repository holding it. Move it out of the model repository.")
        return check
    if not config_path.is_file():
        check.add(ERROR, "config.pbtxt: missing; Triton needs one per model (the server runs with "
                         "--disable-auto-complete-config). Export the model again.")
    else:
        try:
            config = read_model_config(config_path)
        except text_format.ParseError as error:
            check.add(ERROR, f"config.pbtxt: does not parse against the ModelConfig schema: {error}. Export again.")
        else:
            if config.name and config.name != model_dir.name:
                check.add(ERROR, f"config.pbtxt: name {config.name!r} differs from the directory name "
                                 f"{model_dir.name!r}; Triton requires them equal.")
            _check_warmup(check, model_dir, config)
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        check.add(ERROR, "no version directory (1/, 2/...); Triton has nothing to load. Export the model again.")
        return check
    latest_manifest = None
    for version in versions:
        version_dir = model_dir / str(version)
        if not (version_dir / MANIFEST_FILE).exists():
            check.add(WARN, "no manifest.json: not exported by aitune_triton; its files cannot be verified.", version)
            continue
        try:
            manifest = read_manifest(version_dir)
        except ManifestError as error:
            check.add(ERROR, str(error), version)
            continue
        if manifest.model != model_dir.name:
            check.add(WARN, f"manifest.json describes model {manifest.model!r}, not {model_dir.name!r} (renamed?).", version)
        _check_files(check, version_dir, manifest, version)
        if version == versions[-1]:
            latest_manifest = manifest
    if latest_manifest is not None and latest_manifest.format_version >= 1:
        if config is not None:
            inputs, outputs = tensors_of(config)
            problems = _tensors_problems("input", latest_manifest.inputs, inputs)
            problems += _tensors_problems("output", latest_manifest.outputs, outputs)
            if config.max_batch_size != latest_manifest.max_batch_size:
                problems.append(f"max_batch_size: config.pbtxt {config.max_batch_size}, the manifest "
                                f"{latest_manifest.max_batch_size}")
            for problem in problems:
                check.add(ERROR, f"config.pbtxt: {problem}; the served model.py expects the manifest's. Export again.",
                          versions[-1])
        _check_environment(check, latest_manifest, versions[-1], config.platform if config is not None else "")
    if config is not None and any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
        import torch

        if not torch.cuda.is_available() and not (latest_manifest is not None and latest_manifest.device.is_cuda):
            check.add(WARN, "config.pbtxt: KIND_GPU instances, but this machine has no CUDA: a server here cannot "
                            "create them. Export with --instance-kind cpu to serve it here.")
    if config is not None and ROUTES_PARAMETER in config.parameters:
        _check_routes(check, repository, config)
    if config is not None and config.platform == "ensemble":
        _check_ensemble(check, repository, config)
    return check


def _load_models(repository: Path, checks: list[ModelCheck], timeout_s: float, show_progress: bool) -> Validation | None:
    """Load each model in an embedded server; add READY or the server's reason to its check.

    Returns what was measured (server version, load time, peak memory) when every model is READY.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from aitune_triton.triton.server import TritonServer

    server = TritonServer(repository, extra_args=["--model-control-mode=explicit"], restart_dead_stubs=False,
                          show_progress=show_progress, timeout_s=timeout_s)
    order = {ModelKind.GRAPH: 0, ModelKind.STEP: 1, None: 2, ModelKind.ENTRY: 3, ModelKind.ENSEMBLE: 4}
    started = time.monotonic()
    with server:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=timeout_s, connection_timeout=timeout_s)
        try:
            for check in sorted(checks, key=lambda c: (order.get(c.kind, 2), c.name)):
                try:
                    client.load_model(check.name)
                except InferenceServerException as error:
                    # The server's reason; a Python-backend traceback ("At: ...") is left in the log.
                    reason = str(error.message()).split("\n\nAt:\n", 1)[0].strip()
                    check.add(ERROR, f"load: the server refused it: {reason}")
                    continue
                if client.is_model_ready(check.name):
                    check.add(OK, "load: READY")
                else:
                    check.add(ERROR, "load: loaded but not ready; see the server log.")
            if any(check.status == ERROR for check in checks):
                return None
            load_time_s = time.monotonic() - started
            version = str(client.get_server_metadata().get("version", ""))
            peak = process_tree_peak_rss_bytes(server.pid) if server.pid is not None else None
            return Validation(version, round(load_time_s, 3), peak, tuple(sorted(c.name for c in checks)),
                              repository_fingerprint(repository))
        finally:
            client.close()


def check_repository(
    path: str | Path, load: bool = False, timeout_s: float = 180.0, show_progress: bool = False
) -> CheckReport:
    """Check every model of a model repository against its manifests, the schema and this machine.

    Args:
        path: The model repository directory.
        load: Also load each model in an embedded ``tritonserver`` (CPU, Python backend) and
            report READY or the server's reason.
        timeout_s: With ``load``: seconds to wait for the server to start and for each load.
        show_progress: With ``load``: print the server's start progress to stderr.

    Returns:
        The :class:`CheckReport`; ``report.ok`` is False when any finding is an ERROR. A model
        whose files pass gets an ``OK`` finding, and with ``load`` a ``load: READY`` (OK) or
        ``load: the server refused it: <the server's reason>`` (ERROR) one. With ``load``, when no
        finding is an ERROR, the server version, load time and peak memory are recorded in the
        repository's hidden ``.aitune_triton-validation.json`` (:mod:`aitune_triton.triton.validation`),
        which the deployment targets size their files from.

    Raises:
        InvalidArgumentError: ``path`` is not a directory, is a checkpoint (the message says to
            export it first), or holds no model directory.
        TritonServerError: with ``load``, the server could not start.
    """
    repository = Path(path).absolute()
    if not repository.is_dir():
        raise InvalidArgumentError(f"path: {repository} is not a directory; pass a model repository directory.")
    if is_checkpoint(repository):
        raise checkpoint_error(repository, "path")
    model_dirs = sorted(p for p in repository.iterdir() if p.is_dir())
    if not model_dirs:
        raise InvalidArgumentError(f"path: {repository} holds no model directory; export a model into it first.")
    checks = [_check_model(repository, model_dir) for model_dir in model_dirs]
    for check in checks:
        if not check.findings:
            check.add(OK, "files, config.pbtxt and manifest agree" if check.kind else "config.pbtxt parses")
    if load:
        validation = _load_models(repository, checks, timeout_s, show_progress)
        if validation is not None and validation.server_version:
            write_validation(repository, validation)
    return CheckReport(repository, checks, loaded=load)
