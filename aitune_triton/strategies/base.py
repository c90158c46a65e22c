"""Tuning strategies: which backends to try for a graph spec, and which one to keep."""

from __future__ import annotations

import abc
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from aitune_triton._warnings import warn
from aitune_triton.backends import Backend, BuildContext, EagerBackend, get_backend_class
from aitune_triton.errors import ArgumentTypeError, BackendUnavailableError, InvalidArgumentError, TuningError
from aitune_triton.spec import CallStructure, FlatTree, ForwardSignature, GraphSpec, flatten_output, output_leaves
from aitune_triton.strategies.validation import compare_outputs, measure_latency_ms, raise_on_mismatch

__all__ = ["CandidateReport", "GraphTuneReport", "TuneContext", "TuneStrategy", "resolve_backend"]

def resolve_backend(backend: str | Backend) -> Backend:
    """A fresh backend from a registered name (``"aoti"``) or a configured instance.

    Raises:
        UnknownBackendError: (a ValueError) the name is not registered; the message lists registered names.
        ArgumentTypeError: (a TypeError) ``backend`` is neither a string nor a :class:`Backend`.
    """
    if isinstance(backend, Backend):
        return backend.clone()
    if isinstance(backend, str):
        return get_backend_class(backend)()
    raise ArgumentTypeError(
        f"backend: expected a registered backend name or a Backend instance, got {type(backend).__name__}"
    )


@dataclass
class TuneContext:
    """Everything a strategy needs to tune one graph spec.

    Attributes:
        module: The original module (not the wrapper).
        signature: Its forward signature.
        graph: The graph spec.
        samples: Recorded calls of the graph spec, flattened, on ``device``.
        example: The call used for export and compilation (the largest recorded one).
        workdir: Directory for artifacts; each candidate gets a subdirectory.
        device: Device to tune for.
        log: Receives one-line progress messages.
        forward: The module's own forward without hooks (default ``module.forward``); candidates
            capture it and eager references run it.
    """

    module: torch.nn.Module
    signature: ForwardSignature
    graph: GraphSpec
    samples: list[CallStructure]
    example: CallStructure
    workdir: Path
    device: torch.device
    log: Callable[[str], None] = field(default=lambda message: None)
    forward: Callable[..., Any] | None = None

    @property
    def run(self) -> Callable[..., Any]:
        """The forward eager references run (:attr:`forward`, else ``module.forward``)."""
        return self.forward or self.module.forward


@dataclass
class CandidateReport:
    """What happened to one candidate backend.

    Attributes:
        backend: Backend name.
        status: ``"chosen"``, ``"passed"``, ``"failed"``, ``"unavailable"`` or ``"not tried"``.
        reason: Why it failed or was not available.
        build_s: Build time in seconds.
        latency_ms: Median latency on the largest recorded call, in milliseconds.
        max_abs_diff: Largest abs difference to eager over all samples and outputs.
    """

    backend: str
    status: str
    reason: str = ""
    build_s: float = 0.0
    latency_ms: float | None = None
    max_abs_diff: float | None = None


@dataclass
class GraphTuneReport:
    """The tuning of one graph spec.

    Attributes:
        graph: Graph spec name.
        strategy: Strategy description.
        chosen: Name of the kept backend.
        eager_latency_ms: Median eager latency on the largest recorded call, in milliseconds.
        candidates: One report per candidate, in the order tried.
        batch: How the batch axis was decided (the range kept, or why the batch size is fixed or
            requests are not joined); empty in reports written before it was recorded.
    """

    graph: str
    strategy: str
    chosen: str
    eager_latency_ms: float
    candidates: list[CandidateReport]
    batch: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphTuneReport":
        """Rebuild from :meth:`to_dict`."""
        return cls(**{**data, "candidates": [CandidateReport(**c) for c in data["candidates"]]})


def _reason(error: Exception) -> str:
    """``Type: message`` without the terminal colour codes exporters put in their messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")


class TuneStrategy(abc.ABC):
    """Builds candidate backends for a graph spec, checks each against eager outputs and keeps one.

    Every candidate is checked on every recorded sample of the graph spec: per output leaf the
    shape, dtype and values must match eager within ``|backend - eager| <= atol + rtol * |eager|``
    (``torch.allclose`` semantics). A failing candidate is reported with its reason and the next
    one is tried.

    Args:
        atol: Absolute tolerance.
        rtol: Relative tolerance.
    """

    def __init__(self, atol: float = 1e-4, rtol: float = 1e-4):
        if atol < 0 or rtol < 0:
            raise InvalidArgumentError(f"atol/rtol: expected non-negative tolerances, got atol={atol!r}, rtol={rtol!r}")
        self.atol = atol
        self.rtol = rtol

    @abc.abstractmethod
    def candidates(self) -> list[Backend]:
        """Fresh, unbuilt backends to try, in order."""

    def describe(self) -> str:
        """Short description for logs and reports."""
        names = ", ".join(b.name for b in self.candidates())
        return f"{type(self).__name__}([{names}])"

    def tune(self, context: TuneContext) -> tuple[Backend, GraphTuneReport]:
        """Try candidates in order and keep the first one that matches eager.

        Raises:
            TuningError: no candidate passed; the message lists every candidate's reason.
        """
        with torch.no_grad():
            references = [flatten_output(context.run(*call.args, **call.kwargs)) for call in context.samples]
            eager_ms = measure_latency_ms(lambda: EagerBackend.reference(context.run, context.example))
        reports: list[CandidateReport] = []
        candidates = self.candidates()
        for index, backend in enumerate(candidates):
            report = self._try(backend, context, references)
            reports.append(report)
            if report.status == "passed":
                report.status = "chosen"
                reports.extend(CandidateReport(b.name, "not tried") for b in candidates[index + 1 :])
                return backend, GraphTuneReport(context.graph.name, self.describe(), backend.name, eager_ms, reports)
            backend.deactivate()
        reasons = "\n".join(f"  {r.backend}: {r.status}: {r.reason}" for r in reports)
        raise TuningError(f"{context.graph.name}: no candidate of {self.describe()} passed:\n{reasons}")

    def _try(self, backend: Backend, context: TuneContext, references: Sequence[FlatTree]) -> CandidateReport:
        workdir = context.workdir / backend.name
        workdir.mkdir(parents=True, exist_ok=True)
        context.log(f"{context.graph.name}: building {backend.name}")
        start = time.perf_counter()
        build = BuildContext(
            context.module, context.signature, context.graph, context.example, workdir, context.device, context.log, context.forward
        )
        try:
            with torch.no_grad():
                backend.build(build)
            _drop_index_ranges_recorded_calls_break(backend, context)
        except BackendUnavailableError as error:
            return CandidateReport(backend.name, "unavailable", str(error), time.perf_counter() - start)
        except Exception as error:  # export, compile or load failed: report it and try the next candidate
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            return CandidateReport(backend.name, "failed", _reason(error), time.perf_counter() - start)
        build_s = time.perf_counter() - start
        context.log(
            f"{context.graph.name}: checking {backend.name} against eager on the {len(context.samples)} stored samples "
            f"(of {context.graph.num_calls} recorded calls)"
        )
        mismatches: list[str] = []
        worst = 0.0
        graph = context.graph
        try:
            with torch.no_grad():
                for index, (call, reference) in enumerate(zip(context.samples, references)):
                    label = f"sample {index}: "
                    if reference.treespec != graph.output_treespec:
                        mismatches.append(f"{label}eager returned another output structure than recorded: {reference.treespec}")
                        worst = float("inf")
                        continue
                    # Every leaf, non-tensor ones included: those come back from the recorded template.
                    actual = output_leaves(graph.output_template, backend.infer(call))
                    found, diff = compare_outputs(reference.leaves, actual, reference.paths, self.atol, self.rtol, label)
                    mismatches.extend(found)
                    worst = max(worst, diff)
                raise_on_mismatch(backend.name, mismatches)
                latency = measure_latency_ms(lambda: backend.infer(context.example))
        except Exception as error:  # a backend failing at run time is a failed candidate, not a crash
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            return CandidateReport(backend.name, "failed", _reason(error), build_s, None, worst)
        return CandidateReport(backend.name, "passed", "", build_s, latency, worst)


def _drop_index_ranges_recorded_calls_break(backend: Backend, context: TuneContext) -> None:
    """Turn off the index check of an input that a recorded call breaks (eager ran that call, so the
    range read from the exported program was too strict for it), with a warning."""
    if not backend.index_ranges:
        return
    contract = backend.input_contract(context.graph)
    dropped = sorted({position for call in context.samples for position in contract.inputs_with_bad_values(call.flat.tensors)})
    for position in dropped:
        backend.index_ranges[position] = []
        message = (
            f"{context.graph.name}: {backend.name}: a recorded call holds values of input "
            f"{context.graph.inputs[position].path!r} outside the index range read from the exported program, although "
            "eager ran it; the value check of that input is off (out-of-range values may reach the compiled code)"
        )
        context.log(message)
        warn(message)
