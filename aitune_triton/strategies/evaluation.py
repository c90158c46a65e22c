"""The evaluation every strategy shares: build each candidate, check it against eager, profile it,
sweep the kept one's batch sizes. The strategies (:mod:`aitune_triton.strategies.base` and one
file per selection rule) decide only which candidate is kept."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from aitune_triton._warnings import warn
from aitune_triton.backends import Backend, EagerBackend
from aitune_triton.errors import BackendUnavailableError, InvalidArgumentError
from aitune_triton.spec import CallStructure, flatten_output
from aitune_triton.strategies.accuracy import EagerCheck, candidate_label, candidate_precision
from aitune_triton.strategies.batch_sweep import Dims, batch_bounds, short_profiler, sweep_batch_sizes, sweep_sizes
from aitune_triton.strategies.batching import batch_axes, batch_of, batched_call
from aitune_triton.strategies.context import TuneContext
from aitune_triton.strategies.noise import spread
from aitune_triton.strategies.over_range import describe_shape, distinct_shapes, shape_weights, weighted_latency
from aitune_triton.strategies.profiler import Profiler
from aitune_triton.strategies.report import BatchSweep, CandidateReport, CandidateStatus

__all__ = ["Evaluation", "EvaluationSettings", "Measurements", "described", "error_reason"]


def error_reason(error: BaseException) -> str:
    """``Type: message`` without the terminal colour codes exporters put in their messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")


def described(backend: Backend) -> str:
    """The backend's label with its options set (not None) other than precision (``onnxruntime(exporter='torchscript')``)."""
    options = ", ".join(f"{key}={value!r}" for key, value in backend.options.items() if key != "precision" and value is not None)
    return f"{candidate_label(backend)}({options})" if options else candidate_label(backend)


@dataclass(frozen=True)
class EvaluationSettings:
    """The strategy's options the evaluation reads (see :class:`~aitune_triton.strategies.TuneStrategy`).

    Attributes:
        check: How candidates are compared with eager.
        profiler: How candidates are timed.
        batch_gain_threshold: Relative throughput gain under which a batch size sweep stops.
        keep_artifacts: Keep the artifacts of candidates not kept.
    """

    check: EagerCheck
    profiler: Profiler
    batch_gain_threshold: float
    keep_artifacts: bool


class Measurements:
    """The calls every candidate is profiled on: one per shape label, and batches per size.

    Args:
        context: The graph spec's context.
        recorded: The recorded (or declared) ``dims``, before any widening.
        sweep_limit: The largest batch size to time on every candidate; None: only the recorded range.
        searching: Whether every candidate's batch sizes are swept (else timed in full).
        sizes: Batch sizes given by the strategy (profiled in full, the best one recorded).
    """

    def __init__(self, context: TuneContext, recorded: Dims, sweep_limit: int | None, searching: bool, sizes: list[int] | None):
        self.context = context
        samples = list(context.samples) or [context.example]
        ordered = sorted(samples, key=lambda call: sum(t.numel() for t in call.flat.tensors))
        self.shapes: dict[str, CallStructure] = {
            "smallest": ordered[0],
            "typical": ordered[len(ordered) // 2],
            "largest": context.example,
        }
        #: Label -> the label whose call has the same input shapes (timed once; itself when distinct).
        self.owners = distinct_shapes(self.shapes)
        #: Distinct shape label -> its weight (share of recorded calls nearest in size; see over_range).
        self.weights = shape_weights(self.shapes, context.call_sizes or [sum(t.numel() for t in s.flat.tensors) for s in samples])
        self.searching = searching and sweep_limit is not None
        #: Batch sizes given by the strategy (profiled in full, the best one recorded).
        self.explicit = sizes is not None and sweep_limit is not None
        self._batches: dict[int, CallStructure | None] = {}
        self.batch_sizes: list[int] = []
        self.recorded_max = batch_bounds(recorded)[1] if "batch" in recorded else 1
        if batch_axes(context.graph) is None:
            return
        low, high = batch_bounds(recorded)
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

    def weigh(self, report: CandidateReport) -> None:
        """Set ``report``'s typical and weighted latency from its per-shape latencies."""
        report.latency_ms = report.latencies_ms.get("typical")
        report.weighted_latency_ms = weighted_latency(report.latencies_ms, self.weights)


class Evaluation:
    """The shared evaluation of one graph spec's candidates.

    Args:
        settings: The strategy's evaluation options.
        context: The graph spec to tune; its ``graph`` carries the batch range candidates are built
            for (the recorded one widened to the sweep limit when sweeping).
        measure: The calls every candidate is profiled on.
        limit_name: What bounds the batch size sweep, for its stop reason (``max_batch_size_limit 64``).
    """

    def __init__(self, settings: EvaluationSettings, context: TuneContext, measure: Measurements, limit_name: str):
        self.settings = settings
        self.context = context
        self.measure = measure
        self.limit_name = limit_name
        with torch.no_grad():
            self.references = [flatten_output(context.run(*call.args, **call.kwargs)) for call in context.samples]

    def _log(self, line: str) -> None:
        self.context.log(f"{self.context.graph.name}: {line}")

    def profile_eager(self) -> CandidateReport:
        """Eager's own measurements (the reference every candidate is compared with)."""
        self._log("profiling eager")
        eager = CandidateReport(EagerBackend.name, CandidateStatus.REFERENCE)
        with torch.no_grad():
            self.profile(eager, lambda call: EagerBackend.reference(self.context.run, call))
        return eager

    def reprofile_eager(self, eager: CandidateReport) -> float:
        """Profile eager a second time, after the candidates, and keep per shape and batch size the
        faster of its two timings: the first pass ran cold and before the candidates' compilers
        and thread pools came and went, so one pass alone may favour either side; keeping eager's
        faster time makes the speed gate conservative.

        Returns:
            Eager's spread against itself: the slower over the faster pass at its worst shape.
        """
        self._log("profiling eager again")
        again = CandidateReport(EagerBackend.name, CandidateStatus.REFERENCE)
        with torch.no_grad():
            self.profile(again, lambda call: EagerBackend.reference(self.context.run, call))
        spreads = [spread([eager.latencies_ms[label], ms]) for label, ms in again.latencies_ms.items() if label in eager.latencies_ms]
        for first, second in ((eager.latencies_ms, again.latencies_ms), (eager.batch_latencies_ms, again.batch_latencies_ms)):
            for key, value in second.items():
                first[key] = min(first.get(key, value), value)
        self.measure.weigh(eager)
        return max(spreads, default=1.0)

    def workdir(self, backend: Backend) -> Path:
        """A fresh subdirectory per candidate: several configurations of one backend may be evaluated."""
        base = candidate_label(backend).replace("[", "-").replace("]", "")
        name, index = base, 1
        while (self.context.workdir / name).exists():
            index += 1
            name = f"{base}-{index}"
        return self.context.workdir / name

    def evaluate(
        self, backend: Backend, workdir: Path, screen: Callable[[Backend, CandidateReport], str | None] | None = None
    ) -> CandidateReport:
        """Build ``backend`` into ``workdir``, check it against eager and profile it. A build or run
        failure and an unavailable backend are reported (and the candidate released), not raised.
        ``screen``, when given, runs after the build: a reason it returns prunes the candidate
        (status ``pruned``, released, not checked nor profiled; see :mod:`aitune_triton.strategies.pruning`).

        Raises:
            InvalidArgumentError: the strategy's own configuration is wrong (an accuracy metric's result).
        """
        context = self.context
        label, precision = candidate_label(backend), candidate_precision(backend)
        workdir.mkdir(parents=True, exist_ok=True)
        self._log(f"{label}: building")
        start = time.perf_counter()
        report = CandidateReport(label, CandidateStatus.FAILED, precision=precision, options=dict(backend.options))
        try:
            with torch.no_grad():
                backend.build(context.build_context(workdir))
            _drop_index_ranges_recorded_calls_break(backend, context)
        except BackendUnavailableError as error:
            report.status, report.reason, report.build_s = CandidateStatus.UNAVAILABLE, str(error), time.perf_counter() - start
            shutil.rmtree(workdir, ignore_errors=True)
            return report
        except Exception as error:  # export, compile or load failed: report it and try the next candidate
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            report.reason, report.build_s = error_reason(error), time.perf_counter() - start
            return report
        report.build_s = time.perf_counter() - start
        report.options = dict(backend.options)
        check = self.settings.check
        try:
            pruned = screen(backend, report) if screen is not None else None
            if pruned:
                self.release(backend, workdir)
                report.status, report.reason = CandidateStatus.PRUNED, pruned
                self._log(f"{label}: pruned: {pruned}")
                return report
            self._log(
                f"{label}: checking against eager on the {len(context.samples)} stored samples "
                f"(of {context.graph.num_calls} recorded calls)"
            )
            with torch.no_grad():
                check.check(backend, context, self.references, report)
                self._log(f"{label}: profiling")
                self.profile(report, backend.infer, check=lambda call: check.check_batched(backend, context, call))
        except InvalidArgumentError:  # the strategy's own configuration (an accuracy metric's result): the user's to fix
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        except Exception as error:  # a backend failing at run time is a failed candidate, not a crash
            backend.deactivate()
            shutil.rmtree(workdir, ignore_errors=True)
            report.status, report.reason = CandidateStatus.FAILED, error_reason(error)
            return report
        report.status = CandidateStatus.PASSED
        return report

    def profile(
        self, report: CandidateReport, infer: Callable[[CallStructure], Any], check: Callable[[CallStructure], None] | None = None
    ) -> None:
        """Fill ``report``'s latencies per shape and per batch size (sweeping batch sizes when searching)."""
        context, measure, profiler = self.context, self.measure, self.settings.profiler
        for label, call in measure.shapes.items():  # each distinct shape timed once, under its owner label
            owner = measure.owners[label]
            if owner not in report.latencies_ms:
                owned = measure.shapes[owner]
                report.latencies_ms[owner] = profiler.time(lambda: infer(owned), context.device).median_ms
            report.latencies_ms[label] = report.latencies_ms[owner]
            report.shapes[label] = describe_shape(call)
        measure.weigh(report)
        if not measure.batch_sizes:  # no batches to build: the typical call's own batch
            report.batch_latencies_ms = {str(batch_of(context.graph, measure.shapes["typical"])): report.latencies_ms["typical"]}
            return
        if measure.searching:
            sweep, largest = sweep_batch_sizes(
                report.backend, infer, measure.batch, measure.batch_sizes, profiler=profiler, device=context.device,
                gain_threshold=self.settings.batch_gain_threshold, recorded_max=measure.recorded_max,
                limit_name=self.limit_name, log=self._log,
            )
            report.batch_latencies_ms.update(sweep.latencies_ms)
            report.batch_sweep, report.max_batch_size = sweep, sweep.preferred_batch_size
            if check is not None and largest is not None:
                check(largest)
            return
        self._profile_batch_sizes(report, infer, check)

    def _profile_batch_sizes(
        self, report: CandidateReport, infer: Callable[[CallStructure], Any], check: Callable[[CallStructure], None] | None
    ) -> None:
        """Time every batch size of the recorded range (or every size the strategy gave: the fastest is recorded)."""
        measure = self.measure
        best_rate, best_size, last_ok = 0.0, None, None
        for size in measure.batch_sizes:
            batch = measure.batch(size)
            if batch is None:
                break
            call = batch
            try:
                ms = self.settings.profiler.time(lambda: infer(call), self.context.device).median_ms
            except (torch.OutOfMemoryError, MemoryError) as error:
                self._log(f"{report.backend}: batch {size} ran out of memory ({type(error).__name__})")
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

    def sweep_kept(self, backend: Backend, recorded: Dims, limit: int) -> BatchSweep:
        """Sweep the kept candidate's batch sizes up to ``limit`` and compare the largest size run
        with eager; a mismatch there keeps nothing (the recorded range stays). Never raises on a
        backend failure: the kept candidate already passed on the recorded calls."""
        label = candidate_label(backend)
        low, recorded_max = batch_bounds(recorded)
        self._log(f"{label}: batch size sweep up to {limit}")
        sweep = BatchSweep(label)
        try:
            with torch.no_grad():
                sweep, largest = sweep_batch_sizes(
                    label, backend.infer, self.measure.batch, sweep_sizes(low, limit), profiler=short_profiler(self.settings.profiler),
                    device=self.context.device, gain_threshold=self.settings.batch_gain_threshold, recorded_max=recorded_max,
                    limit_name=self.limit_name, log=self._log,
                )
                if largest is not None:
                    self.settings.check.check_batched(backend, self.context, largest)
        except Exception as error:  # a mismatch at the largest size, or a failure on the recorded range
            first_lines = "; ".join(line.strip() for line in error_reason(error).splitlines()[:2])
            sweep.stop_reason = f"the recorded batch range stays: {first_lines[:300]}"  # the timings stay in the record
            sweep.preferred_batch_size = None
        return sweep

    def eager_fallback(self) -> Backend:
        """The eager backend, built, for a graph spec no candidate was eligible for."""
        backend = EagerBackend()
        backend.build(self.context.build_context(self.context.workdir / "eager"))
        return backend

    def release(self, backend: Backend, workdir: Path) -> None:
        """Close a candidate that is not kept; remove its artifacts (``workdir``) unless ``keep_artifacts``."""
        backend.deactivate()
        if not self.settings.keep_artifacts:
            shutil.rmtree(workdir, ignore_errors=True)


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
