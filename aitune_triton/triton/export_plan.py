"""Export, step 1 of 3: plan every model in memory (:func:`plan_export`), so that invalid input
fails before anything is written.

Reads what to export (a tuned Module or a checkpoint), checks the arguments, asks the export target
(:mod:`aitune_triton.triton.targets`) to plan each graph spec's model and plans the entry models,
step models and ensemble (one module per kind of model: :mod:`aitune_triton.triton.models`).
Step 2 writes the plan into a staging directory (:mod:`aitune_triton.triton.export_stage`), step 3
moves it into the repository (:mod:`aitune_triton.triton.export_publish`).
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from pathlib import Path

from aitune_triton.checkpoint import read_checkpoint_modules
from aitune_triton.errors import ExportError, InvalidArgumentError, InvalidOptionError
from aitune_triton.module.description import TunedDescription
from aitune_triton.module.persistence import check_artifact_kinds
from aitune_triton.module.wrapper import Module
from aitune_triton.names import validate_model_name
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.manifest import ModelKind, refuse_kind_collision
from aitune_triton.triton.models.ensemble import plan_ensemble
from aitune_triton.triton.models.entry import make_direct_entry, plan_router_model, routes_of, use_router
from aitune_triton.triton.models.graph import graph_model_request
from aitune_triton.triton.models.planned import PlannedModel, served_files, template_environment
from aitune_triton.triton.options import check_int
from aitune_triton.triton.repository_layout import refuse_non_repository
from aitune_triton.triton.steps import Step
from aitune_triton.triton.targets import ExportTargetBase, export_target

__all__ = ["LEAVE_OUT_NAME", "PlannedExport", "plan_export", "plan_module", "step_model_names"]

#: What an error about ``name`` for a checkpoint of several modules says to do; the command line
#: says to drop ``--name`` instead.
LEAVE_OUT_NAME = "Pass name=None."


@dataclass
class PlannedExport:
    """Every model an export writes, in publishing order.

    Attributes:
        repository: The model repository (absolute).
        source: What is exported (``"module 'minilm'"``, ``"checkpoint /abs/path"``).
        entry_models: Attribute path of each exported module -> its entry model.
        models: Graph models, then entry models, then step models and the ensemble.
        ensemble: The step models and the ensemble (empty without steps).
    """

    repository: Path
    source: str
    entry_models: dict[str, PlannedModel]
    models: list[PlannedModel]
    ensemble: list[PlannedModel] = field(default_factory=list)

    @property
    def served(self) -> list[PlannedModel]:
        """The models that run a graph spec (a module's entry model exported without a router too)."""
        return [m for m in self.models if m.backend is not None]

    @property
    def title(self) -> str:
        """The entry models' names, for the progress line."""
        return ", ".join(m.name for m in self.entry_models.values())


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


def plan_module(
    description: TunedDescription, name: str, options: TritonModelOptions, repository: Path,
    target: ExportTargetBase, router: bool = True, version: int | None = None,
) -> list[PlannedModel]:
    """Plan one module's models; the last is its entry model.

    Without ``router`` (one graph spec, a target whose models check their input contract) the
    entry model is the only one: the graph model named ``name``, with the routes parameter of an
    entry model.

    Raises:
        ExportError: a graph spec cannot be served (see :func:`graph_model_request`), or the entry
            model cannot route between the graph specs.
        InvalidOptionError: ``version`` exists already in one of the models.
    """
    environment, package = template_environment(), served_files()
    planned: list[PlannedModel] = []
    ios: list[ModelIO] = []
    for tuned in description.graphs:
        model_name = f"{name}.{tuned.graph.name}" if router else name
        request = graph_model_request(tuned, name, model_name, options, repository, version, environment, package)
        model = target.plan_graph_model(request)
        if model.io is None:
            raise ExportError(f"{model_name}: export target {target.name!r} planned a graph model without its IO mapping.")
        ios.append(model.io)
        planned.append(model)
    routes = routes_of(description, name, ios)
    if not router:  # the graph model is the entry model: RemoteModule reads its routes there
        return [make_direct_entry(planned[0], routes, description.graphs[0].graph.name)]
    return planned + [plan_router_model(name, routes, ios, options, repository, version, environment, package)]


def _refuse_clashes(planned: PlannedExport, options: TritonModelOptions) -> None:
    """Refuse two models of one name, a name taken by a model of another kind, instance groups of no graph."""
    counts = collections.Counter(m.name for m in planned.models)
    clashing = sorted(model for model, count in counts.items() if count > 1)
    if clashing:
        raise ExportError(f"{planned.source}: two exported modules would both write the models {clashing}; rename one Module.")
    for model in planned.models:
        refuse_kind_collision(planned.repository, model.name, model.kind)
    pairs = [(m.name, m.graph.name) for m in planned.served if m.graph is not None]
    unknown = options.unknown_groups(pairs)
    if unknown:
        raise InvalidOptionError(
            f"instance_groups: expected graph names or graph model names of this export "
            f"({', '.join(sorted({n for pair in pairs for n in pair}))}), got {unknown}. Fix the keys or drop them."
        )


def plan_export(
    module_or_checkpoint: Module | str | os.PathLike, repository: str | os.PathLike, name: str | None,
    options: TritonModelOptions | None, target: object, preprocess: Step | str | None, postprocess: Step | str | None,
    ensemble_name: str | None, router: bool | None, version: int | None,
) -> PlannedExport:
    """Check the arguments of :func:`~aitune_triton.triton.exporter.export` and plan every model.

    Raises:
        The errors :func:`~aitune_triton.triton.exporter.export` documents; nothing is written.
    """
    chosen = export_target(target)
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
    root = Path(repository).absolute()
    if root.exists() and not root.is_dir():
        raise ExportError(f"repository: {root} is a file; pass a directory (it is created when missing).")
    refuse_non_repository(root)
    graph_models: list[PlannedModel] = []
    entry_models: dict[str, PlannedModel] = {}
    for path, description in entries:
        where = f"module name at '{path}'" if path else "module name"
        entry_name = validate_model_name(name, "name") if name is not None else validate_model_name(description.name, where)
        planned = plan_module(description, entry_name, options, root, chosen, use_router(description, chosen, router), version)
        graph_models += planned[:-1]
        entry_models[path] = planned[-1]
    models = graph_models + list(entry_models.values())  # graph models first, the entry models last
    ensemble = plan_ensemble(list(entry_models.values()), preprocess, postprocess, ensemble_name, options, root, source,
                             version)
    plan = PlannedExport(root, source, entry_models, models + ensemble, ensemble)  # steps, then the ensemble
    _refuse_clashes(plan, options)
    return plan


def step_model_names(plan: PlannedExport) -> list[str]:
    """The step models' names (preprocess first)."""
    return [m.name for m in plan.ensemble if m.kind is ModelKind.STEP]
