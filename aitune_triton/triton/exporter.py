"""Export a tuned module (or its checkpoint) to a Triton model repository.

Every tuned graph spec becomes a Python-backend *graph model* named ``<name>.<graph>``
(``minilm.graph_0``) that runs the graph's artifact; the module as a whole gets an *entry model*
named ``<name>``: a BLS router in front of the graph models, whose configuration also carries
every graph model's IO mapping for :class:`~aitune_triton.triton.client.RemoteModule`. A
checkpoint of several wrapped submodules (a model or pipeline saved with
:func:`aitune_triton.save`) gives each submodule its own entry and graph models, named after its
stored Module name::

    model_repository/
      minilm/                      entry model (router)
        config.pbtxt
        1/model.py  1/manifest.json
      minilm.graph_0/              graph model
        config.pbtxt
        1/model.py  1/io.json  1/model.pt2  1/manifest.json
        1/aitune_triton_served/      what model.py runs (a copy of the aitune_triton.served package)

Each generated ``model.py`` is a short shim: it names what to run (the runtime, the artifact, the
backend's options), checks the copy of :mod:`aitune_triton.served` beside it against
``manifest.json`` and delegates to it, so a served model needs no aitune_triton install.

A module with one graph spec exported with ``target="python"`` (``router=None``, the default, or
``router=False``) is ONE model named ``<name>``: the graph model itself (it checks its own input
contract), with the entry model's routes parameter, so a raw client calls it without a BLS hop
and RemoteModule reads it as it reads a router. ``router=True`` keeps the router layout above.

With ``target="native"`` (:class:`~aitune_triton.triton.native.ExportTarget`), a graph model whose
backend declares a Triton backend of its own (``Backend.triton_native``) is a model of that backend
instead (``platform: "onnxruntime_onnx"`` + ``model.onnx``, ``platform: "torch_aoti"`` +
``model.pt2``), with the artifact's own tensor names; see :mod:`aitune_triton.triton.native`.

Writes never overwrite: each export adds a new version directory to each model (``2/``, ``3/``...)
and replaces ``config.pbtxt`` atomically. Everything is built in a temporary directory next to
the repository first and renamed into place, graph models before the entry model, so a failed
export leaves no half-written model directory (a killed export's staging directory, named with its
pid, is removed by the next export or save next to it). The entry model pins the graph model
versions it was exported with.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import jinja2

from aitune_triton import served
from aitune_triton._atomic import make_staging_dir
from aitune_triton._progress import progress
from aitune_triton._versions import aitune_version
from aitune_triton.backends import backend_names, get_backend_class
from aitune_triton.checkpoint import read_checkpoint_modules
from aitune_triton.errors import ExportError, InvalidArgumentError, InvalidOptionError, UnknownBackendError
from aitune_triton.module.description import BackendDescription, GraphDescription, TunedDescription
from aitune_triton.module.persistence import check_artifact_kinds
from aitune_triton.module.wrapper import Module
from aitune_triton.names import validate_model_name
from aitune_triton.strategies.layout import LayoutReport
from aitune_triton.triton.repository_layout import refuse_non_repository
from aitune_triton.triton.config import (
    ROUTES_PARAMETER,
    TritonModelOptions,
    graph_model_config,
    router_model_config,
    set_routes_parameter,
    write_model_config,
)
from aitune_triton.triton.dry_run import ExportPlan, build_plan
from aitune_triton.triton.ensemble import Stage, ensemble_model_config, step_model_config
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.manifest import build_manifest, refuse_kind_collision
from aitune_triton.triton.native import ExportTarget, plan_native
from aitune_triton.triton.options import check_int
from aitune_triton.triton.warmup import WARMUP_DIR, export_warmup
from aitune_triton.triton.steps import Step, resolve_step

__all__ = ["ExportPlan", "ExportResult", "export", "exportable_backends", "templates_dir"]

#: Directory of the copy of :mod:`aitune_triton.served` beside each generated ``model.py`` (the
#: served environment may not have aitune_triton installed).
PACKAGE_DIR = served.PACKAGE_DIR

#: File of an entry model version's own routes (the graph model versions it was exported with): all
#: versions of a model share one config.pbtxt, whose routes parameter is the newest export's.
ROUTES_FILE = "routes.json"


def served_files() -> dict[str, str]:
    """The files of :mod:`aitune_triton.served` as they are copied into a version directory:
    ``aitune_triton_served/<path>`` -> source text, every ``.py`` file of the package."""
    root = Path(served.__file__).resolve().parent
    return {f"{PACKAGE_DIR}/{path.relative_to(root).as_posix()}": path.read_text()
            for path in sorted(root.rglob("*.py")) if "__pycache__" not in path.parts}


#: What an error about ``name`` for a checkpoint of several modules says to do; the command line
#: says to drop ``--name`` instead.
LEAVE_OUT_NAME = "Pass name=None."
#: What an error about ``router=False`` says to do; the command line says it with its options.
KEEP_ROUTER = "Pass router=None or True."


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        repository: The model repository.
        entry_models: Attribute path of each exported module in the saved object (``""`` for a
            Module exported on its own) -> name of its entry model (a router, or the module's one
            graph model exported without a router); pass that name to RemoteModule.
        graph_models: Names of the models that run a graph spec, of every module (a module
            exported without a router: its entry model).
        versions: Model name -> version directory written.
        targets: Graph model name -> ``"native"`` (served by a Triton backend of its own) or
            ``"python"`` (a generated Python-backend model).
        python_reasons: Graph model name -> why it stayed a Python-backend model in a native export.
        ensemble_model: Name of the ensemble model (pre/post steps around the entry model), or None.
        step_models: Names of the step models (preprocess first).
    """

    repository: Path
    entry_models: dict[str, str]
    graph_models: list[str]
    versions: dict[str, int]
    targets: dict[str, str] = field(default_factory=dict)
    python_reasons: dict[str, str] = field(default_factory=dict)
    ensemble_model: str | None = None
    step_models: list[str] = field(default_factory=list)

    @property
    def entry_model(self) -> str:
        """The entry model's name, for an export of one module.

        Raises:
            ExportError: the export wrote several modules (read :attr:`entry_models`).
        """
        if len(self.entry_models) != 1:
            raise ExportError(
                f"entry_model: this export wrote {len(self.entry_models)} entry models, one per wrapped submodule: "
                f"{self.entry_models}. Use entry_models[attribute path]."
            )
        return next(iter(self.entry_models.values()))


def exportable_backends() -> list[str]:
    """Registered backends whose artifact a generated Python-backend model can serve, sorted."""
    return [name for name in backend_names() if get_backend_class(name).triton_runtime is not None]


def _triton_runtime(backend: str) -> str | None:
    """The served runtime module of ``backend`` (``aitune_triton/served/runtimes/<name>.py``; None: nothing Triton can load)."""
    try:
        return get_backend_class(backend).triton_runtime
    except UnknownBackendError:
        return None


def templates_dir() -> Path:
    """Directory of the jinja2 templates: inside the installed package, else the source tree's ``templates/``.

    Raises:
        ExportError: neither exists (a broken installation).
    """
    packaged = Path(__file__).resolve().parents[1] / "templates"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[2] / "templates"
    if source.is_dir():
        return source
    raise ExportError(f"templates: found neither {packaged} nor {source}; the installation is incomplete.")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _descriptions(module_or_checkpoint: Module | str | os.PathLike) -> tuple[list[tuple[str, TunedDescription]], str]:
    """``(attribute path, module description)`` pairs to export, and where they come from."""
    if isinstance(module_or_checkpoint, Module):
        if module_or_checkpoint.state.name != "TUNED":
            raise ExportError(
                f"module: '{module_or_checkpoint.name}' is not tuned (state: {module_or_checkpoint.state.name}). "
                "Record calls and call tune() before exporting."
            )
        described = TunedDescription.from_dict(module_or_checkpoint.to_dict())
        return [("", described)], f"module '{module_or_checkpoint.name}'"
    if isinstance(module_or_checkpoint, (str, os.PathLike)):
        _, entries = read_checkpoint_modules(module_or_checkpoint)
        return [(e.path, e.description) for e in entries], f"checkpoint {Path(module_or_checkpoint).absolute()}"
    raise ExportError(
        f"module_or_checkpoint: expected a tuned aitune_triton.Module or a checkpoint directory, "
        f"got {type(module_or_checkpoint).__name__}"
    )


def _next_version(model_dir: Path, version: int | None = None) -> int:
    """``version`` when given (refused when that version directory exists), else the next free one."""
    if version is not None:
        if (model_dir / str(version)).exists():
            raise InvalidOptionError(
                f"version: expected a version that {model_dir.name} does not have yet, got {version} ({model_dir / str(version)} "
                "exists); versions are never overwritten. Pass another version, or none for the next one."
            )
        return version
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def _write_manifest(version_dir: Path, source: str, extra: dict[str, Any], **fields: Any) -> None:
    """Write ``version_dir/manifest.json`` (:mod:`aitune_triton.triton.manifest`); ``extra`` holds
    ``model``, ``version``, optionally ``kind`` (default ``"graph"``) and any fields of the kind's
    own (kept as top-level fields); ``fields`` go to
    :func:`~aitune_triton.triton.manifest.build_manifest` (``config``, ``backend``, ``graph``)."""
    own = {key: value for key, value in extra.items() if key not in ("model", "version", "kind")}
    build_manifest(
        version_dir, model=extra["model"], version=extra["version"], kind=extra.get("kind", "graph"), source=source,
        extra=own, **fields,
    ).write(version_dir)


@overload
def export(
    module_or_checkpoint: Module | str | os.PathLike, repository: str | os.PathLike, name: str | None = ...,
    options: TritonModelOptions | None = ..., show_progress: bool = ..., dry_run: Literal[False] = ...,
    target: ExportTarget | str = ..., preprocess: Step | str | None = ..., postprocess: Step | str | None = ...,
    ensemble_name: str | None = ..., router: bool | None = ..., version: int | None = ...,
) -> ExportResult: ...


@overload
def export(
    module_or_checkpoint: Module | str | os.PathLike, repository: str | os.PathLike, name: str | None = ...,
    options: TritonModelOptions | None = ..., show_progress: bool = ..., *, dry_run: Literal[True],
    target: ExportTarget | str = ..., preprocess: Step | str | None = ..., postprocess: Step | str | None = ...,
    ensemble_name: str | None = ..., router: bool | None = ..., version: int | None = ...,
) -> ExportPlan: ...


def export(
    module_or_checkpoint: Module | str | os.PathLike,
    repository: str | os.PathLike,
    name: str | None = None,
    options: TritonModelOptions | None = None,
    show_progress: bool = True,
    dry_run: bool = False,
    target: ExportTarget | str = ExportTarget.PYTHON,
    preprocess: Step | str | None = None,
    postprocess: Step | str | None = None,
    ensemble_name: str | None = None,
    router: bool | None = None,
    version: int | None = None,
) -> ExportResult | ExportPlan:
    """Write a tuned module as Triton models: one graph model per graph spec plus an entry model.

    A checkpoint of several wrapped submodules exports each of them that way, its entry model
    named after its stored Module name, all in one atomic export.

    Args:
        module_or_checkpoint: A ``TUNED`` :class:`~aitune_triton.Module` or a checkpoint directory
            written by :func:`aitune_triton.save` (of a Module, or of a model or pipeline holding
            wrapped submodules).
        repository: Model repository directory (created when missing).
        name: Entry model name; default the module's name. Graph models are ``<name>.<graph>``.
            Only for a checkpoint holding one module.
        options: Instance group and dynamic batching options.
        show_progress: Print progress lines to stderr.
        dry_run: Plan only: build every configuration and file in memory, write nothing (the
            repository is not even created) and return the :class:`ExportPlan`.
        target: ``"python"`` (:attr:`ExportTarget.PYTHON`): every graph model is a Python-backend
            model. ``"native"``: a graph spec whose backend declares a Triton backend of its own
            (``triton_native``: ONNX Runtime, AOTInductor) is served by it, with the artifact's
            tensor names; the others stay Python-backend models, with the reason in the progress
            lines, :attr:`ExportResult.python_reasons` and their manifest (see
            :mod:`aitune_triton.triton.native`).
        router: None (default): a module with one graph spec exported with ``target="python"``
            is ONE model named ``<name>``, the graph model itself (it checks its own input
            contract), which a raw client calls without a BLS hop; otherwise an entry (router)
            model in front of ``<name>.<graph>`` graph models. True: always the router. False:
            never (refused for several graph specs or ``target="native"``, whose native graph
            models check nothing themselves). The single model carries the same
            ``aitune_triton.routes`` parameter as an entry model, so RemoteModule works on both.
        preprocess: A :class:`~aitune_triton.triton.steps.Step` (or its ``"module:function"``) run
            before the module: its outputs must be exactly one graph spec's inputs (names, dtypes,
            ranks). Written as the Python-backend step model ``<name>.preprocess``; with it or
            ``postprocess``, an ensemble model wires step -> entry model -> step (see
            :mod:`aitune_triton.triton.ensemble`). Only for an export of one module.
        postprocess: A step run after the module, taking any of the module's outputs, the
            preprocess step's outputs and the ensemble's inputs by name; written as
            ``<name>.postprocess``.
        ensemble_name: Name of the ensemble model; default ``<name>_ensemble``. Needs a step.
        version: Version directory to write in every exported model (an integer >= 1 none of them
            has yet); None: each model's next version. A server started with
            ``--model-control-mode=poll`` picks a new version up by itself; with ``explicit`` (the
            :class:`~aitune_triton.triton.server.TritonServer` default) load the models again
            (``load_model``). Which versions are served is ``options.version_policy``.

    Returns:
        What was written (:class:`ExportResult`); with ``dry_run``, what would be
        (:class:`ExportPlan`).

    Raises:
        ExportError: the module is not tuned, a graph spec runs on a backend without an artifact
            (eager), a tensor dtype cannot be served, or the entry model cannot route between the
            graph specs. Nothing is written.
        CheckpointError: the checkpoint is missing or fails verification, or an artifact is not of the kind its
            backend builds (ArtifactKindError). Nothing is written.
        InvalidNameError: ``name`` is not a valid model name (``/``, leading ``.``...).
        InvalidArgumentError: ``target`` is not ``"python"`` or ``"native"``; ``router`` is not
            None/True/False, or is False for a module with several graph specs or with
            ``target="native"``; or a step reference cannot be resolved
            (:func:`~aitune_triton.triton.steps.resolve_step`).
        ExportError: a step's tensors do not fit the stage before it (the message names the
            tensor, both sides and what to do), steps are given for a checkpoint of several
            modules, or ``ensemble_name`` without a step.
        InvalidOptionError: (an ExportError) ``version`` is not an integer >= 1 or a model has it
            already, or ``options.instance_groups`` names no exported graph model.
        ExportError: also when ``repository`` is an existing file, a checkpoint, or a directory
            holding other entries than model directories, README and hidden files (``photos/``,
            ``notes.txt``: Triton would refuse to start; the message names them), when ``name`` is given for a
            checkpoint of several modules, when two exported modules would share a model name, or
            when a model name is taken in ``repository`` by a model of another kind (an entry
            model over a graph model, or over a model without an aitune_triton manifest).
    """
    target = ExportTarget.parse(target)
    if router is not None and not isinstance(router, bool):
        raise InvalidArgumentError(f"router: expected None (automatic), True or False, got {router!r}")
    entries, source = _descriptions(module_or_checkpoint)
    for _, described in entries:  # a replaced artifact fails here, not when Triton loads the model
        check_artifact_kinds(described)
    if name is not None and len(entries) > 1:
        raise ExportError(
            f"name: applies to an export of one module; {source} holds {len(entries)} wrapped submodules "
            f"({', '.join(repr(p) for p, _ in entries)}), exported under their stored names. {LEAVE_OUT_NAME}"
        )
    options = options or TritonModelOptions()
    if version is not None:
        check_int("version", version, 1, "Pass None for each model's next version.")
    repository = Path(repository).absolute()
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"repository: {repository} is a file; pass a directory (it is created when missing).")
    refuse_non_repository(repository)
    graph_models: list[_PlannedModel] = []
    entry_models: dict[str, _PlannedModel] = {}
    for path, description in entries:
        if name is not None:
            entry_name = validate_model_name(name, "name")
        else:
            entry_name = validate_model_name(description.name, f"module name at '{path}'" if path else "module name")
        planned = _plan(description, entry_name, options, repository, target, _use_router(description, target, router),
                        version)
        graph_models += planned[:-1]
        entry_models[path] = planned[-1]
    models = graph_models + list(entry_models.values())  # graph models first, the entry models last
    served = [m for m in models if m.backend is not None]  # models that run a graph spec (a direct entry model too)
    ensemble = _plan_steps(entries, entry_models, preprocess, postprocess, ensemble_name, options, repository, source,
                           version)
    models += ensemble  # steps, then the ensemble: published after the models it calls
    clashing = sorted(model for model, count in collections.Counter(m.name for m in models).items() if count > 1)
    if clashing:
        raise ExportError(f"{source}: two exported modules would both write the models {clashing}; rename one Module.")
    for model in models:
        refuse_kind_collision(repository, model.name, model.kind)
    pairs = [(m.name, m.graph.name) for m in served if m.graph is not None]
    unknown = options.unknown_groups(pairs)
    if unknown:
        raise InvalidOptionError(
            f"instance_groups: expected graph names or graph model names of this export "
            f"({', '.join(sorted({n for pair in pairs for n in pair}))}), got {unknown}. Fix the keys or drop them."
        )
    if dry_run:
        return build_plan(repository, source, models)
    title = ", ".join(m.name for m in entry_models.values())
    repository.mkdir(parents=True, exist_ok=True)
    # Staged next to the repository, never inside it: Triton refuses a repository holding a
    # directory that is not a model (a staging folder left by a killed export, say).
    staging = make_staging_dir(repository.parent)
    try:
        with progress(f"Exporting '{title}' to {repository}", enabled=show_progress) as log:
            for model in models:
                model.write(staging / model.name, source)
                log(f"{model.name}: version {model.version} ({model.summary})")
            for model in models:  # graph models first, the entry models last
                _publish(staging / model.name, repository / model.name, model.version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        repository,
        {path: model.name for path, model in entry_models.items()},
        [m.name for m in served],
        {m.name: m.version for m in models},
        {m.name: m.manifest["target"] for m in served},
        {m.name: m.manifest["reason"] for m in served if "reason" in m.manifest},
        ensemble_model=ensemble[-1].name if ensemble else None,
        step_models=[m.name for m in ensemble if m.kind == "step"],
    )


def _use_router(description: TunedDescription, target: ExportTarget, router: bool | None) -> bool:
    """Whether ``description`` gets an entry (router) model in front of its graph models.

    Raises:
        InvalidArgumentError: ``router`` is False where a router is needed.
    """
    graphs = len(description.graphs)
    if router is None:
        return graphs != 1 or target is not ExportTarget.PYTHON
    if not router and graphs != 1:
        raise InvalidArgumentError(
            f"router: False needs a module with one graph spec; '{description.name}' has {graphs}, which the entry "
            f"model routes between. {KEEP_ROUTER}"
        )
    if not router and target is not ExportTarget.PYTHON:
        raise InvalidArgumentError(
            "router: False needs target='python'; a native graph model does not check its input contract itself, so "
            f"the entry model in front of it does. {KEEP_ROUTER}"
        )
    return router


@dataclass
class _PlannedModel:
    name: str
    version: int
    config: Any
    files: dict[str, str]  # file name -> text
    artifact: Path | None
    summary: str
    kind: str = "graph"
    backend: BackendDescription | None = None  # a graph model's backend
    graph: GraphDescription | None = None  # a graph model's graph spec
    artifact_name: str | None = None  # file name in the version directory; default the artifact's own
    manifest: dict[str, Any] = field(default_factory=dict)  # more manifest.json fields
    warmup_files: dict[str, bytes] = field(default_factory=dict)  # file name under warmup/ -> raw input bytes

    def write(self, model_dir: Path, source: str) -> None:
        version_dir = model_dir / str(self.version)
        version_dir.mkdir(parents=True)
        for file_name, text in self.files.items():
            (version_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
            (version_dir / file_name).write_text(text)
        if self.artifact is not None:
            if not self.artifact.is_file():
                raise ExportError(f"{self.name}: artifact {self.artifact} does not exist (was the tuning cache cleared?).")
            shutil.copyfile(self.artifact, version_dir / (self.artifact_name or self.artifact.name))
        _write_manifest(version_dir, source, {"model": self.name, "version": self.version, "kind": self.kind, **self.manifest},
                        config=self.config, backend=self.backend, graph=self.graph)
        if self.warmup_files:
            (model_dir / WARMUP_DIR).mkdir()
            for file_name, data in self.warmup_files.items():
                (model_dir / WARMUP_DIR / file_name).write_bytes(data)
        write_model_config(self.config, model_dir / "config.pbtxt")


def _plan(
    description: TunedDescription, name: str, options: TritonModelOptions, repository: Path,
    target: ExportTarget = ExportTarget.PYTHON, router: bool = True, version: int | None = None,
) -> list[_PlannedModel]:
    """Build every configuration and file in memory, so that invalid input fails before writing.

    The last model is the module's entry model. Without ``router`` (one graph spec, target python)
    it is the only one: the graph model named ``name``, with the routes parameter of an entry model.

    The entry model's routes pin each graph model's version: if an interrupted export left newer
    graph models behind an older entry model, requests fail loudly instead of reaching a graph
    model whose inputs the entry model does not know.
    """
    environment = _environment()
    planned: list[_PlannedModel] = []
    ios: list[ModelIO] = []
    package = served_files()
    for entry in description.graphs:
        graph, backend = entry.graph, entry.backend
        runtime = _triton_runtime(backend.name)
        if runtime is None:
            decision = entry.decision
            raise ExportError(
                f"{graph.name}: backend {backend.name!r} has no artifact Triton can load (exportable: "
                f"{exportable_backends()})." + (f" Tuning kept it: {decision}." if decision else "") + " Tune this graph "
                f"spec with {' or '.join(f'OneBackendStrategy({n!r})' for n in exportable_backends())} "
                "(no speed gate), or with a strategy whose candidates leave out 'eager' and speed_margin=None."
            )
        model_name = f"{name}.{graph.name}" if router else name
        io = ModelIO.from_graph(model_name, entry, version=_next_version(repository / model_name, version))
        layout = LayoutReport.from_dict(entry.report["layout"]) if entry.report and entry.report.get("layout") else None
        graph_options, written = options.for_layout(model_name, graph.name, layout, backend.device or "cpu")
        manifest: dict[str, Any] = {
            "target": ExportTarget.PYTHON.value,
            "layout": {"written": written, "measured": layout.to_dict() if layout else None},
        }
        if target is ExportTarget.NATIVE:
            native = plan_native(io, graph, backend, graph_options)
            if native.model is not None:
                ios.append(native.model.io)
                warmup = export_warmup(native.model.config, native.model.io, backend, io.version, options.warmup)
                planned.append(
                    _PlannedModel(
                        name=io.model_name,
                        version=io.version,
                        config=native.model.config,
                        files={"io.json": native.model.io.to_json() + "\n"},
                        artifact=backend.artifact(),
                        summary=f"{backend.name}, native {native.model.target.label}, max_batch_size {io.max_batch_size}",
                        artifact_name=native.model.target.default_model_filename,
                        manifest={**native.model.manifest, "layout": manifest["layout"]},
                        backend=backend,
                        graph=graph,
                        warmup_files=warmup,
                    )
                )
                continue
            manifest["reason"] = native.reason
        ios.append(io)
        model_py = environment.get_template("graph_model.py.j2").render(
            version=aitune_version(), module_name=name, graph=graph.name, artifact=io.artifact, runtime=runtime,
            runtime_options=backend.options, package_dir=PACKAGE_DIR,
        )
        config = graph_model_config(io, graph_options, backend.device or "cpu")
        planned.append(
            _PlannedModel(
                name=io.model_name,
                version=io.version,
                config=config,
                files={"model.py": model_py, "io.json": io.to_json() + "\n", **package},
                artifact=backend.artifact(),
                summary=f"{backend.name}, max_batch_size {io.max_batch_size}"
                + (f", Python backend: {manifest['reason']}" if "reason" in manifest else ""),
                manifest=manifest,
                backend=backend,
                graph=graph,
                warmup_files=export_warmup(config, io, backend, io.version, options.warmup),
            )
        )
    routes = {
        "module": name,
        "signature": description.signature,
        "strict": description.strict,
        "graphs": [io.to_dict() for io in ios],
    }
    if not router:  # the graph model is the entry model: RemoteModule reads its routes there
        direct = planned[0]
        set_routes_parameter(direct.config, routes)
        direct.kind = "entry"
        direct.manifest["router"] = False
        direct.summary = f"entry model running {description.graphs[0].graph.name} itself (no router), {direct.summary}"
        return planned
    router_py = environment.get_template("router_model.py.j2").render(
        version=aitune_version(), module_name=name, graph_models=[io.model_name for io in ios], package_dir=PACKAGE_DIR
    )
    planned.append(
        _PlannedModel(
            name=name,
            version=_next_version(repository / name, version),
            config=router_model_config(name, ios, routes, options),
            files={"model.py": router_py, ROUTES_FILE: json.dumps(routes) + "\n", **package},
            artifact=None,
            summary=f"entry model routing to {len(ios)} graph model(s)",
            kind="entry",
        )
    )
    return planned


def _publish(staged_model: Path, target_model: Path, version: int) -> None:
    """Move a staged version directory into the repository, then its config.pbtxt."""
    target_model.mkdir(exist_ok=True)
    target_version = target_model / str(version)
    if target_version.exists():
        raise ExportError(f"{target_version} appeared while exporting; versions are never overwritten. Export again.")
    (staged_model / str(version)).rename(target_version)
    staged_warmup = staged_model / WARMUP_DIR
    if staged_warmup.is_dir():  # the warmup inputs the new config.pbtxt names, before it
        (target_model / WARMUP_DIR).mkdir(exist_ok=True)
        for staged_file in sorted(staged_warmup.iterdir()):
            if (target_model / WARMUP_DIR / staged_file.name).exists():
                raise ExportError(f"{target_model / WARMUP_DIR / staged_file.name} exists; warmup files are never overwritten.")
            staged_file.rename(target_model / WARMUP_DIR / staged_file.name)
    os.replace(staged_model / "config.pbtxt", target_model / "config.pbtxt")


#: File name of the user's module copy in a step model's version directory.
STEP_MODULE_FILE = "step_module.py"


def _plan_steps(
    entries: list[tuple[str, TunedDescription]], entry_models: dict[str, _PlannedModel], preprocess: Step | str | None,
    postprocess: Step | str | None, ensemble_name: str | None, options: TritonModelOptions, repository: Path, source: str,
    version: int | None = None,
) -> list[_PlannedModel]:
    """The step models and the ensemble around the one entry model (nothing without a step), at
    ``version`` when given."""
    requested_version = version
    if preprocess is None and postprocess is None:
        if ensemble_name is not None:
            raise ExportError("ensemble_name: names the ensemble around pre/post steps; pass preprocess or postprocess too.")
        return []
    if len(entries) != 1:
        raise ExportError(
            f"preprocess/postprocess: wrap the steps around one module; {source} holds {len(entries)} wrapped "
            "submodules. Export the submodule's own checkpoint."
        )
    entry = next(iter(entry_models.values()))
    name = validate_model_name(ensemble_name, "ensemble_name") if ensemble_name is not None else f"{entry.name}_ensemble"
    routes = json.loads(entry.config.parameters[ROUTES_PARAMETER].string_value)
    input_sets = [frozenset(t["name"] for t in graph["inputs"]) for graph in routes["graphs"]]
    stages = [Stage.from_config(entry.config, entry.version, f"entry model '{entry.name}'", input_sets)]
    planned: list[_PlannedModel] = []
    package = served_files()
    for role, given in (("preprocess", preprocess), ("postprocess", postprocess)):
        if given is None:
            continue
        declared = resolve_step(given, role)
        model_name = f"{entry.name}.{role}"
        version = _next_version(repository / model_name, requested_version)
        stage = Stage.from_step(declared, model_name, version, role)
        stages.insert(0, stage) if role == "preprocess" else stages.append(stage)
        module_file = declared.source_file()
        model_py = _environment().get_template("step_model.py.j2").render(
            version=aitune_version(), role=role, step_name=declared.name, function=declared.reference,
            module_file=STEP_MODULE_FILE, package_dir=PACKAGE_DIR,
        )
        description = {**declared.to_dict(), "role": role, "source_file": str(module_file)}
        step_config = step_model_config(model_name, declared, options.default_group.count)
        options.version_policy.apply(step_config)  # old ensemble versions pin old step versions
        planned.append(_PlannedModel(
            name=model_name, version=version, config=step_config,
            files={"model.py": model_py, "step.json": json.dumps(description, indent=2) + "\n",
                   STEP_MODULE_FILE: module_file.read_text(), **package},
            artifact=None, summary=f"{role} step {declared.reference}", kind="step",
            manifest={"step": description},
        ))
    config = ensemble_model_config(name, stages)
    options.version_policy.apply(config)
    planned.append(_PlannedModel(
        name=name, version=_next_version(repository / name, requested_version), config=config, files={}, artifact=None,
        summary="ensemble: " + " -> ".join(stage.model_name for stage in stages), kind="ensemble",
    ))
    return planned
