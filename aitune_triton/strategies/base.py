"""Tuning strategies: which backends to try for a graph spec, and which one to keep."""

from __future__ import annotations

import abc
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton._warnings import warn
from aitune_triton.backends import Backend, BuildContext, EagerBackend, get_backend_class
from aitune_triton.errors import ArgumentTypeError, BackendUnavailableError, InvalidArgumentError, OutputMismatchError, TuningError
from aitune_triton.spec import CallStructure, DimRange, FlatTree, ForwardSignature, GraphSpec, flatten_output, output_leaves
from aitune_triton.strategies.batch_sweep import settled_dims, short_profiler, sweep_batch_sizes, sweep_sizes, widened_dims
from aitune_triton.strategies.batching import batch_axes, batch_of, batched_call
from aitune_triton.strategies.layout import DEFAULT_LATENCY_TOLERANCE, measure_layout
from aitune_triton.strategies.profiler import Profiler
from aitune_triton.strategies.report import BatchSweep, CandidateReport, GraphTuneReport
from aitune_triton.strategies.validation import compare_outputs, raise_on_mismatch

__all__ = [
    "PRECISION_TOLERANCES",
    "AccuracyMetric",
    "CandidateReport",
    "GraphTuneReport",
    "TuneContext",
    "BackendListStrategy",
    "TuneStrategy",
    "resolve_backend",
    "resolve_backends",
]

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
    if isinstance(backend, type) and issubclass(backend, Backend):
        raise ArgumentTypeError(
            f"backend: got the class {backend.__name__}; pass an instance ({backend.__name__}(...)) or its registered name"
        )
    raise ArgumentTypeError(
        f"backend: expected a registered backend name or a Backend instance, got {type(backend).__name__}"
    )


def resolve_backends(backends: Sequence[str | Backend]) -> list[Backend]:
    """Fresh backends for a strategy's candidate list (see :func:`resolve_backend`).

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is a single name or backend, or empty.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
        ArgumentTypeError: (a TypeError) an entry is neither a name nor a Backend.
    """
    if isinstance(backends, (str, Backend)) or not backends:
        raise InvalidArgumentError(
            f"backends: expected a non-empty list of backend names or instances, got {backends!r}; "
            "wrap a single backend in a list, or use OneBackendStrategy"
        )
    return [resolve_backend(b) for b in backends]


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
        batch_declared: Whether the batch axis was declared with ``BatchDim`` (its max then caps
            the batch size sweep).
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
    batch_declared: bool = False

    @property
    def run(self) -> Callable[..., Any]:
        """The forward eager references run (:attr:`forward`, else ``module.forward``)."""
        return self.forward or self.module.forward

    def build_context(self, workdir: Path) -> BuildContext:
        """What a candidate backend needs to build for this graph spec, its artifacts in ``workdir``."""
        return BuildContext(self.module, self.signature, self.graph, self.example, workdir, self.device, self.log, self.forward)


def _reason(error: Exception) -> str:
    """``Type: message`` without the terminal colour codes exporters put in their messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")


#: Per lower precision: ``(atol, rtol)`` of the accuracy gate when the strategy has no accuracy
#: metric. Elementwise bounds on network outputs: fp16 keeps about 3 significant decimal digits
#: and bf16 about 2, and errors add up over layers; int8 dynamic quantization moves outputs by a
#: few percent of their range. These are coarse on purpose: judge lower precision with a metric on
#: real inputs (``accuracy=``), e.g. cosine similarity of embeddings.
PRECISION_TOLERANCES: dict[str, tuple[float, float]] = {"fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2), "int8": (1e-1, 1e-1)}

#: ``accuracy(eager_output, tuned_output)`` for one sample (both the module's output structure):
#: True/False, or a score that must reach the strategy's ``min_accuracy``.
AccuracyMetric = Callable[[Any, Any], Any]


def _check_fraction(option: str, value: float | None, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        expected = "a fraction in [0, 1) or None" if allow_none else "a fraction in [0, 1)"
        hint = f" (a fraction: {value / 100:g} for {value:g}%)" if isinstance(value, (int, float)) and 1 <= value < 100 else ""
        raise InvalidArgumentError(f"{option}: expected {expected}, got {value!r}{hint}")


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
       largest recorded shape (by input elements), and per batch size the latency of one call,
       from which the throughput follows (batches built from recorded samples, for graph specs
       whose samples proved independent along the batch axis).
    4. **Speed gate** (every strategy but :class:`OneBackendStrategy`): a candidate is kept only
       when it beats eager by ``speed_margin`` (default 1%) on the strategy's own measure
       (latency at the typical shape; throughput for the throughput strategies). The ``eager``
       backend, when listed, is exempt. Eager is profiled before the candidates and again after
       them (when every candidate was evaluated), and its faster timing per shape is the one
       compared. When no candidate passes, the graph spec stays on eager and the report says why.

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
        layout_seconds: Throughput window per layout and round, in seconds.
        layout_latency_tolerance: The layout rule's tolerance: the highest throughput among the
            layouts within this fraction of the best single-stream latency (0.1: 10%).

    Raises:
        InvalidArgumentError: (a ValueError) a tolerance is negative, ``speed_margin`` or
            ``batch_gain_threshold`` is outside [0, 1), ``max_batch_size_limit`` is not a positive
            integer, ``accuracy`` is not callable, ``profiler`` is not a Profiler, or a layout
            option has the wrong type or range.
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
    ):
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (atol, rtol)) or atol < 0 or rtol < 0:
            raise InvalidArgumentError(f"atol/rtol: expected non-negative tolerances, got atol={atol!r}, rtol={rtol!r}")
        _check_fraction("speed_margin", speed_margin, allow_none=True)
        _check_fraction("batch_gain_threshold", batch_gain_threshold, allow_none=False)
        if accuracy is not None and not callable(accuracy):
            raise InvalidArgumentError(f"accuracy: expected a callable (eager, tuned) -> bool or score, got {accuracy!r}")
        if min_accuracy is not None and (not isinstance(min_accuracy, (int, float)) or isinstance(min_accuracy, bool)):
            raise InvalidArgumentError(f"min_accuracy: expected a number or None, got {min_accuracy!r}")
        if min_accuracy is not None and accuracy is None:
            raise InvalidArgumentError(
                f"min_accuracy: given ({min_accuracy!r}) without accuracy=; pass the metric it applies to "
                "(accuracy=lambda eager, tuned: score) or drop min_accuracy"
            )
        if not isinstance(max_batch_size_limit, int) or isinstance(max_batch_size_limit, bool) or max_batch_size_limit < 1:
            raise InvalidArgumentError(f"max_batch_size_limit: expected a positive integer, got {max_batch_size_limit!r}")
        if profiler is not None and not isinstance(profiler, Profiler):
            raise InvalidArgumentError(f"profiler: expected an aitune_triton.strategies.Profiler, got {type(profiler).__name__}")
        self.atol = atol
        self.rtol = rtol
        self.speed_margin = speed_margin
        self.accuracy = accuracy
        self.min_accuracy = min_accuracy
        if not isinstance(find_max_batch_size, bool):
            raise InvalidArgumentError(f"find_max_batch_size: expected True or False, got {find_max_batch_size!r}")
        self.find_max_batch_size = find_max_batch_size
        self.max_batch_size_limit = max_batch_size_limit
        self.batch_gain_threshold = batch_gain_threshold
        self.profiler = profiler or Profiler()
        self.keep_artifacts = keep_artifacts
        if not isinstance(measure_layouts, bool):
            raise InvalidArgumentError(f"measure_layouts: expected True or False, got {measure_layouts!r}")
        if not isinstance(layout_seconds, (int, float)) or isinstance(layout_seconds, bool) or not layout_seconds > 0:
            raise InvalidArgumentError(f"layout_seconds: expected a positive number of seconds, got {layout_seconds!r}")
        _check_fraction("layout_latency_tolerance", layout_latency_tolerance, allow_none=False)
        self.measure_layouts = measure_layouts
        self.layout_seconds = float(layout_seconds)
        self.layout_latency_tolerance = layout_latency_tolerance
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
        """The candidate of ``passed`` with the lowest :meth:`speed` (unmeasured ones last; a tie
        keeps the earlier candidate)."""

        def measure(report: CandidateReport) -> float:
            value = self.speed(report)
            return math.inf if value is None else value

        return min(passed, key=measure)

    def rule(self) -> str:
        """One phrase naming the selection rule, for the report."""
        return "the first candidate that passed"

    def speed(self, report: CandidateReport) -> float | None:
        """The strategy's measure of a candidate, lower is better (default: median latency at the
        typical shape, ms); the speed gate compares it with eager's. None: not measured."""
        return report.latencies_ms.get("typical")

    def refusal(self, report: CandidateReport, eager: CandidateReport) -> str | None:
        """Why a candidate that matched eager is not eligible (the speed gate), or None."""
        if not self.gated or self.speed_margin is None or report.backend == EagerBackend.name:
            return None
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

    def describe(self) -> str:
        """Short description for logs and reports."""
        names = ", ".join(_described(b) for b in self.candidates())
        return f"{type(self).__name__}([{names}])"

    def __repr__(self) -> str:
        return self.describe()

    # ------------------------------------------------------------------------ the evaluation
    def tune(self, context: TuneContext) -> tuple[Backend, GraphTuneReport]:
        """Evaluate the candidates on ``context`` and keep one (see the class docstring).

        Returns:
            The kept backend (active) and the report of every candidate.

        Raises:
            TuningError: no candidate matched eager (and ``eager`` is not among them, or the
                strategy has no speed gate); the message lists every candidate's reason.
        """
        graph = context.graph
        original_dims = dict(graph.dims)
        sweep_limit = self._widen_batch_range(context)
        every = sweep_limit is not None and (self.sweeps_every_candidate or self.batch_sizes is not None)
        with torch.no_grad():
            references = [flatten_output(context.run(*call.args, **call.kwargs)) for call in context.samples]
        measure = _Measurements(context, original_dims, sweep_limit if every else None, self.find_max_batch_size, self.batch_sizes)
        context.log(f"{graph.name}: profiling eager")
        eager = CandidateReport(EagerBackend.name, "reference")
        with torch.no_grad():
            self._profile(eager, lambda call: EagerBackend.reference(context.run, call), context, measure)
        reports: list[CandidateReport] = []
        built: list[tuple[Backend, CandidateReport, Path]] = []
        candidates = self.candidates()
        try:
            for index, backend in enumerate(candidates):
                workdir = context.workdir / _workdir_name(backend, context)
                report = self._evaluate(backend, context, references, measure, workdir)
                reports.append(report)
                if report.status == "passed":
                    built.append((backend, report, workdir))
                    refusal = self.refusal(report, eager)
                    if refusal:
                        report.status, report.reason = "too slow", refusal
                        context.log(f"{graph.name}: {report.backend}: too slow: {refusal}")
                if self.stop_after(report):
                    reports.extend(CandidateReport(_label(b), "not tried", precision=_precision(b)) for b in candidates[index + 1 :])
                    break
            else:
                if built:  # every candidate ran: time eager again and judge them all against its faster timings
                    self._reprofile_eager(eager, context, measure)
                    for _, report, _ in built:
                        refusal = self.refusal(report, eager)
                        report.status, report.reason = ("too slow", refusal) if refusal else ("passed", "")
            eligible = [r for r in reports if r.status == "passed"]
            chosen_report = self.select(eligible, eager) if eligible else None
            if chosen_report is None:
                if not self.gated or not any(r.status == "too slow" for r in reports):
                    reasons = "\n".join(f"  {r.backend}: {r.status}: {r.reason}" for r in reports)
                    raise TuningError(f"{graph.name}: no candidate of {self.describe()} passed:\n{reasons}")
                backend = self._eager_fallback(context)
                decision = (
                    f"no candidate that matched eager was eligible ({self.rule()}, speed_margin={self.speed_margin:g}); "
                    "the graph spec stays on eager"
                )
                chosen_report = CandidateReport(EagerBackend.name, "chosen", decision, precision="fp32")
                chosen_report.latencies_ms, chosen_report.batch_latencies_ms = eager.latencies_ms, eager.batch_latencies_ms
                chosen_report.latency_ms = eager.latency_ms
                reports.append(chosen_report)
            else:
                backend = next(b for b, r, _ in built if r is chosen_report)
                speed, eager_speed = self.speed(chosen_report), self.speed(eager)
                kept = _described(backend)
                if backend.name == EagerBackend.name and any(r.status in ("too slow", "failed") for r in reports):
                    decision = f"kept eager: no other candidate matched eager and passed the speed gate ({self.rule()})"
                else:
                    ratio = ""
                    if speed is not None and eager_speed and backend.name != EagerBackend.name:
                        ratio = f" ({speed / eager_speed:.2f}x eager's time)"
                    decision = f"kept {kept}: {self.rule()}{ratio}"
                for other in eligible:
                    if other is not chosen_report:
                        other.reason = f"{kept} was kept ({self.rule()})"
            chosen_report.status = "chosen"
        except BaseException:
            for candidate, _, workdir in built:
                self._release(candidate, workdir)
            graph.dims = original_dims
            raise
        for candidate, _, workdir in built:
            if candidate is not backend:
                self._release(candidate, workdir)
        sweep = chosen_report.batch_sweep
        if sweep_limit is not None and not every and backend.name != EagerBackend.name:
            sweep = self._sweep_kept(backend, context, measure, original_dims, sweep_limit)
            chosen_report.batch_sweep, chosen_report.max_batch_size = sweep, sweep.preferred_batch_size
            chosen_report.batch_latencies_ms.update(sweep.latencies_ms)
        max_batch = self._settle_batch_range(context, original_dims, chosen_report, sweep)
        if max_batch is not None:
            low, high = graph.dims["batch"].min, graph.dims["batch"].max
            decision += f"; batch sweep: preferred batch size {max_batch}, batch range {low}..{high}"
        context.log(f"{graph.name}: {decision}")
        layout = measure_layout(
            backend, graph, measure.shapes["typical"], (measure.batch(max_batch) if max_batch else None) or context.example,
            seconds=self.layout_seconds, latency_tolerance=self.layout_latency_tolerance, log=context.log,
        ) if self.measure_layouts else None
        return backend, GraphTuneReport(
            graph.name, self.describe(), _label(backend), eager.latencies_ms.get("typical", 0.0), reports,
            eager=eager, decision=decision, max_batch_size=max_batch, layout=layout, batch_sweep=sweep,
        )

    def _sweep_kept(
        self, backend: Backend, context: TuneContext, measure: "_Measurements", original: dict[str, DimRange], limit: int
    ) -> BatchSweep:
        """Sweep the kept candidate's batch sizes up to ``limit`` and compare the largest size run
        with eager; a mismatch there keeps nothing (the recorded range stays). Never raises on a
        backend failure: the kept candidate already passed on the recorded calls."""
        graph, label = context.graph, _label(backend)
        low, recorded_max = original["batch"].min, original["batch"].max
        context.log(f"{graph.name}: {label}: batch size sweep up to {limit}")
        sweep = BatchSweep(label)
        try:
            with torch.no_grad():
                sweep, largest = sweep_batch_sizes(
                    label, backend.infer, measure.batch, sweep_sizes(low, limit), profiler=short_profiler(self.profiler),
                    device=context.device, gain_threshold=self.batch_gain_threshold, recorded_max=recorded_max,
                    limit_name=self._limit_name(context, limit), log=lambda line: context.log(f"{graph.name}: {line}"),
                )
                if largest is not None:
                    self._check_batched(backend, context, largest)
        except Exception as error:  # a mismatch at the largest size, or a failure on the recorded range
            first_lines = "; ".join(line.strip() for line in _reason(error).splitlines()[:2])
            sweep.stop_reason = f"the recorded batch range stays: {first_lines[:300]}"  # the timings stay in the record
            sweep.preferred_batch_size = None
        return sweep

    def _limit_name(self, context: TuneContext, limit: int) -> str:
        return f"the declared BatchDim max {limit}" if context.batch_declared else f"max_batch_size_limit {limit}"

    def _evaluate(
        self, backend: Backend, context: TuneContext, references: Sequence[FlatTree], measure: "_Measurements", workdir: Path
    ) -> CandidateReport:
        graph = context.graph
        label, precision = _label(backend), _precision(backend)
        workdir.mkdir(parents=True, exist_ok=True)
        context.log(f"{graph.name}: {label}: building")
        start = time.perf_counter()
        build = context.build_context(workdir)
        report = CandidateReport(label, "failed", precision=precision, options=dict(backend.options))
        try:
            with torch.no_grad():
                backend.build(build)
            _drop_index_ranges_recorded_calls_break(backend, context)
        except BackendUnavailableError as error:
            report.status, report.reason, report.build_s = "unavailable", str(error), time.perf_counter() - start
            shutil.rmtree(workdir, ignore_errors=True)
            return report
        except Exception as error:  # export, compile or load failed: report it and try the next candidate
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            report.reason, report.build_s = _reason(error), time.perf_counter() - start
            return report
        report.build_s = time.perf_counter() - start
        report.options = dict(backend.options)
        try:
            context.log(
                f"{graph.name}: {label}: checking against eager on the {len(context.samples)} stored samples "
                f"(of {graph.num_calls} recorded calls)"
            )
            with torch.no_grad():
                self._check(backend, context, references, report)
                context.log(f"{graph.name}: {label}: profiling")
                self._profile(report, backend.infer, context, measure, check=lambda call: self._check_batched(backend, context, call))
        except InvalidArgumentError:  # the strategy's own configuration (an accuracy metric's result): the user's to fix
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        except Exception as error:  # a backend failing at run time is a failed candidate, not a crash
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            report.status, report.reason = "failed", _reason(error)
            return report
        report.status = "passed"
        return report

    def _reprofile_eager(self, eager: CandidateReport, context: TuneContext, measure: "_Measurements") -> None:
        """Profile eager a second time, after the candidates, and keep per shape and batch size the
        faster of its two timings: the first pass ran cold and before the candidates' compilers
        and thread pools came and went, so one pass alone may favour either side; keeping eager's
        faster time makes the speed gate conservative."""
        context.log(f"{context.graph.name}: profiling eager again")
        again = CandidateReport(EagerBackend.name, "reference")
        with torch.no_grad():
            self._profile(again, lambda call: EagerBackend.reference(context.run, call), context, measure)
        for first, second in ((eager.latencies_ms, again.latencies_ms), (eager.batch_latencies_ms, again.batch_latencies_ms)):
            for key, value in second.items():
                first[key] = min(first.get(key, value), value)
        eager.latency_ms = eager.latencies_ms.get("typical")

    def _check(self, backend: Backend, context: TuneContext, references: Sequence[FlatTree], report: CandidateReport) -> None:
        """Compare ``backend`` with eager on every sample; raise :class:`OutputMismatchError` listing
        every mismatch. Sets ``report.max_abs_diff`` (and ``report.accuracy`` with a metric)."""
        graph = context.graph
        precision = report.precision
        atol, rtol = self._tolerances(precision)
        metric = self.accuracy if precision != "fp32" else None
        mismatches: list[str] = []
        worst, scores = 0.0, []
        for index, (call, reference) in enumerate(zip(context.samples, references)):
            label = f"sample {index}: "
            if reference.treespec != graph.output_treespec:
                mismatches.append(f"{label}eager returned another output structure than recorded: {reference.treespec}")
                worst = float("inf")
                continue
            # Every leaf, non-tensor ones included: those come back from the recorded template.
            actual = output_leaves(graph.output_template, backend.infer(call))
            if metric is not None:
                score = metric(
                    pytree.tree_unflatten(list(reference.leaves), reference.treespec),
                    pytree.tree_unflatten(list(actual), graph.output_treespec),
                )
                value, problem = self._judge(score)
                scores.append(value)
                if problem:
                    mismatches.append(f"{label}{problem}")
                _, diff = compare_outputs(reference.leaves, actual, reference.paths, float("inf"), 0.0, label)
            else:
                found, diff = compare_outputs(reference.leaves, actual, reference.paths, atol, rtol, label)
                mismatches.extend(found)
            worst = max(worst, diff)
        # Non-finite when a non-tensor or integer leaf differs: JSON has no Infinity, the reason says what differs.
        report.max_abs_diff = worst if math.isfinite(worst) else None
        report.accuracy = min(scores) if scores else None
        if metric is not None and mismatches:
            raise OutputMismatchError(f"{report.backend}: failed the accuracy gate (accuracy=, min_accuracy=)", mismatches)
        raise_on_mismatch(report.backend, mismatches)

    def _judge(self, score: Any) -> tuple[float, str | None]:
        """``(value, problem)`` of one accuracy metric result."""
        if isinstance(score, torch.Tensor) and score.numel() == 1:
            score = score.item()
        if isinstance(score, bool):
            return float(score), None if score else "the accuracy metric returned False"
        if isinstance(score, (int, float)):
            if self.min_accuracy is None:
                raise InvalidArgumentError(
                    f"accuracy: returned the score {score!r}, but min_accuracy is None; pass min_accuracy= (the score "
                    "every sample must reach) or return True/False"
                )
            return float(score), None if score >= self.min_accuracy else f"accuracy {score:.7g} < min_accuracy {self.min_accuracy:.7g}"
        raise InvalidArgumentError(f"accuracy: expected the metric to return a bool or a number, got {type(score).__name__}")

    def _check_batched(self, backend: Backend, context: TuneContext, call: CallStructure) -> None:
        """Compare ``backend`` with eager on a built batch (the largest size of the batch sweep)."""
        reference = flatten_output(context.run(*call.args, **call.kwargs))
        actual = output_leaves(context.graph.output_template, backend.infer(call))
        precision = _precision(backend)
        if precision != "fp32" and self.accuracy is not None:
            return  # judged on the recorded samples; a metric may need real rows, not repeated ones
        atol, rtol = self._tolerances(precision)
        label = f"batch of {batch_of(context.graph, call)}: "
        found, _ = compare_outputs(reference.leaves, actual, reference.paths, atol, rtol, label)
        raise_on_mismatch(_label(backend), found)

    def _profile(
        self,
        report: CandidateReport,
        infer: Callable[[CallStructure], Any],
        context: TuneContext,
        measure: "_Measurements",
        check: Callable[[CallStructure], None] | None = None,
    ) -> None:
        """Fill ``report``'s latencies per shape and per batch size (sweeping batch sizes when searching)."""
        timings: dict[int, float] = {}
        for label, call in measure.shapes.items():
            timing = timings.get(id(call))
            if timing is None:
                timing = timings[id(call)] = self.profiler.time(lambda: infer(call), context.device).median_ms
            report.latencies_ms[label] = timing
        report.latency_ms = report.latencies_ms.get("typical")
        if not measure.batch_sizes:  # no batches to build: the typical call's own batch
            report.batch_latencies_ms = {str(batch_of(context.graph, measure.shapes["typical"])): report.latencies_ms["typical"]}
            return
        if measure.searching:
            sweep, largest = sweep_batch_sizes(
                report.backend, infer, measure.batch, measure.batch_sizes, profiler=self.profiler, device=context.device,
                gain_threshold=self.batch_gain_threshold, recorded_max=measure.recorded_max,
                limit_name=self._limit_name(context, measure.batch_sizes[-1]), log=lambda line: context.log(f"{context.graph.name}: {line}"),
            )
            report.batch_latencies_ms.update(sweep.latencies_ms)
            report.batch_sweep, report.max_batch_size = sweep, sweep.preferred_batch_size
            if check is not None and largest is not None:
                check(largest)
            return
        best_rate, best_size, last_ok = 0.0, None, None
        for size in measure.batch_sizes:
            batch = measure.batch(size)
            if batch is None:
                break
            call = batch
            try:
                ms = self.profiler.time(lambda: infer(call), context.device).median_ms
            except (torch.OutOfMemoryError, MemoryError) as error:
                context.log(f"{context.graph.name}: {report.backend}: batch {size} ran out of memory ({type(error).__name__})")
                break
            report.batch_latencies_ms[str(size)] = ms
            last_ok = call
            rate = size * 1000.0 / ms
            if measure.explicit and rate > best_rate:  # given sizes: all profiled, the fastest kept
                best_rate, best_size = rate, size
        if measure.explicit and best_size is not None:
            report.max_batch_size = best_size
            if check is not None and last_ok is not None:
                check(last_ok)

    # --------------------------------------------------------------------------- batch range
    def _widen_batch_range(self, context: TuneContext) -> int | None:
        """With ``find_max_batch_size`` (or given batch sizes), give the graph spec a new ``dims``
        whose batch range reaches the sweep limit (not past a declared BatchDim's max) so that every
        candidate is built for it; return the limit. The old dict is not changed: the caller keeps
        it to restore or settle from."""
        graph = context.graph
        if not (self.find_max_batch_size or self.batch_sizes) or batch_axes(graph) is None:
            return None
        high = graph.dims["batch"].max
        limit = high if context.batch_declared else max(high, self.max_batch_size_limit)
        graph.dims = widened_dims(graph.dims, limit)
        return limit

    def _settle_batch_range(
        self, context: TuneContext, original: dict[str, DimRange], chosen: CandidateReport, sweep: BatchSweep | None
    ) -> int | None:
        """After the sweep: the batch range reaches the chosen candidate's best size (never below the
        recorded or declared range) and ``sweep`` records what was kept; without a measured size the
        graph spec gets its recorded ``dims`` back. Returns the preferred batch size."""
        graph = context.graph
        best = self.best_batch_size(chosen)
        if best is None or "batch" not in original:
            graph.dims = dict(original)
            graph.preferred_batch_size = None
            if sweep is not None:
                sweep.preferred_batch_size = sweep.max_batch_size = None
            return None
        graph.dims = settled_dims(original, best)
        graph.preferred_batch_size = best
        if sweep is not None:
            sweep.preferred_batch_size, sweep.max_batch_size = best, graph.dims["batch"].max
        return best

    # ------------------------------------------------------------------------------- helpers
    def _tolerances(self, precision: str) -> tuple[float, float]:
        """``(atol, rtol)`` of the elementwise check: the strategy's for fp32, else the precision's
        documented one (:data:`PRECISION_TOLERANCES`)."""
        if precision == "fp32":
            return self.atol, self.rtol
        return PRECISION_TOLERANCES.get(precision, (self.atol, self.rtol))

    def _eager_fallback(self, context: TuneContext) -> Backend:
        backend = EagerBackend()
        backend.build(context.build_context(context.workdir / "eager"))
        return backend

    def _release(self, backend: Backend, workdir: Path) -> None:
        """Close a candidate that is not kept; remove its artifacts (``workdir``) unless ``keep_artifacts``."""
        backend.deactivate()
        if not self.keep_artifacts:
            shutil.rmtree(workdir, ignore_errors=True)


class BackendListStrategy(TuneStrategy):
    """A strategy over a list of candidate backends, evaluated in the given order.

    Args:
        backends: Registered names or configured Backend instances.
        atol: Absolute tolerance of the eager check.
        rtol: Relative tolerance of the eager check.
        **options: The evaluation options of :class:`TuneStrategy`.

    Raises:
        InvalidArgumentError: (a ValueError) ``backends`` is empty or a single backend.
        UnknownBackendError: (a ValueError) an entry names an unknown backend.
        ArgumentTypeError: (a TypeError) an entry is neither a name nor a Backend.
    """

    def __init__(self, backends: Sequence[str | Backend], atol: float = 1e-4, rtol: float = 1e-4, **options: Any):
        super().__init__(atol=atol, rtol=rtol, **options)
        self._backends = resolve_backends(backends)

    def candidates(self) -> list[Backend]:
        """Fresh copies of the given backends, in the given order."""
        return [b.clone() for b in self._backends]


class _Measurements:
    """The calls every candidate is profiled on: one per shape label, and batches per size."""

    def __init__(
        self, context: TuneContext, recorded: dict[str, DimRange], sweep_limit: int | None, searching: bool, sizes: list[int] | None
    ):
        self.context = context
        samples = list(context.samples) or [context.example]
        ordered = sorted(samples, key=lambda call: sum(t.numel() for t in call.flat.tensors))
        self.shapes: dict[str, CallStructure] = {
            "smallest": ordered[0],
            "typical": ordered[len(ordered) // 2],
            "largest": context.example,
        }
        self.searching = searching and sweep_limit is not None
        #: Batch sizes given by the strategy (profiled in full, the best one recorded).
        self.explicit = sizes is not None and sweep_limit is not None
        self._batches: dict[int, CallStructure | None] = {}
        self.batch_sizes: list[int] = []
        graph = context.graph
        self.recorded_max = recorded["batch"].max if "batch" in recorded else 1
        if batch_axes(graph) is None:
            return
        low, high = recorded["batch"].min, recorded["batch"].max
        limit = sweep_limit if sweep_limit is not None else high
        if sizes is not None:
            self.batch_sizes = [size for size in sizes if low <= size <= limit]
            return
        self.batch_sizes = sweep_sizes(low, limit)

    def batch(self, size: int) -> CallStructure | None:
        """A call of ``size`` rows with the typical shape's per-sample shapes (built once)."""
        if size not in self._batches:
            context = self.context
            self._batches[size] = batched_call(context.signature, context.graph, context.samples, self.shapes["typical"], size)
        return self._batches[size]


def _precision(backend: Backend) -> str:
    return str(backend.options.get("precision", "fp32"))


def _label(backend: Backend) -> str:
    """The backend's name, with its precision when not fp32 (``onnxruntime[int8]``)."""
    precision = _precision(backend)
    return backend.name if precision == "fp32" else f"{backend.name}[{precision}]"


def _described(backend: Backend) -> str:
    """The backend's label with its options set (not None) other than precision (``onnxruntime(exporter='torchscript')``)."""
    options = ", ".join(f"{key}={value!r}" for key, value in backend.options.items() if key != "precision" and value is not None)
    return f"{_label(backend)}({options})" if options else _label(backend)


def _workdir_name(backend: Backend, context: TuneContext) -> str:
    """A fresh subdirectory name per candidate: several configurations of one backend may be evaluated."""
    base = _label(backend).replace("[", "-").replace("]", "")
    name, index = base, 1
    while (context.workdir / name).exists():
        index += 1
        name = f"{base}-{index}"
    return name


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
