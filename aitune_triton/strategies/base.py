"""Tuning strategies: which backends to try for a graph spec, and which one to keep.

:class:`TuneStrategy` holds the life cycle (widen the batch range, evaluate every candidate,
apply the speed gate, select, release the others, settle the batch range, measure the layout) and
the selection hooks one file per strategy overrides; the evaluation itself (build, check against
eager, profile, batch sweep) is :mod:`aitune_triton.strategies.evaluation`.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from typing import ClassVar

from aitune_triton.backends import Backend, EagerBackend
from aitune_triton.errors import TuningError
from aitune_triton.strategies.accuracy import PRECISION_TOLERANCES, AccuracyMetric, EagerCheck, candidate_label, candidate_precision
from aitune_triton.strategies.batch_sweep import batch_bounds, settled_range, sweep_limit, widened_dims
from aitune_triton.strategies.batching import batch_axes
from aitune_triton.strategies.candidates import resolve_backend, resolve_backends
from aitune_triton.strategies.context import TuneContext
from aitune_triton.strategies.evaluation import Evaluation, EvaluationSettings, Measurements, described
from aitune_triton.strategies.layout import DEFAULT_LATENCY_TOLERANCE, layout_window_s, measure_layout
from aitune_triton.strategies.noise import NoiseCheck, NoiseVerdict, check_noise, check_range_options, report_fields, with_verdict
from aitune_triton.strategies.over_range import TIE_TOLERANCE, or_inf, range_note, shape_ratios, shape_refusal
from aitune_triton.strategies.profiler import Profiler
from aitune_triton.strategies.pruning import Pruning
from aitune_triton.strategies.strategy_options import check_strategy_options
from aitune_triton.strategies.report import CandidateReport, CandidateStatus, GraphTuneReport, candidate_line

__all__ = [
    "PRECISION_TOLERANCES",
    "AccuracyMetric",
    "CandidateReport",
    "GraphTuneReport",
    "TuneContext",
    "TuneStrategy",
    "resolve_backend",
    "resolve_backends",
]

#: Statuses of candidates that were evaluated and could not be kept.
_NOT_KEPT = (CandidateStatus.TOO_SLOW, CandidateStatus.FAILED, CandidateStatus.PRUNED)

#: A candidate built, its report, and its artifact directory.
Built = tuple[Backend, CandidateReport, Path]


class TuneStrategy(abc.ABC):
    """Builds every candidate backend of a graph spec, checks and profiles it the same way, then
    keeps one by the strategy's selection rule.

    The evaluation, shared by every strategy:

    1. **Build** the candidate (a failure or an unavailable backend is reported, not raised).
    2. **Check** it on every recorded sample of the graph spec: per output leaf the shape, dtype
       and values must match eager within ``|backend - eager| <= atol + rtol * |eager|``
       (``torch.allclose`` semantics). A candidate of lower precision (``precision`` option other
       than ``"fp32"``) passes an accuracy gate instead: ``accuracy(eager, tuned)`` per sample
       when given, else :data:`PRECISION_TOLERANCES` for its precision.
    3. **Profile** it with :attr:`profiler`: median latency at the smallest, typical (median) and
       largest recorded shape (by input elements), their weighted latency (weights: the share of
       recorded calls nearest in size to each shape, :mod:`~aitune_triton.strategies.over_range`),
       and per batch size the latency of one call, from which the throughput follows (batches
       built from recorded samples, for graph specs whose samples proved independent along the
       batch axis).
    4. **Noise check** (``noise_check``, when every candidate was evaluated): eager is profiled
       again and compared with its first pass, then eager and the built candidates are re-timed
       in rotated order; each keeps its fastest median per shape. Unstable after re-measuring:
       the report's ``noisy`` and the decision say so (:mod:`~aitune_triton.strategies.noise`).
    5. **Speed gate** (every strategy but :class:`OneBackendStrategy`): a candidate is kept only
       when it beats eager by ``speed_margin`` (default 1%) on the strategy's own measure
       (the weighted latency over the recorded shapes; throughput for the throughput
       strategies) and, with ``gate_every_shape``, is not slower than eager by more than
       ``speed_margin`` at any recorded shape (the reason names the shape). The ``eager``
       backend, when listed, is exempt. When no candidate passes, the graph spec stays on eager
       and the report says why.

    Then :meth:`select` picks one of the candidates that passed. Those not kept are released:
    their sessions closed and, unless ``keep_artifacts``, their artifacts removed from the cache.

    Args:
        atol: Absolute tolerance of the eager check (fp32 candidates).
        rtol: Relative tolerance of the eager check (fp32 candidates).
        speed_margin: Fraction by which a candidate must beat eager (0.01: 1% faster); None turns
            the speed gate off. Ignored by :class:`OneBackendStrategy`.
        accuracy: Accuracy metric for lower-precision candidates (see :data:`AccuracyMetric`),
            e.g. ``lambda eager, tuned: float(torch.cosine_similarity(eager, tuned, dim=-1).min())``.
        min_accuracy: The score ``accuracy`` must reach on every sample, when it returns a number.
        find_max_batch_size: On by default, for graph specs whose batch axis proved independent
            (see :func:`~aitune_triton.strategies.batching.batch_axes`): every candidate is built
            for a batch range widened to the sweep limit, then batch sizes 1, 2, 4, ... (batches
            built from recorded samples) are timed until throughput grows by less than
            ``batch_gain_threshold``, memory runs out (caught) or the limit is reached, and the
            largest size run is compared with eager. The best size becomes the graph spec's
            preferred batch size and its batch range (Triton's ``max_batch_size``) reaches it,
            never below the recorded range; a declared ``BatchDim`` max bounds the sweep and stays
            the range. Only the kept candidate is swept (with a short profiler: at most 10 runs
            and 0.5 s per size), except by strategies that select on throughput
            (:attr:`sweeps_every_candidate`). The report's ``batch_sweep`` holds the outcome.
            False keeps the recorded batch range.
        max_batch_size_limit: Largest batch size the sweep tries (a declared ``BatchDim`` max
            caps it further).
        batch_gain_threshold: Relative throughput gain under which the sweep stops (0.05: 5%).
        profiler: How candidates are timed; default :class:`Profiler()`.
        keep_artifacts: Keep the artifacts of candidates not chosen in the tuning cache.
        measure_layouts: After the choice, measure the served layouts (instances x intra-op
            threads) and the in-process threads of the kept backend and record them in the report
            (:mod:`aitune_triton.strategies.layout`); the export then writes the chosen layout.
            Adds about ``4 * layout_seconds`` per layout plus worker start-up per graph spec. On in
            :func:`~aitune_triton.strategies.default_strategy`, off elsewhere by default.
        layout_seconds: Longest throughput window per layout and round, in seconds (shorter for
            fast calls: :func:`~aitune_triton.strategies.layout.layout_window_s`).
        layout_latency_tolerance: The layout rule's tolerance: the highest throughput among the
            layouts within this fraction of the best single-stream latency (0.1: 10%).
        gate_every_shape: Refuse a candidate slower than eager by more than ``speed_margin`` at
            any recorded shape (smallest, typical, largest), even when faster on the weighted measure.
        noise_check: How the measurements are checked for stability (:class:`NoiseCheck`); None
            skips the check and its re-timing.
        prune: Stop evaluating a candidate that a cheap measure shows cannot be kept: a variant of
            a clearly slower sibling is not built, a built candidate clearly slower than eager or
            one that matched eager at every shape is not checked nor profiled (status ``pruned``,
            the ratios in its reason; :mod:`aitune_triton.strategies.pruning`). Applies to
            strategies with the speed gate that select on latency; False evaluates every candidate in full.

    Raises:
        InvalidArgumentError: (a ValueError) a tolerance is negative, ``speed_margin`` or
            ``batch_gain_threshold`` is outside [0, 1), ``max_batch_size_limit`` is not a positive
            integer, ``accuracy`` is not callable, ``profiler`` is not a Profiler, a layout
            option has the wrong type or range, ``gate_every_shape`` is not a bool or
            ``noise_check`` not a NoiseCheck.
    """

    #: Whether the speed gate applies (False for strategies that build one given backend).
    gated: ClassVar[bool] = True
    #: Whether every candidate's batch size sweep is needed by the selection rule (throughput
    #: strategies); otherwise only the kept candidate is swept, after selection.
    sweeps_every_candidate: ClassVar[bool] = False

    def __init__(
        self,
        atol: float = 1e-4,
        rtol: float = 1e-4,
        *,
        speed_margin: float | None = 0.01,
        accuracy: AccuracyMetric | None = None,
        min_accuracy: float | None = None,
        find_max_batch_size: bool = True,
        max_batch_size_limit: int = 64,
        batch_gain_threshold: float = 0.05,
        profiler: Profiler | None = None,
        keep_artifacts: bool = False,
        measure_layouts: bool = False,
        layout_seconds: float = 1.0,
        layout_latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE,
        gate_every_shape: bool = True,
        noise_check: NoiseCheck | None = NoiseCheck(),
        prune: bool = True,
    ):
        check_strategy_options(
            atol=atol, rtol=rtol, speed_margin=speed_margin, accuracy=accuracy, min_accuracy=min_accuracy,
            find_max_batch_size=find_max_batch_size, max_batch_size_limit=max_batch_size_limit,
            batch_gain_threshold=batch_gain_threshold, profiler=profiler, measure_layouts=measure_layouts,
            layout_seconds=layout_seconds, layout_latency_tolerance=layout_latency_tolerance, prune=prune,
        )
        self.atol = atol
        self.rtol = rtol
        self.speed_margin = speed_margin
        self.accuracy = accuracy
        self.min_accuracy = min_accuracy
        self.find_max_batch_size = find_max_batch_size
        self.max_batch_size_limit = max_batch_size_limit
        self.batch_gain_threshold = batch_gain_threshold
        self.profiler = profiler or Profiler()
        self.keep_artifacts = keep_artifacts
        self.measure_layouts = measure_layouts
        self.layout_seconds = float(layout_seconds)
        self.layout_latency_tolerance = layout_latency_tolerance
        self.gate_every_shape, self.noise_check = check_range_options(gate_every_shape, noise_check)
        self.prune = prune
        #: Batch sizes to profile instead of powers of two (set by strategies that take them).
        self.batch_sizes: list[int] | None = None

    # ------------------------------------------------------------------ what strategies override
    @abc.abstractmethod
    def candidates(self) -> list[Backend]:
        """Fresh, unbuilt backends to evaluate, in order."""

    def select(self, passed: list[CandidateReport], eager: CandidateReport) -> CandidateReport:
        """The selection rule: one of ``passed`` (candidates that matched eager and passed the
        speed gate, in evaluation order; never empty). ``eager`` holds eager's measurements.
        Default: the first one (strategies override this rule)."""
        return passed[0]

    def fastest(self, passed: list[CandidateReport]) -> CandidateReport:
        """The candidate of ``passed`` with the lowest :meth:`speed` (unmeasured ones last), or the
        earliest candidate within the noise of it: whose measure is at most ``1 + tolerance``
        times the lowest, the tolerance being the smaller spread of the two re-timed candidates
        minus one, at least :data:`~aitune_triton.strategies.over_range.TIE_TOLERANCE` and at most
        the noise check's threshold minus one (so two identical tunes keep the same one)."""

        def measure(report: CandidateReport) -> float:
            return or_inf(self.speed(report))

        best = min(passed, key=measure)
        widest = (self.noise_check.threshold if self.noise_check else 1.0) - 1.0
        for report in passed:  # in declared order
            band = max(TIE_TOLERANCE, min((report.spread or 1.0) - 1.0, (best.spread or 1.0) - 1.0, widest))
            if measure(report) <= measure(best) * (1.0 + band):
                return report
        return best

    def rule(self) -> str:
        """One phrase naming the selection rule, for the report."""
        return "the first candidate that passed"

    def speed(self, report: CandidateReport) -> float | None:
        """The strategy's measure of a candidate, lower is better (default: its weighted latency over
        the recorded shapes, ms; the typical shape's in older reports); the speed gate compares it
        with eager's. None: not measured."""
        return report.weighted_latency_ms if report.weighted_latency_ms is not None else report.latencies_ms.get("typical")

    def refusal(self, report: CandidateReport, eager: CandidateReport) -> str | None:
        """Why a candidate that matched eager is not eligible (the speed gate, at every recorded shape
        with ``gate_every_shape``), or None."""
        if not self.gated or self.speed_margin is None or report.backend == EagerBackend.name:
            return None
        slower = shape_refusal(report, eager, self.speed_margin) if self.gate_every_shape else None
        if slower:
            return slower
        mine, theirs = self.speed(report), self.speed(eager)
        if theirs is None:
            return None  # eager itself has no such measure (a latency budget it does not fit): nothing to beat
        if mine is None:
            return f"not measured ({self.rule()}), so it cannot be shown to beat eager"
        if mine <= theirs * (1.0 - self.speed_margin):
            return None
        return (
            f"{mine / theirs:.2f}x eager's time ({self.rule()}); the speed gate needs at most "
            f"{1.0 - self.speed_margin:.2f}x (speed_margin={self.speed_margin:g})"
        )

    def best_batch_size(self, report: CandidateReport) -> int | None:
        """The batch size the kept candidate is served at best (Triton's preferred batch size):
        where the sweep found its throughput stop growing; None when not searched."""
        return report.max_batch_size

    def stop_after(self, report: CandidateReport) -> bool:
        """Whether evaluation can stop after ``report`` (the remaining candidates are "not tried")."""
        return False

    def prunes(self) -> bool:
        """Whether candidates that cannot win are pruned (:mod:`aitune_triton.strategies.pruning`):
        for strategies with the speed gate that select on latency, unless ``prune=False``."""
        return self.prune and self.gated and self.speed_margin is not None and not self.sweeps_every_candidate

    def describe(self) -> str:
        """Short description for logs and reports."""
        names = ", ".join(described(b) for b in self.candidates())
        return f"{type(self).__name__}([{names}])"

    def __repr__(self) -> str:
        return self.describe()


    # ------------------------------------------------------------------------ the life cycle
    def tune(self, context: TuneContext) -> tuple[Backend, GraphTuneReport]:
        """Evaluate the candidates on ``context`` and keep one (see the class docstring).

        The candidates are built for a copy of ``context.graph`` whose batch range is widened to
        the sweep limit; ``context.graph`` itself changes once, at the end: ``dims`` becomes the
        settled range (a new dict) and ``preferred_batch_size`` the kept size. A failure leaves it
        as it was.

        Returns:
            The kept backend (active) and the report of every candidate.

        Raises:
            TuningError: no candidate matched eager (and ``eager`` is not among them, or the
                strategy has no speed gate); the message lists every candidate's reason.
        """
        graph = context.graph
        recorded = dict(graph.dims)
        limit = self._sweep_limit(context)
        building = context.with_dims(widened_dims(recorded, limit)) if limit is not None else context
        every = limit is not None and (self.sweeps_every_candidate or self.batch_sizes is not None)
        measure = Measurements(building, recorded, limit if every else None, self.find_max_batch_size, self.batch_sizes)
        limit_name = "" if limit is None else self._limit_name(context, limit)
        evaluation = Evaluation(self._settings(), building, measure, limit_name)
        eager = evaluation.profile_eager()
        reports: list[CandidateReport] = []
        built: list[Built] = []
        try:
            verdict = self._evaluate_candidates(evaluation, eager, reports, built)
            backend, chosen, decision = self._choose(evaluation, reports, built, eager, verdict)
        except BaseException:
            for candidate, _, workdir in built:
                evaluation.release(candidate, workdir)
            raise
        for candidate, _, workdir in built:
            if candidate is not backend:
                evaluation.release(candidate, workdir)
        for report in reports:  # one line per candidate; the decision follows once
            context.log(f"{graph.name}: {candidate_line(report, eager)}")
        sweep = chosen.batch_sweep
        if limit is not None and not every and backend.name != EagerBackend.name:
            sweep = evaluation.sweep_kept(backend, recorded, limit)
            chosen.batch_sweep, chosen.max_batch_size = sweep, sweep.preferred_batch_size
            chosen.batch_latencies_ms.update(sweep.latencies_ms)
        graph.dims, max_batch = settled_range(recorded, self.best_batch_size(chosen), sweep)
        if max_batch is not None:  # measured; else a declared BatchDim's opt stays (module/recording.py)
            graph.preferred_batch_size = max_batch
        if max_batch is not None:
            low, high = batch_bounds(graph.dims)
            decision += f"; batch sweep: preferred batch size {max_batch}, batch range {low}..{high}"
        context.log(f"{graph.name}: {decision}")
        batch_call = measure.batch(max_batch) if max_batch else None
        batch_ms = chosen.batch_latencies_ms.get(str(max_batch)) if batch_call else chosen.latencies_ms.get("largest")
        layout = measure_layout(
            backend, graph, measure.shapes["typical"], batch_call or context.example,
            seconds=layout_window_s(self.layout_seconds, batch_ms),
            latency_tolerance=self.layout_latency_tolerance, log=context.log, shapes=measure.shapes,
        ) if self.measure_layouts else None
        return backend, GraphTuneReport(
            graph.name, self.describe(), candidate_label(backend), eager.latencies_ms.get("typical", 0.0), reports,
            eager=eager, decision=decision, max_batch_size=max_batch, layout=layout, batch_sweep=sweep,
            shape_weights=dict(measure.weights), **report_fields(verdict),
        )

    def _evaluate_candidates(
        self, evaluation: Evaluation, eager: CandidateReport, reports: list[CandidateReport], built: list[Built]
    ) -> NoiseVerdict | None:
        """Evaluate the candidates in order into ``reports`` (those built into ``built``), applying
        the speed gate, until :meth:`stop_after` says so. When every candidate ran, eager is
        profiled again, the noise check re-times them all, and each built candidate is judged
        against eager's fastest timings. Returns the noise verdict (None: not checked)."""
        candidates = self.candidates()
        pruning = Pruning(evaluation, eager) if self.prunes() else None
        for index, backend in enumerate(candidates):
            workdir = evaluation.workdir(backend)
            report = pruning.evaluate(backend, workdir) if pruning else evaluation.evaluate(backend, workdir)
            reports.append(report)
            if report.status is CandidateStatus.PASSED:
                built.append((backend, report, workdir))
                self._judge(report, eager, None)
                if pruning and report.status is CandidateStatus.PASSED:  # only what the gate passed can rule others out
                    pruning.add_reference(backend, report)
                if report.status is CandidateStatus.TOO_SLOW:
                    later = " (judged again after eager's second pass and the re-timing)" if self.noise_check else ""
                    evaluation.context.log(f"{evaluation.context.graph.name}: {report.backend}: too slow: {report.reason}{later}")
            if self.stop_after(report):
                reports.extend(
                    CandidateReport(candidate_label(b), CandidateStatus.NOT_TRIED, precision=candidate_precision(b))
                    for b in candidates[index + 1 :]
                )
                return None
        if not built:
            return None
        self_spread = evaluation.reprofile_eager(eager)
        verdict = None
        if self.noise_check is not None:
            verdict = check_noise(evaluation, eager, [(r, b.infer) for b, r, _ in built], self_spread, self.noise_check)
        for _, report, _ in built:
            self._judge(report, eager, verdict)
        return verdict

    def _judge(self, report: CandidateReport, eager: CandidateReport, verdict: NoiseVerdict | None) -> None:
        """Set ``report``'s ratios to eager and its status by the speed gate (with the noise verdict
        in the reason of a refusal on unstable measurements)."""
        report.ratios_to_eager = shape_ratios(report, eager)
        refusal = self.refusal(report, eager)
        if refusal and verdict is not None and verdict.noisy:
            refusal += f"; {verdict.summary()}: this ratio may not hold"
        report.status, report.reason = (CandidateStatus.TOO_SLOW, refusal) if refusal else (CandidateStatus.PASSED, "")

    def _choose(
        self, evaluation: Evaluation, reports: list[CandidateReport], built: list[Built], eager: CandidateReport,
        verdict: NoiseVerdict | None = None,
    ) -> tuple[Backend, CandidateReport, str]:
        """``(backend, its report, the decision)``: the selection among the eligible candidates, or eager.

        Raises:
            TuningError: no candidate is eligible and none was refused by the speed gate alone.
        """
        eligible = [r for r in reports if r.status is CandidateStatus.PASSED]
        if not eligible:
            backend, chosen, decision = self._stay_on_eager(evaluation, reports, eager)
        else:
            chosen = self.select(eligible, eager)
            backend = next(b for b, r, _ in built if r is chosen)
            speed, eager_speed = self.speed(chosen), self.speed(eager)
            kept = described(backend)
            if backend.name == EagerBackend.name and len(eligible) == 1 and any(r.status in _NOT_KEPT for r in reports):
                decision = f"kept eager: no other candidate matched eager and passed the speed gate ({self.rule()})"
            else:
                ratio = ""
                if speed is not None and eager_speed and backend.name != EagerBackend.name:
                    ratio = f" ({speed / eager_speed:.2f}x eager's time{range_note(chosen)})"
                strictly = min(eligible, key=lambda r: or_inf(self.speed(r)))
                if strictly is not chosen and or_inf(self.speed(strictly)) < or_inf(speed):
                    faster = described(next(b for b, r, _ in built if r is strictly))
                    ratio += f"; {faster} measured faster, within the noise: the earlier in order is kept"
                decision = f"kept {kept}: {self.rule()}{ratio}"
            for other in eligible:
                if other is not chosen:
                    other.reason = f"{kept} was kept ({self.rule()})"
        decision = with_verdict(decision, verdict)
        chosen.status = CandidateStatus.CHOSEN
        return backend, chosen, decision

    def _stay_on_eager(
        self, evaluation: Evaluation, reports: list[CandidateReport], eager: CandidateReport
    ) -> tuple[Backend, CandidateReport, str]:
        """Eager, when the speed gate refused every candidate that matched eager.

        Raises:
            TuningError: no candidate matched eager, or the strategy has no speed gate.
        """
        if not self.gated or not any(r.status in (CandidateStatus.TOO_SLOW, CandidateStatus.PRUNED) for r in reports):
            reasons = "\n".join(f"  {r.backend}: {r.status}: {r.reason}" for r in reports)
            raise TuningError(f"{evaluation.context.graph.name}: no candidate of {self.describe()} passed:\n{reasons}")
        backend = evaluation.eager_fallback()
        decision = (
            f"no candidate that matched eager was eligible ({self.rule()}, speed_margin={self.speed_margin:g}); "
            "the graph spec stays on eager"
        )
        chosen = CandidateReport(EagerBackend.name, CandidateStatus.CHOSEN, decision, precision="fp32")
        chosen.latencies_ms, chosen.batch_latencies_ms = eager.latencies_ms, eager.batch_latencies_ms
        chosen.latency_ms = eager.latency_ms
        reports.append(chosen)
        return backend, chosen, decision

    def _settings(self) -> EvaluationSettings:
        check = EagerCheck(self.atol, self.rtol, self.accuracy, self.min_accuracy)
        return EvaluationSettings(check, self.profiler, self.batch_gain_threshold, self.keep_artifacts)

    def _sweep_limit(self, context: TuneContext) -> int | None:
        """With ``find_max_batch_size`` (or given batch sizes), the batch size the candidates are
        built for and swept up to (not past a declared BatchDim's max); else None."""
        if not (self.find_max_batch_size or self.batch_sizes) or batch_axes(context.graph) is None:
            return None
        return sweep_limit(context.graph.dims, context.batch_declared, self.max_batch_size_limit)

    def _limit_name(self, context: TuneContext, limit: int) -> str:
        return f"the declared BatchDim max {limit}" if context.batch_declared else f"max_batch_size_limit {limit}"
