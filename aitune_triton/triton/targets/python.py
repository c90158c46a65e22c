"""The ``python`` export target: every graph model is a generated Python-backend ``model.py``."""

from __future__ import annotations

from aitune_triton.triton.models.graph import GraphModelRequest, plan_python_graph_model
from aitune_triton.triton.models.planned import PlannedModel
from aitune_triton.triton.targets.base import ExportTargetBase

__all__ = ["PythonTarget"]


class PythonTarget(ExportTargetBase):
    """A generated Python-backend ``model.py`` runs every artifact; it checks its own input contract."""

    name = "python"
    help = "every graph model is a Python-backend model."
    checks_input_contract = True

    def plan_graph_model(self, request: GraphModelRequest) -> PlannedModel:
        """The Python-backend graph model (:func:`~aitune_triton.triton.models.graph.plan_python_graph_model`)."""
        return plan_python_graph_model(request, self.name)
