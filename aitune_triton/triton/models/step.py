"""The step model: a user's pre/post-processing function (:class:`~aitune_triton.triton.steps.Step`)
run by a generated Python-backend ``model.py`` beside a copy of the function's module."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from aitune_triton._versions import aitune_version
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.ensemble import Stage, step_model_config
from aitune_triton.triton.manifest import ModelKind, ServingFields
from aitune_triton.triton.models.planned import PACKAGE_DIR, PlannedModel, next_version
from aitune_triton.triton.steps import Step, resolve_step

__all__ = ["STEP_MODULE_FILE", "plan_step_model"]

#: File name of the user's module copy in a step model's version directory.
STEP_MODULE_FILE = "step_module.py"


def plan_step_model(
    role: str, given: Step | str, entry_name: str, options: TritonModelOptions, repository: Path, version: int | None,
    environment: jinja2.Environment, package: dict[str, str],
) -> tuple[PlannedModel, Stage]:
    """The step model ``<entry_name>.<role>`` and its ensemble stage.

    Args:
        role: ``"preprocess"`` or ``"postprocess"``.
        given: The step, or its ``"module:function"``.
        entry_name: The entry model the step is wrapped around.
        options: The export's model options (instance count, version policy).
        repository: The model repository.
        version: The version to write, or None for the next one.
        environment: The ``model.py`` templates.
        package: The served package's files.

    Raises:
        InvalidArgumentError: ``given`` cannot be resolved (:func:`resolve_step`).
        InvalidOptionError: ``version`` exists already.
    """
    declared = resolve_step(given, role)
    model_name = f"{entry_name}.{role}"
    model_version = next_version(repository / model_name, version)
    stage = Stage.from_step(declared, model_name, model_version, role)
    module_file = declared.source_file()
    model_py = environment.get_template("step_model.py.j2").render(
        version=aitune_version(), role=role, step_name=declared.name, function=declared.reference,
        module_file=STEP_MODULE_FILE, package_dir=PACKAGE_DIR,
    )
    description = {**declared.to_dict(), "role": role, "source_file": str(module_file)}
    step_config = step_model_config(model_name, declared, options.default_group.count)
    options.version_policy.apply(step_config)  # old ensemble versions pin old step versions
    model = PlannedModel(
        name=model_name, version=model_version, config=step_config,
        files={"model.py": model_py, "step.json": json.dumps(description, indent=2) + "\n",
               STEP_MODULE_FILE: module_file.read_text(), **package},
        artifact=None, summary=f"{role} step {declared.reference}", kind=ModelKind.STEP,
        serving=ServingFields(step=description),
    )
    return model, stage
