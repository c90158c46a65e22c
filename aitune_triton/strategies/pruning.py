"""Pruning: stop spending tune time on candidates that cannot win, once a cheap measure shows it.

The default candidates are built, checked against eager on every stored sample and profiled at
three shapes and every batch size of the recorded range; on a 2-core machine that is tens of
seconds per candidate for a sentence encoder. Most of that time goes to candidates that are
clearly slower than one already measured. :class:`Pruning` cuts it in two places:

* **After the build** (the screen): the candidate is timed with a few runs at the typical shape.
  Only when it is at least :data:`PRUNE_FACTOR` times the best time so far there is it timed at
  the smallest and largest shapes too, and only when it is that much slower at *every* shape, and
  a second, back-to-back timing against the fastest reference at the typical shape (rotated
  order) confirms it, is it pruned: status ``pruned``, with the ratios in the reason; its check
  against eager, its profile and its batch sizes are skipped. The references are eager and the
  candidates that matched eager and passed the speed gate (at every shape): a candidate slower by
  the factor than one of them at every shape can be kept by no latency rule (at a shape where
  eager is the fastest it fails the speed gate, elsewhere an eligible candidate beats it), so the
  factor only guards against noise. A candidate the gate refused is no reference: two refused
  ones, each fast where the other is slow, could otherwise prune the only one that passes. One noisy
  timing cannot prune: the typical shape is timed twice, and every shape must agree.
  On a busy machine it does not prune at all: when the confirmation's timings disagree (each
  side's two timings, or the reference's against its own profile, by more than
  :data:`STABLE_SPREAD`), the candidate is evaluated in full (a tune on a loaded 2-core machine
  pruned AOTInductor, the eventual winner, on a 4.5x that was the machine's, not the backend's).
* **Before the build** (siblings): a candidate of the same family as one already screened (same
  backend with other options, or :attr:`Backend.compiler_family
  <aitune_triton.backends.Backend.compiler_family>`: ``aoti`` and ``inductor`` run the code one
  compiler generates; at one precision and quantization: :func:`family`) is not built when that
  sibling ran at :data:`FAMILY_FACTOR` times the best time or more at every shape. The variants among the default candidates differ by far less here
  (``aoti`` with and without freezing about 10% on a CPU MLP, ONNX Runtime's two exporters
  0.54-0.60x against 0.63-0.72x eager on MiniLM-L6: see each backend's ``default_candidates``).

The eager candidate is not run again: it is the reference itself, so its report takes eager's
measurements (its difference to eager is 0 by construction).

Pruning applies to strategies that select on latency (not to those that sweep every candidate's
batch sizes for throughput, nor to :class:`~aitune_triton.strategies.OneBackendStrategy`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from aitune_triton.backends import Backend, EagerBackend
from aitune_triton.spec import CallStructure
from aitune_triton.strategies.accuracy import candidate_label, candidate_precision
from aitune_triton.strategies.evaluation import Evaluation
from aitune_triton.strategies.profiler import Profiler
from aitune_triton.strategies.report import SHAPES, CandidateReport, CandidateStatus

__all__ = ["FAMILY_FACTOR", "PRUNE_FACTOR", "QUICK_PROFILER", "STABLE_SPREAD", "Pruning", "family"]

#: A built candidate at least this many times the best time so far at every shape (typical shape
#: confirmed by a second, back-to-back timing) is pruned.
PRUNE_FACTOR = 1.5
#: A candidate is not built when a sibling (same family) ran at this many times the best time or more at every shape.
FAMILY_FACTOR = 2.0
#: The confirmation's timings (each side twice, and the reference against its own profile) must
#: agree within this factor for a candidate to be pruned; else it is evaluated in full.
STABLE_SPREAD = 1.25
#: The screen's timing: a few runs, at most 0.3 s per shape.
QUICK_PROFILER = Profiler(warmup_runs=1, min_runs=3, max_runs=7, max_time_s=0.3)


def family(backend: Backend) -> str:
    """The family whose members run code of one origin at one precision: the backend's
    ``compiler_family`` when it declares one, else its name (its configurations are siblings),
    with its precision and quantization when not fp32 (``onnxruntime[int8, static]``). An int8 or
    bf16 variant is not the fp32 member's sibling: it can win where the fp32 member is far slower."""
    origin = backend.compiler_family or backend.name
    if backend.precision == "fp32":
        return origin
    quantization = backend.options.get("quantization")
    return f"{origin}[{backend.precision}{f', {quantization}' if quantization else ''}]"


@dataclass
class _Reference:
    """A candidate that matched eager and passed the speed gate (or eager itself): its latencies per shape, how to run it."""

    label: str
    latencies_ms: dict[str, float]
    infer: Callable[[CallStructure], Any]


class Pruning:
    """The pruning of one graph spec's evaluation (see the module docstring).

    Args:
        evaluation: The shared evaluation of the graph spec.
        eager: Eager's measurements (the first reference).
        factor: :data:`PRUNE_FACTOR`.
        family_factor: :data:`FAMILY_FACTOR`.
        profiler: The screen's timing (:data:`QUICK_PROFILER`).
    """

    def __init__(
        self,
        evaluation: Evaluation,
        eager: CandidateReport,
        factor: float = PRUNE_FACTOR,
        family_factor: float = FAMILY_FACTOR,
        profiler: Profiler = QUICK_PROFILER,
    ):
        self.evaluation = evaluation
        self.eager = eager
        self.factor = factor
        self.family_factor = family_factor
        self.profiler = profiler
        run = evaluation.context.run
        self.references = [_Reference("eager", eager.latencies_ms, lambda call: EagerBackend.reference(run, call))]
        #: Family -> (label, ratio) of its screened member that came closest to the best time: the
        #: ratio is its lowest over the three shapes, 0.0 when the screen stopped early (not slower
        #: by the factor at some shape, or not confirmed), so its siblings are built.
        self.families: dict[str, tuple[str, float]] = {}

    def _log(self, line: str) -> None:
        self.evaluation.context.log(f"{self.evaluation.context.graph.name}: {line}")

    def best(self, shape: str) -> tuple[float, _Reference] | None:
        """The lowest latency at ``shape`` among the references, and whose it is."""
        known = [(ref.latencies_ms[shape], ref) for ref in self.references if ref.latencies_ms.get(shape)]
        return min(known, key=lambda item: item[0]) if known else None

    def evaluate(self, backend: Backend, workdir: Path) -> CandidateReport:
        """Evaluate ``backend`` as :meth:`Evaluation.evaluate` does, unless a sibling shows it
        cannot win (not built) or the screen after its build does (not checked nor profiled);
        the eager candidate takes eager's measurements. A candidate that passes is not a reference
        until the caller has judged it by the speed gate (:meth:`add_reference`).

        Returns:
            The candidate's report: status ``pruned`` (with the ratios or the sibling in its
            reason), else as :meth:`Evaluation.evaluate` returns it (``passed``, ``failed`` or
            ``unavailable``).

        Raises:
            InvalidArgumentError: the strategy's own configuration is wrong (an accuracy metric's
                result), passed on from :meth:`Evaluation.evaluate`.
        """
        label, precision = candidate_label(backend), candidate_precision(backend)
        if backend.name == EagerBackend.name:
            return self._eager_candidate(backend, workdir)
        sibling = self.families.get(family(backend))
        if sibling is not None and sibling[1] >= self.family_factor:
            reason = (
                f"not built: {sibling[0]} (same family: {family(backend)}) ran at {sibling[1]:.2f}x the best time or more "
                f"at every shape; a variant would need a {self.family_factor:g}x gain to win"
            )
            self._log(f"{label}: pruned: {reason}")
            return CandidateReport(label, CandidateStatus.PRUNED, reason, precision=precision, options=dict(backend.options))
        return self.evaluation.evaluate(backend, workdir, screen=self.screen)

    def add_reference(self, backend: Backend, report: CandidateReport) -> None:
        """Count ``backend`` among the references: call it once its candidate matched eager *and*
        passed the speed gate (one the gate refuses, at some shape, cannot show that another candidate
        cannot be kept). The eager candidate is eager itself, a reference already."""
        if backend.name != EagerBackend.name:
            self.references.append(_Reference(report.backend, report.latencies_ms, backend.infer))

    def screen(self, backend: Backend, report: CandidateReport) -> str | None:
        """Time the built ``backend`` quickly (see the module docstring).

        Returns:
            The reason it is pruned (``report.latencies_ms`` then holds the quick timings), or None
            to go on (``report.latencies_ms`` then empty: the full profile times every shape).
        """
        measure = self.evaluation.measure
        ratios: dict[str, float] = {}
        quick: dict[int, float] = {}
        with torch.no_grad():
            for shape in ("typical", *(s for s in SHAPES if s != "typical")):
                best = self.best(shape)
                if best is None:  # no reference timed this shape: go on, the quick timings are no profile
                    report.latencies_ms.clear()
                    return None
                call = measure.shapes[shape]
                if id(call) not in quick:
                    quick[id(call)] = self.profiler.time(lambda: backend.infer(call), self.evaluation.context.device).median_ms
                report.latencies_ms[shape] = quick[id(call)]
                ratios[shape] = quick[id(call)] / best[0]
                if ratios[shape] < self.factor:
                    break
        worst_case = min(ratios.values())
        self._remember(backend, report.backend, worst_case if len(ratios) == len(SHAPES) else 0.0)
        if len(ratios) < len(SHAPES) or worst_case < self.factor:
            report.latencies_ms.clear()
            return None
        confirmed = self._confirm(backend, measure.shapes["typical"])
        if confirmed is None or confirmed[0] < self.factor:
            report.latencies_ms.clear()
            self._remember(backend, report.backend, 0.0)
            return None
        ratio, reference = confirmed
        report.latency_ms = report.latencies_ms.get("typical")
        shown = "/".join(f"{ratios[shape]:.2f}" for shape in SHAPES)
        return (
            f">= {self.factor:g}x the best time so far at every shape ({shown}x at smallest/typical/largest; "
            f"typical re-timed beside {reference}: {ratio:.2f}x): cannot be kept, so neither checked nor profiled further"
        )

    def _confirm(self, backend: Backend, call: CallStructure) -> tuple[float, str] | None:
        """The ratio of ``backend`` to the fastest reference at ``call``, timed back to back in
        both orders (each side keeps its faster timing), and that reference's label; None when
        the timings are too unstable to prune on: either side's two timings, or the reference's
        against its own earlier profile, differ by more than :data:`STABLE_SPREAD` (a busy
        machine: the candidate is then evaluated in full, as without pruning)."""
        best = self.best("typical")
        if best is None:
            return None
        reference = best[1]
        device = self.evaluation.context.device
        mine: list[float] = []
        theirs: list[float] = []
        with torch.no_grad():
            for first_is_mine in (False, True):
                for is_mine in (first_is_mine, not first_is_mine):
                    run = backend.infer if is_mine else reference.infer
                    ms = self.profiler.time(lambda: run(call), device).median_ms
                    (mine if is_mine else theirs).append(ms)
        spreads = (max(mine) / min(mine), max(theirs) / min(theirs), max(min(theirs), best[0]) / min(min(theirs), best[0]))
        if max(spreads) > STABLE_SPREAD:
            self._log(
                f"{candidate_label(backend)}: not pruned: timings too unstable to judge on a quick measure "
                f"(spread {max(spreads):.2f}x > {STABLE_SPREAD:g}x); evaluated in full"
            )
            return None
        return min(mine) / min(theirs), reference.label

    def _remember(self, backend: Backend, label: str, ratio: float) -> None:
        known = self.families.get(family(backend))
        if known is None or ratio < known[1]:
            self.families[family(backend)] = (label, ratio)

    def _eager_candidate(self, backend: Backend, workdir: Path) -> CandidateReport:
        """The eager candidate with eager's own measurements: it runs the reference's forward."""
        report = CandidateReport(candidate_label(backend), CandidateStatus.PASSED, precision=candidate_precision(backend))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            backend.build(self.evaluation.context.build_context(workdir))
        except Exception:  # nothing to build for eager; should it fail, evaluate it the usual way
            shutil.rmtree(workdir, ignore_errors=True)
            return self.evaluation.evaluate(backend, workdir)
        report.max_abs_diff = 0.0
        report.latencies_ms = dict(self.eager.latencies_ms)
        report.batch_latencies_ms = dict(self.eager.batch_latencies_ms)
        report.shapes = dict(self.eager.shapes)
        self.evaluation.measure.weigh(report)  # its weighted latency, the measure the others are compared on
        self._log(f"{report.backend}: the reference itself: eager's measurements, no second run")
        return report
