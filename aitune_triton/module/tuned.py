"""The tuned state: each call runs on the backend chosen for its graph spec."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aitune_triton.backends import Backend, LoadContext
from aitune_triton.errors import GraphSpecMismatchError, ModuleStateError
from aitune_triton.module.spec import CallStructure, ForwardSignature, GraphSpec, flatten_call, rebuild_output
from aitune_triton.module.state import ModuleState
from aitune_triton.strategies import GraphTuneReport

__all__ = ["TunedGraph", "TunedModule"]


@dataclass
class TunedGraph:
    """A graph spec with the backend chosen for it and the tuning report."""

    spec: GraphSpec
    backend: Backend
    report: GraphTuneReport | None = None


class TunedModule:
    """Dispatches each call to the backend of the graph spec whose input structure it matches.

    Args:
        name: Module name, for messages.
        signature: The module's forward signature.
        graphs: Tuned graph specs.
        strict: Whether constant argument values are part of the graph spec key.
    """

    state = ModuleState.TUNED

    def __init__(self, name: str, signature: ForwardSignature, graphs: list[TunedGraph], strict: bool = True):
        self.name = name
        self.signature = signature
        self.graphs = graphs
        self.strict = strict
        self._by_key = {g.spec.key: g for g in graphs}
        self._active = all(g.backend.active for g in graphs)
        self._warned: set[tuple] = set()

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        if not self._active:
            raise ModuleStateError(f"Module '{self.name}' is deactivated. Call activate() before calling it.")
        call = flatten_call(self.signature, args, kwargs, self.strict)
        graph = self._by_key.get(call.key)
        if graph is None:
            known = "\n".join(f"  {g.spec.name}: {g.spec.description}" for g in self.graphs)
            raise GraphSpecMismatchError(
                f"Module '{self.name}': the call ({call.describe()}) matches no tuned graph spec. Known graph specs:\n"
                f"{known}\nRecord such calls too (enable_recording(force=True)) and tune again."
            )
        if not self.strict and graph.backend.bakes_constants and call.flat.constants != graph.spec.constants:
            return self._eager_for_new_constants(module, graph, call)
        outputs = graph.backend.infer(call)
        return rebuild_output(graph.spec.output_treespec, graph.spec.output_template, outputs)

    def _eager_for_new_constants(self, module: torch.nn.Module, graph: TunedGraph, call: CallStructure) -> Any:
        """Non-strict mode: the backend was built with other constant arguments; run eagerly (warn once)."""
        seen = tuple(sorted(call.flat.constants.items()))
        if seen not in self._warned:
            self._warned.add(seen)
            warnings.warn(
                f"Module '{self.name}' {graph.spec.name}: constant arguments {call.flat.constants} differ from those its "
                f"{graph.backend.name} backend was built with ({graph.spec.constants}); running eagerly. Use strict=True "
                "to record such calls as their own graph specs.",
                stacklevel=3,
            )
        return module(*call.args, **call.kwargs)

    def activate(self) -> None:
        """Load every backend's runtime."""
        for graph in self.graphs:
            graph.backend.activate()
        self._active = True

    def deactivate(self) -> None:
        """Release every backend's runtime (sessions, compiled packages)."""
        for graph in self.graphs:
            graph.backend.deactivate()
        self._active = False

    def to_dict(self) -> list[dict[str, Any]]:
        """Per graph spec: the spec, the backend description (absolute artifact paths) and the report."""
        return [
            {
                "graph": g.spec.to_dict(),
                "backend": g.backend.to_dict(),
                "report": g.report.to_dict() if g.report else None,
            }
            for g in self.graphs
        ]

    @classmethod
    def from_dict(
        cls,
        name: str,
        signature: ForwardSignature,
        data: list[dict[str, Any]],
        module: torch.nn.Module,
        device: torch.device | None = None,
        strict: bool = True,
    ) -> "TunedModule":
        """Rebuild from :meth:`to_dict`; ``device`` overrides the stored device of each backend."""
        graphs = []
        for entry in data:
            spec = GraphSpec.from_dict(entry["graph"])
            described = entry["backend"]
            context = LoadContext(
                module=module,
                graph=spec,
                device=torch.device(device) if device is not None else torch.device(described.get("device", "cpu")),
                artifacts={role: Path(path) for role, path in described.get("artifacts", {}).items()},
            )
            report = GraphTuneReport.from_dict(entry["report"]) if entry.get("report") else None
            graphs.append(TunedGraph(spec, Backend.from_dict(described, context), report))
        return cls(name, signature, graphs, strict)
