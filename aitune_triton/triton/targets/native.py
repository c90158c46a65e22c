"""The ``native`` export target: a graph spec whose backend declares a Triton backend of its own
(``Backend.triton_native``) is a model of that backend; the others stay Python-backend models, with
the reason in their summary and manifest. The configuration and signature checks are
:mod:`aitune_triton.triton.native`'s."""

from __future__ import annotations

from aitune_triton.triton.manifest import ModelKind, ServingFields
from aitune_triton.triton.models.graph import GraphModelRequest, plan_python_graph_model
from aitune_triton.triton.models.planned import PlannedModel, companion_files
from aitune_triton.triton.native import plan_native
from aitune_triton.triton.targets.base import ExportTargetBase
from aitune_triton.triton.warmup import export_warmup

__all__ = ["NativeExportTarget"]


class NativeExportTarget(ExportTargetBase):
    """Triton's own backend (``onnxruntime_onnx``, ``torch_aoti``...) where the graph spec's backend
    declares one; its models check no input contract, so the entry model in front of them does."""

    name = "native"
    help = ("graph models whose backend declares a Triton backend of its own (onnxruntime: onnxruntime_onnx, aoti: "
            "torch_aoti) are served by it; the others stay Python-backend models (the reason is printed).")
    checks_input_contract = False

    def plan_graph_model(self, request: GraphModelRequest) -> PlannedModel:
        """The native model of ``request``, or its Python-backend model and why (:func:`plan_native`).

        Raises:
            ExportError: the artifact cannot be read, or it runs on GPU only and the options ask
                for CPU instances.
        """
        io, backend, graph = request.io, request.tuned.backend, request.tuned.graph
        native = plan_native(io, graph, backend, request.graph_options)
        if native.model is None:
            return plan_python_graph_model(request, "python", native.reason)
        model = native.model
        return PlannedModel(
            name=io.model_name,
            version=io.version,
            config=model.config,
            files={"io.json": model.io.to_json() + "\n"},
            artifact=backend.artifact(),
            companions=companion_files(backend),
            summary=f"{backend.name}, native {model.target.label}, max_batch_size {io.max_batch_size}",
            kind=ModelKind.GRAPH,
            backend=backend,
            graph=graph,
            artifact_name=model.target.default_model_filename,
            serving=ServingFields(target=self.name, layout=request.layout, platform=model.config.platform,
                                  default_model_filename=model.config.default_model_filename),
            warmup_files=export_warmup(model.config, model.io, backend, io.version, request.options.warmup),
            io=model.io,
        )
