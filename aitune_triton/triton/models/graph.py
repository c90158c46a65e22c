"""The graph model: one tuned graph spec's artifact, served by a generated Python-backend ``model.py``.

:func:`graph_model_request` gathers what every export target needs to plan a graph spec's model
(the IO mapping, the options for its measured instance layout, the served runtime);
:func:`plan_python_graph_model` plans the Python-backend model the ``python`` target writes (and
the ``native`` target falls back to). A model on one of Triton's own backends is planned by the
``native`` target (:mod:`aitune_triton.triton.targets.native`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from aitune_triton._versions import aitune_version
from aitune_triton.errors import ExportError
from aitune_triton.module.description import TunedGraphDescription
from aitune_triton.strategies.layout import LayoutReport
from aitune_triton.triton.config import TritonModelOptions, graph_model_config
from aitune_triton.triton.io import ModelIO
from aitune_triton.triton.manifest import ModelKind, ServingFields
from aitune_triton.triton.models.planned import PACKAGE_DIR, PlannedModel, companion_files, exportable_backends, next_version, triton_runtime
from aitune_triton.triton.warmup import export_warmup

__all__ = ["GraphModelRequest", "graph_model_request", "plan_python_graph_model"]


@dataclass
class GraphModelRequest:
    """What planning one graph spec's model needs, whatever the export target.

    Attributes:
        module_name: The module's entry model name.
        tuned: The graph spec and its chosen backend, as the tuned description holds them.
        io: The graph model's IO mapping (names as the entry model uses them, version set).
        options: The export's model options.
        graph_options: ``options`` for this graph spec's measured instance layout.
        layout: What the manifest says of the layout: ``{"written": ..., "measured": ...}``.
        runtime: The served runtime of the backend (``aitune_triton/served/runtimes/<runtime>.py``).
        environment: The ``model.py`` templates.
        package: The served package's files (:func:`~aitune_triton.triton.models.planned.served_files`).
    """

    module_name: str
    tuned: TunedGraphDescription
    io: ModelIO
    options: TritonModelOptions
    graph_options: TritonModelOptions
    layout: dict[str, Any]
    runtime: str
    environment: jinja2.Environment
    package: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        """The device the backend was tuned on (``"cpu"`` when it recorded none)."""
        return self.tuned.backend.device or "cpu"


def graph_model_request(
    tuned: TunedGraphDescription, module_name: str, model_name: str, options: TritonModelOptions, repository: Path,
    version: int | None, environment: jinja2.Environment, package: dict[str, str],
) -> GraphModelRequest:
    """What planning the graph model ``model_name`` of ``tuned`` needs.

    Raises:
        ExportError: the graph spec's backend has no artifact Triton can load (eager); the message
            names the exportable backends and how to tune with them.
        InvalidOptionError: ``version`` exists already in ``repository/model_name``.
    """
    graph, backend = tuned.graph, tuned.backend
    runtime = triton_runtime(backend.name)
    if runtime is None:
        decision = tuned.decision
        raise ExportError(
            f"{graph.name}: backend {backend.name!r} has no artifact Triton can load (exportable: "
            f"{exportable_backends()})." + (f" Tuning kept it: {decision}." if decision else "") + " Tune this graph "
            f"spec with {' or '.join(f'OneBackendStrategy({n!r})' for n in exportable_backends())} "
            "(no speed gate), or with a strategy whose candidates leave out 'eager' and speed_margin=None."
        )
    io = ModelIO.from_graph(model_name, tuned, version=next_version(repository / model_name, version))
    layout = LayoutReport.from_dict(tuned.report["layout"]) if tuned.report and tuned.report.get("layout") else None
    graph_options, written = options.for_layout(model_name, graph.name, layout, backend.device or "cpu")
    return GraphModelRequest(
        module_name=module_name, tuned=tuned, io=io, options=options, graph_options=graph_options,
        layout={"written": written, "measured": layout.to_dict() if layout else None}, runtime=runtime,
        environment=environment, package=package,
    )


def plan_python_graph_model(request: GraphModelRequest, target: str, reason: str | None = None) -> PlannedModel:
    """The Python-backend graph model of ``request``: ``model.py``, ``io.json``, the served package
    and the artifact, with warmup inputs when the options ask for them.

    Args:
        request: What planning it needs.
        target: The export target's name, written to the manifest.
        reason: Why it stays a Python-backend model in an export to another target (in its
            summary and manifest), or None.
    """
    io, backend, graph = request.io, request.tuned.backend, request.tuned.graph
    model_py = request.environment.get_template("graph_model.py.j2").render(
        version=aitune_version(), module_name=request.module_name, graph=graph.name, artifact=io.artifact,
        runtime=request.runtime, runtime_options=backend.options, package_dir=PACKAGE_DIR,
    )
    config = graph_model_config(io, request.graph_options, request.device)
    return PlannedModel(
        name=io.model_name,
        version=io.version,
        config=config,
        files={"model.py": model_py, "io.json": io.to_json() + "\n", **request.package},
        artifact=backend.artifact(),
        companions=companion_files(backend),
        summary=f"{backend.name}, max_batch_size {io.max_batch_size}" + (f", Python backend: {reason}" if reason else ""),
        kind=ModelKind.GRAPH,
        backend=backend,
        graph=graph,
        serving=ServingFields(target=target, layout=request.layout, reason=reason),
        warmup_files=export_warmup(config, io, backend, io.version, request.options.warmup),
        io=io,
    )
