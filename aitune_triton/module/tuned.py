"""The tuned state: each call runs on the backend chosen for its graph spec."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from aitune_triton._threads import torch_threads
from aitune_triton._warnings import warn
from aitune_triton.backends import Backend, LoadContext
from aitune_triton.contract import INDEX_HINT, InputContract, ShapeProblem
from aitune_triton.errors import (
    ArgumentTypeError,
    GraphSpecMismatchError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    ModuleStateError,
)
from aitune_triton.graph_diff import mismatch_message
from aitune_triton.spec import CallLayouts, CallStructure, ForwardSignature, GraphSpec, rebuild_output
from aitune_triton.module.description import TunedGraphDescription
from aitune_triton.module.state import ModuleState
from aitune_triton.strategies import GraphTuneReport

__all__ = ["TunedGraph", "TunedModule", "out_of_range_hint"]


@dataclass
class TunedGraph:
    """A graph spec with the backend chosen for it and the tuning report."""

    spec: GraphSpec
    backend: Backend
    report: GraphTuneReport | None = None

    @cached_property
    def contract(self) -> InputContract:
        """What the backend's artifact accepts (see :meth:`Backend.input_contract`)."""
        return self.backend.input_contract(self.spec)

    @property
    def intra_op_threads(self) -> int | None:
        """Torch intra-op threads the backend runs with in process (measured at tune time: the
        report's ``layout.in_process_threads``), or None: the caller's own setting."""
        layout = self.report.layout if self.report is not None else None
        return layout.in_process_threads if layout is not None else None


class TunedModule:
    """Dispatches each call to the backend of the graph spec whose input structure it matches.

    A backend whose report holds measured in-process threads (``layout.in_process_threads``) runs
    under that torch thread count; the caller's ``torch.get_num_threads()`` is restored after the call.

    Args:
        name: Module name, for messages.
        signature: The module's forward signature.
        graphs: Tuned graph specs.
        strict: Whether constant argument values are part of the graph spec key.
        fallback: ``"eager"`` runs calls that match no graph spec on the module's own forward
            (one warning per new input structure); None raises :class:`GraphSpecMismatchError`.
    """

    state = ModuleState.TUNED

    def __init__(
        self,
        name: str,
        signature: ForwardSignature,
        graphs: list[TunedGraph],
        strict: bool = True,
        fallback: str | None = None,
    ):
        self.name = name
        self.signature = signature
        self.graphs = graphs
        self.strict = strict
        self.fallback = fallback
        self._by_key = {g.spec.key: g for g in graphs}
        self._layouts = CallLayouts(signature, strict)  # repeated call structures skip binding and key building
        self._active = all(g.backend.active for g in graphs)
        self._warned: set[str] = set()

    def __call__(self, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if not self._active:
            raise ModuleStateError(f"Module '{self.name}' is deactivated. Call activate() before calling it.")
        call = self._layouts.flatten(args, kwargs)
        self._refuse_meta(call)
        graph = self._by_key.get(call.key)
        if graph is None:
            return self._unmatched(forward, call)
        if not self.strict and graph.backend.bakes_constants and call.flat.constants != graph.spec.constants:
            self._warn_once(
                f"constants:{sorted(call.flat.constants.items())}",
                f"Module '{self.name}' {graph.spec.name}: constant arguments {call.flat.constants} differ from those its "
                f"{graph.backend.name} backend was built with ({graph.spec.constants}); running eagerly. Use "
                "strict=True to record such calls as their own graph specs.",
            )
            return forward(*args, **kwargs)
        if graph.backend.ahead_of_time:
            problems = graph.contract.shape_problems([tuple(t.shape) for t in call.flat.tensors])
            if problems:
                return self._out_of_range(forward, graph, call, problems)
            bad_values = graph.contract.value_violations(call.flat.tensors)
            if bad_values:  # eager raises IndexError here too; a compiled artifact may abort the process
                raise IndexOutOfRangeError(f"Module '{self.name}' {graph.spec.name}: {'; '.join(bad_values)}.{INDEX_HINT}")
        threads = graph.intra_op_threads
        if threads is None:
            outputs = graph.backend.infer(call)
        else:  # the measured count for this backend; the caller's count comes back after the call
            with torch_threads(threads):
                outputs = graph.backend.infer(call)
        return rebuild_output(graph.spec.output_treespec, graph.spec.output_template, outputs)

    def _refuse_meta(self, call: CallStructure) -> None:
        """Raise :class:`InvalidArgumentError` naming the tensor inputs on the ``meta`` device (they hold
        no data: a backend would fail copying them, or an AOTInductor package abort the process)."""
        meta = [path for path, leaf in zip(call.flat.paths, call.flat.leaves) if isinstance(leaf, torch.Tensor) and leaf.is_meta]
        if meta:
            raise InvalidArgumentError(
                f"Module '{self.name}': {', '.join(meta)}: expected tensors that hold data, got tensors on the 'meta' "
                "device, which the tuned backends cannot run. Create the inputs on a real device ('cpu', 'cuda')."
            )

    def _out_of_range(self, forward: Callable[..., Any], graph: TunedGraph, call: CallStructure, problems: list[ShapeProblem]) -> Any:
        violations = [graph.contract.describe(problem) for problem in problems]
        message = (
            f"Module '{self.name}' {graph.spec.name}: the call's shapes do not fit what its {graph.backend.name} "
            f"backend was built for: {'; '.join(violations)}"
        )
        if self.fallback == "eager":
            self._warn_once(f"range:{graph.spec.name}:{violations}", message + "; running eagerly (fallback='eager').")
            return forward(*call.args, **call.kwargs)
        raise GraphSpecMismatchError(f"{message}. {out_of_range_hint(graph.spec, problems)}")

    def _unmatched(self, forward: Callable[..., Any], call: CallStructure) -> Any:
        if any(isinstance(leaf, np.ndarray) for leaf in call.flat.leaves):  # it would only match as a constant
            raise ArgumentTypeError(f"Module '{self.name}': pass torch tensors, as to the module itself; got a numpy array.")
        known = "\n".join(f"  {g.spec.name}: {g.spec.description}" for g in self.graphs)
        if self.fallback == "eager":
            self._warn_once(
                call.key,
                f"Module '{self.name}': the call ({call.describe()}) matches no tuned graph spec; running eagerly "
                f"(fallback='eager'). Known graph specs:\n{known}",
            )
            return forward(*call.args, **call.kwargs)
        message = mismatch_message(
            f"Module '{self.name}': the call matches no tuned graph spec.",
            call,
            [(g.spec.name, g.spec.description) for g in self.graphs],
            strict=self.strict,
        )
        raise GraphSpecMismatchError(
            f"{message}\nTo serve it too, re-record every input structure you need (enable_recording(force=True) "
            "starts a new recording), then tune again; or create the Module with fallback='eager'."
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)

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
        data: Sequence[TunedGraphDescription],
        module: torch.nn.Module,
        device: torch.device | None = None,
        strict: bool = True,
        fallback: str | None = None,
        forward: Callable[..., Any] | None = None,
    ) -> "TunedModule":
        """Rebuild from a checked description's graphs (``TunedDescription.graphs``); ``device``
        overrides the stored device of each backend.

        Args:
            forward: The module's own forward without hooks (for the eager backend).
        """
        graphs = []
        for entry in data:
            spec = entry.graph.to_spec()  # the typed graph spec, not a dict read again
            described = entry.backend
            context = LoadContext(
                module=module,
                graph=spec,
                device=torch.device(device) if device is not None else torch.device(described.device or "cpu"),
                artifacts={role: Path(path) for role, path in described.artifacts.items()},
                forward=forward,
            )
            graphs.append(TunedGraph(spec, Backend.from_dict(described.to_dict(), context), entry.tune_report()))
        return cls(name, signature, graphs, strict, fallback)

    @property
    def ahead_of_time(self) -> bool:
        """Whether every graph spec runs on an artifact that no longer needs the module's weights."""
        return all(g.backend.ahead_of_time for g in self.graphs)


def out_of_range_hint(graph: GraphSpec, problems: Sequence[ShapeProblem]) -> str:
    """What to do about calls whose shapes break ``graph``'s artifact, fitting the axes they break.

    A batch above the batch axis' largest size can be split into calls that fit; no split helps
    another axis (an image side, a sequence length): calls of that size must be recorded, or the
    axis' range declared, and the module tuned again.
    """
    batch_too_big = [
        p for p in problems if p.kind == "range" and p.size > p.high and graph.inputs[p.input].batch_axis == p.axis
    ]
    others = [p for p in problems if p not in batch_too_big]
    hints = []
    if batch_too_big:
        largest = min(p.high for p in batch_too_big)
        hints.append(
            f"Split the batch into calls of at most {largest} (the largest batch it accepts), or record calls with "
            "larger batches (or declare BatchDim(min, max) in dynamic_shapes) and tune again."
        )
    if others:
        axes = ", ".join(sorted({f"{graph.inputs[p.input].path} axis {p.axis}" for p in others}))
        hints.append(
            f"Splitting the call cannot help on {axes}: record calls of these sizes (enable_recording(force=True), then "
            "tune again), or declare the axis' range with DynamicDim(name, min, max) (BatchDim for the batch axis) in "
            "dynamic_shapes."
        )
    return " ".join(hints) + " Or create the Module with fallback='eager' to run such calls eagerly."
