"""The tuning report: what every candidate measured, and why one was kept."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

from aitune_triton.strategies.layout import LayoutReport

__all__ = ["BatchSweep", "CandidateReport", "CandidateStatus", "GraphTuneReport", "candidate_line", "graph_summary", "report_table"]

#: Shape labels of the latencies profiled per candidate, in report order.
SHAPES = ("smallest", "typical", "largest")


class CandidateStatus(enum.StrEnum):
    """What happened to one candidate backend. A ``str`` enum: the report JSON and the printed
    table hold its value (``"too slow"``), and a value read back from JSON compares equal to it."""

    #: Matched eager, passed the speed gate and was kept.
    CHOSEN = "chosen"
    #: Matched eager and passed the speed gate; another candidate was kept.
    PASSED = "passed"
    #: Matched eager but failed the speed gate or the latency budget.
    TOO_SLOW = "too slow"
    #: The build, the check against eager or a run failed.
    FAILED = "failed"
    #: The backend cannot run on the device here (a missing package, no CUDA).
    UNAVAILABLE = "unavailable"
    #: Not evaluated: the strategy stopped before it (``FirstWinsStrategy``).
    NOT_TRIED = "not tried"
    #: Not checked nor profiled (or not built): a cheap measure showed it cannot be kept
    #: (:mod:`aitune_triton.strategies.pruning`); the reason gives the ratios.
    PRUNED = "pruned"
    #: Eager's own measurements, the reference every candidate is compared with.
    REFERENCE = "reference"


@dataclass
class BatchSweep:
    """A batch size sweep: the sizes tried on one backend, where it stopped and what it kept.

    Attributes:
        backend: The backend swept (its label, ``onnxruntime`` or ``onnxruntime[int8]``).
        latencies_ms: Batch size tried (as a string, JSON keys) -> median latency of one call at
            that size, in milliseconds, in the order tried (batches built from recorded samples).
        stop_reason: Why the sweep stopped: the throughput gain under ``batch_gain_threshold``,
            out of memory, a failure at a size above the recorded range, the limit reached
            (``max_batch_size_limit`` or a declared ``BatchDim`` max), or the largest size not
            matching eager.
        checked_batch_size: The largest size that ran, compared with eager (None: none ran).
        preferred_batch_size: The size with the best throughput before it stopped growing
            (Triton's ``dynamic_batching.preferred_batch_size``); None when the sweep kept nothing.
        max_batch_size: The batch range's upper bound kept (Triton's ``max_batch_size``): the
            preferred size, never below the recorded or declared range; None when the sweep kept
            nothing and the recorded range stays.
    """

    backend: str
    latencies_ms: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""
    checked_batch_size: int | None = None
    preferred_batch_size: int | None = None
    max_batch_size: int | None = None

    @property
    def throughput(self) -> dict[int, float]:
        """Batch size -> samples per second."""
        return {int(size): int(size) * 1000.0 / ms for size, ms in self.latencies_ms.items() if ms > 0}

    def summary(self) -> str:
        """One line: samples/s per size, why it stopped, what was kept."""
        rates = ", ".join(f"{size}: {rate:.4g}/s" for size, rate in self.throughput.items())
        kept = (
            f"max_batch_size {self.max_batch_size}, preferred {self.preferred_batch_size}"
            if self.max_batch_size is not None else "the recorded batch range stays"
        )
        return f"batch sweep of {self.backend} ({rates}): stopped: {self.stop_reason}; {kept}"

    @classmethod
    def from_dict(cls, data: Any) -> "BatchSweep | None":
        """Rebuild from ``asdict`` output; None for None (reports written before sweeps were stored)."""
        if not isinstance(data, dict):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class CandidateReport:
    """What happened to one candidate backend.

    Attributes:
        backend: Backend name.
        status: What happened to it (:class:`CandidateStatus`; a string given is converted).
        reason: Why it failed, was unavailable, too slow, or not chosen.
        build_s: Build time in seconds.
        latency_ms: Median latency at the typical recorded shape, in milliseconds.
        max_abs_diff: Largest abs difference to eager over all samples and output leaves.
        precision: The backend's precision (``"fp32"``, ``"int8"``...).
        options: The backend's options.
        latencies_ms: Median latency per recorded shape (``"smallest"``, ``"typical"``,
            ``"largest"``: by total input elements), in milliseconds.
        batch_latencies_ms: Batch size (as a string, JSON keys) -> median latency of one call at
            that batch size, in milliseconds; throughput is ``batch / latency``.
        accuracy: The accuracy metric's worst value over the samples (lower precision with a
            user metric), else None.
        max_batch_size: The batch size where throughput stopped growing, when searched.
        batch_sweep: The batch size sweep of this candidate, when it was swept.
        shapes: Shape label -> the input shapes it was timed at (``x: 32x4``).
        weighted_latency_ms: The latency over the recorded range: per distinct shape its median
            latency times its weight (the share of recorded calls nearest in size to it, see
            :mod:`aitune_triton.strategies.over_range`), summed, in milliseconds.
        ratios_to_eager: Shape label -> its latency over eager's at that shape.
        spread: Slowest over fastest of its re-timed rounds, at its worst shape (None: not re-timed).
    """

    backend: str
    status: CandidateStatus
    reason: str = ""
    build_s: float = 0.0
    latency_ms: float | None = None
    max_abs_diff: float | None = None
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    latencies_ms: dict[str, float] = field(default_factory=dict)
    batch_latencies_ms: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    max_batch_size: int | None = None
    batch_sweep: BatchSweep | None = None
    shapes: dict[str, str] = field(default_factory=dict)
    weighted_latency_ms: float | None = None
    ratios_to_eager: dict[str, float] = field(default_factory=dict)
    spread: float | None = None

    def __post_init__(self) -> None:
        # Reports read back from JSON hold the status as a string.
        self.status = CandidateStatus(self.status)

    @property
    def throughput(self) -> dict[int, float]:
        """Batch size -> samples per second, from :attr:`batch_latencies_ms`."""
        return {int(size): int(size) * 1000.0 / ms for size, ms in self.batch_latencies_ms.items() if ms > 0}

    def best_throughput(self, latency_budget_ms: float | None = None) -> float | None:
        """The highest samples per second over the profiled batch sizes, counting only those whose
        latency is within ``latency_budget_ms`` when given; None when none qualifies."""
        rates = [
            int(size) * 1000.0 / ms
            for size, ms in self.batch_latencies_ms.items()
            if ms > 0 and (latency_budget_ms is None or ms <= latency_budget_ms)
        ]
        return max(rates, default=None)


@dataclass
class GraphTuneReport:
    """The tuning of one graph spec.

    Attributes:
        graph: Graph spec name.
        strategy: Strategy description.
        chosen: Name of the kept backend.
        eager_latency_ms: Median eager latency at the typical recorded shape, in milliseconds.
        candidates: One report per candidate, in the order tried.
        batch: How the batch axis was decided (the range kept, or why the batch size is fixed or
            requests are not joined); empty in reports written before it was recorded.
        eager: Eager's own measurements (latencies and batch latencies), as a candidate report.
        decision: Why the chosen backend was kept (the rule, the speed gate).
        max_batch_size: The measured batch size where the chosen backend's throughput stopped
            growing (Triton's preferred batch size), when searched.
        padding: Whether requests of different lengths may be padded into one batch, with what,
            and why (the padding invariance check); empty when the graph spec has no dynamic
            axis besides the batch, or in reports written before it was checked.
        layout: The served layouts (instances x intra-op threads) and in-process threads measured
            for the chosen backend, and the choice (:class:`~aitune_triton.strategies.layout.LayoutReport`);
            None when the strategy did not measure them (``measure_layouts=False``) or in older reports.
        batch_sweep: The sweep that set the served batch range (sizes tried, throughput per size,
            why it stopped, the max and preferred batch size kept); None when no sweep ran (the
            batch axis not proved independent, ``find_max_batch_size=False``, or kept on eager).
        shape_weights: Shape label -> its weight in the weighted latency (distinct shapes only; see
            :mod:`aitune_triton.strategies.over_range`); empty in older reports.
        noisy: Whether the measurements stayed unstable after re-measuring (see
            :mod:`aitune_triton.strategies.noise`): the ratios and the decision may not hold.
        eager_spread: Eager timed against itself: its slowest over its fastest timing at the worst
            shape, in the latest measurements; None when not checked.
        retime_spread: The largest such spread of any candidate or eager re-timed in rotated order;
            None when not checked.
        noise: The noise verdict in words (spreads, threshold, re-measures); empty when not checked.
    """

    graph: str
    strategy: str
    chosen: str
    eager_latency_ms: float
    candidates: list[CandidateReport]
    batch: str = ""
    eager: CandidateReport | None = None
    decision: str = ""
    max_batch_size: int | None = None
    padding: str = ""
    layout: LayoutReport | None = None
    batch_sweep: BatchSweep | None = None
    shape_weights: dict[str, float] = field(default_factory=dict)
    noisy: bool = False
    eager_spread: float | None = None
    retime_spread: float | None = None
    noise: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (plain types only: a status is its string value, so the dict also
        goes through ``torch.load(weights_only=True)`` inside a state dict)."""
        return asdict(self, dict_factory=_plain)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphTuneReport":
        """Rebuild from :meth:`to_dict` (reports of older versions lack the newer fields)."""
        known = {f.name for f in dataclasses.fields(CandidateReport)}

        def candidate(entry: dict[str, Any]) -> CandidateReport:
            values = {k: v for k, v in entry.items() if k in known}
            values["batch_sweep"] = BatchSweep.from_dict(entry.get("batch_sweep"))
            return CandidateReport(**values)

        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["candidates"] = [candidate(c) for c in data.get("candidates", [])]
        if data.get("eager"):
            values["eager"] = candidate(data["eager"])
        if data.get("layout"):
            values["layout"] = LayoutReport.from_dict(data["layout"])
        values["batch_sweep"] = BatchSweep.from_dict(data.get("batch_sweep"))
        return cls(**values)


def _plain(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value.value if isinstance(value, enum.Enum) else value for key, value in items}


def _shown_options(options: dict[str, Any]) -> str:
    """The options that tell two candidates of one backend apart (set, not False, not precision)."""
    shown = [f"{key}={value!r}" for key, value in options.items() if key != "precision" and value not in (None, False)]
    return f" ({', '.join(shown)})" if shown else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ratio(value: float | None, eager: float | None) -> str:
    if value is None or not eager:
        return ""
    return f" ({value / eager:.2f}x)"


def _result(candidate: CandidateReport) -> str:
    """The status, with the first line of the reason where it says more than the table: not for
    candidates that passed (the decision, printed once, says which was kept and why)."""
    if candidate.status in (CandidateStatus.PASSED, CandidateStatus.CHOSEN) or not candidate.reason:
        return candidate.status.value
    return f"{candidate.status.value}: {candidate.reason.splitlines()[0]}"


def report_table(report: GraphTuneReport, title: str = "") -> Table:
    """A rich table of ``report``, one line per candidate (eager's own row first): its label (the
    precision in brackets when not fp32) and options, build time, max abs diff (or accuracy),
    latency at the typical shape, its time as a ratio to eager's at the smallest, typical and
    largest shape, best throughput, and the status (with the reason's first line for candidates
    not kept, cut to the width; the report keeps it whole). The decision and its reason follow
    once, under the table, with the batch range, padding, layout and batch sweep lines."""
    table = Table(title=escape(title or f"{report.graph}: {report.strategy}"), title_justify="left")
    table.add_column("candidate", no_wrap=True, overflow="ellipsis", min_width=12, max_width=44)
    for column, width in (("build s", 7), ("max abs diff", 12), ("typical ms", 10), ("x eager s/t/l", 17), ("samples/s", 9)):
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("result", no_wrap=True, overflow="ellipsis", min_width=8, max_width=60)
    eager = report.eager
    eager_ms = dict(eager.latencies_ms) if eager else {"typical": report.eager_latency_ms}
    rows: Sequence[CandidateReport] = ([eager] if eager else []) + list(report.candidates)
    for candidate in rows:
        is_eager_row = candidate is eager
        diff = _ms(candidate.max_abs_diff) if candidate.accuracy is None else f"accuracy {candidate.accuracy:.4g}"
        latencies = {shape: candidate.latencies_ms.get(shape) for shape in SHAPES}
        if latencies["typical"] is None:
            latencies["typical"] = candidate.latency_ms
        judged = candidate.ratios_to_eager  # the speed gate's ratios, where it judged the candidate
        ratios = " ".join(
            f"{judged[shape]:.2f}" if shape in judged else _ratio(latencies[shape], eager_ms.get(shape)).strip(" ()x") or "-"
            for shape in SHAPES
        )
        throughput = candidate.best_throughput()
        table.add_row(
            "eager (reference)" if is_eager_row else escape(candidate.backend + _shown_options(candidate.options)),
            "-" if is_eager_row else f"{candidate.build_s:.1f}",
            "-" if is_eager_row else diff,
            _ms(latencies["typical"]),
            "1" if is_eager_row else ratios,
            "-" if throughput is None else f"{throughput:.4g}",
            CandidateStatus.REFERENCE.value if is_eager_row else escape(_result(candidate)),
        )
    if report.decision:
        lines = [report.decision, report.batch, report.padding, report.layout.summary() if report.layout else ""]
        lines.append(report.batch_sweep.summary() if report.batch_sweep else "")
        lines.append(report.noise if report.noise and not report.noisy else "")  # a noisy verdict is in the decision
        table.caption = escape("\n".join(line for line in lines if line))
        table.caption_justify = "left"
    return table


def candidate_line(candidate: CandidateReport, eager: CandidateReport | None) -> str:
    """One log line for a candidate: its label and options, status, latency at the typical shape
    with the ratio to eager's, build time, and the reason's first line where it says more than the
    status (see :func:`report_table`)."""
    typical = candidate.latencies_ms.get("typical", candidate.latency_ms)
    eager_ms = eager.latencies_ms.get("typical") if eager else None
    timing = f", typical {_ms(typical)} ms{_ratio(typical, eager_ms)}" if typical is not None else ""
    built = f", built in {candidate.build_s:.1f} s" if candidate.build_s else ""
    return f"{candidate.backend}{_shown_options(candidate.options)}: {_result(candidate)}{timing}{built}"


def graph_summary(report: GraphTuneReport, backend: str) -> str:
    """One line for ``module.summary()``: the graph spec, the backend kept (``backend``, with its
    options), its precision, its latency at the typical shape as a ratio to eager's, and why (the
    decision's first clause, and that the measurements were unstable when the noise check said so).

    Args:
        report: The graph spec's tuning report.
        backend: The kept backend as shown (``onnxruntime(exporter='torchscript')``).
    """
    chosen = next((c for c in report.candidates if c.status is CandidateStatus.CHOSEN), None)
    eager_ms = report.eager.latencies_ms.get("typical") if report.eager else report.eager_latency_ms
    mine = chosen.latencies_ms.get("typical", chosen.latency_ms) if chosen else None
    ratio = f"{mine / eager_ms:.2f}x eager ({mine:.3g} ms vs {eager_ms:.3g} ms at the typical shape)" if mine and eager_ms else "not measured"
    precision = chosen.precision if chosen else "fp32"
    decision = report.decision.replace(f"; {report.noise}: ", ": ", 1) if report.noisy and report.noise else report.decision
    unstable = "; measurements unstable: the ratio may not hold" if report.noisy else ""  # "kept X; <verdict>: <rule>"
    why = decision.split(";")[0]
    if why.startswith("kept ") and ": " in why:  # "kept <backend>: <rule> (<ratio>)": the backend and ratio are shown already
        why = why.split(": ", 1)[1].split(" (")[0]
    why += unstable
    counts: dict[str, int] = {}
    for candidate in report.candidates:
        if candidate.status not in (CandidateStatus.CHOSEN, CandidateStatus.PASSED):
            counts[candidate.status.value] = counts.get(candidate.status.value, 0) + 1
    others = ", ".join(f"{count} {status}" for status, count in counts.items())
    return f"{report.graph}: {backend} {precision}, {ratio}: {why}" + (f" (others: {others})" if others else "")
