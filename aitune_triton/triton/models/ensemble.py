"""The ensemble model: Triton's own ``ensemble`` wiring the step models around a module's entry
model (the configuration and its checks are :mod:`aitune_triton.triton.ensemble`'s)."""

from __future__ import annotations

from pathlib import Path

from aitune_triton.errors import ExportError
from aitune_triton.names import validate_model_name
from aitune_triton.served.routes import ROUTES_PARAMETER, Routes
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.ensemble import Stage, ensemble_model_config
from aitune_triton.triton.manifest import ModelKind
from aitune_triton.triton.models.planned import PlannedModel, next_version, served_files, template_environment
from aitune_triton.triton.models.step import plan_step_model
from aitune_triton.triton.steps import Step

__all__ = ["plan_ensemble"]


def plan_ensemble(
    entry_models: list[PlannedModel], preprocess: Step | str | None, postprocess: Step | str | None,
    ensemble_name: str | None, options: TritonModelOptions, repository: Path, source: str, version: int | None = None,
) -> list[PlannedModel]:
    """The step models and the ensemble around the one entry model (nothing without a step), at
    ``version`` when given.

    Raises:
        ExportError: ``ensemble_name`` without a step; steps for an export of several modules; a
            step's tensors do not fit the stage before it.
        InvalidArgumentError: a step cannot be resolved.
        InvalidNameError: ``ensemble_name`` is not a valid model name.
    """
    if preprocess is None and postprocess is None:
        if ensemble_name is not None:
            raise ExportError("ensemble_name: names the ensemble around pre/post steps; pass preprocess or postprocess too.")
        return []
    if len(entry_models) != 1:
        raise ExportError(
            f"preprocess/postprocess: wrap the steps around one module; {source} holds {len(entry_models)} wrapped "
            "submodules. Export the submodule's own checkpoint."
        )
    entry = entry_models[0]
    name = validate_model_name(ensemble_name, "ensemble_name") if ensemble_name is not None else f"{entry.name}_ensemble"
    routes = Routes.from_json(entry.config.parameters[ROUTES_PARAMETER].string_value)
    stages = [Stage.from_config(entry.config, entry.version, f"entry model '{entry.name}'", routes.input_sets())]
    planned: list[PlannedModel] = []
    environment, package = template_environment(), served_files()
    for role, given in (("preprocess", preprocess), ("postprocess", postprocess)):
        if given is None:
            continue
        model, stage = plan_step_model(role, given, entry.name, options, repository, version, environment, package)
        stages.insert(0, stage) if role == "preprocess" else stages.append(stage)
        planned.append(model)
    config = ensemble_model_config(name, stages)
    options.version_policy.apply(config)
    planned.append(PlannedModel(
        name=name, version=next_version(repository / name, version), config=config, files={}, artifact=None,
        summary="ensemble: " + " -> ".join(stage.model_name for stage in stages), kind=ModelKind.ENSEMBLE,
    ))
    return planned
