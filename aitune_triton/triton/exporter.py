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

With ``target="native"`` (:mod:`aitune_triton.triton.targets.native`), a graph model whose
backend declares a Triton backend of its own (``Backend.triton_native``) is a model of that backend
instead (``platform: "onnxruntime_onnx"`` + ``model.onnx``, ``platform: "torch_aoti"`` +
``model.pt2``), with the artifact's own tensor names; see :mod:`aitune_triton.triton.native`.

Writes never overwrite: each export adds a new version directory to each model (``2/``, ``3/``...)
and replaces ``config.pbtxt`` atomically. Everything is built in a temporary directory next to
the repository first and renamed into place, graph models before the entry model, so a failed
export leaves no half-written model directory (a killed export's staging directory, named with its
pid, is removed by the next export or save next to it). The entry model pins the graph model
versions it was exported with.

:func:`export` runs three steps, one module each: plan every model in memory
(:mod:`~aitune_triton.triton.export_plan`, which asks the export target,
:mod:`~aitune_triton.triton.targets`, and plans each kind of model, :mod:`~aitune_triton.triton.models`),
write them into a staging directory (:mod:`~aitune_triton.triton.export_stage`), and move them into
the repository (:mod:`~aitune_triton.triton.export_publish`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

from aitune_triton.errors import ExportError
from aitune_triton.module.wrapper import Module
from aitune_triton.served.routes import ROUTES_FILE
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.dry_run import ExportPlan, build_plan
from aitune_triton.triton.export_plan import LEAVE_OUT_NAME, plan_export, step_model_names
from aitune_triton.triton.export_publish import publish
from aitune_triton.triton.models.entry import KEEP_ROUTER
from aitune_triton.triton.models.planned import PACKAGE_DIR, exportable_backends, served_files, templates_dir
from aitune_triton.triton.models.step import STEP_MODULE_FILE
from aitune_triton.triton.native import ExportTarget
from aitune_triton.triton.steps import Step

__all__ = ["ExportPlan", "ExportResult", "export", "exportable_backends", "templates_dir"]

# PACKAGE_DIR, ROUTES_FILE, STEP_MODULE_FILE, served_files, KEEP_ROUTER and LEAVE_OUT_NAME stay importable
# from here (the command line and older code import them from this module).


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
        targets: Graph model name -> the export target that serves it: ``"native"`` (a Triton
            backend of its own), ``"python"`` (a generated Python-backend model), or another
            registered target's name.
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
        target: The name of a registered export target (:mod:`aitune_triton.triton.targets`), or
            an :class:`ExportTarget`. ``"python"`` (:attr:`ExportTarget.PYTHON`): every graph
            model is a Python-backend model. ``"native"``: a graph spec whose backend declares a Triton backend of its own
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
        InvalidArgumentError: ``target`` names no registered export target (``"python"``, ``"native"``); ``router`` is not
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
    plan = plan_export(module_or_checkpoint, repository, name, options, target, preprocess, postprocess, ensemble_name,
                       router, version)
    if dry_run:
        return build_plan(plan.repository, plan.source, plan.models)
    publish(plan, show_progress)
    served = plan.served
    return ExportResult(
        plan.repository, {path: model.name for path, model in plan.entry_models.items()}, [m.name for m in served],
        {m.name: m.version for m in plan.models}, {m.name: m.serving.target or "python" for m in served},
        {m.name: m.serving.reason for m in served if m.serving.reason is not None},
        ensemble_model=plan.ensemble[-1].name if plan.ensemble else None, step_models=step_model_names(plan),
    )
