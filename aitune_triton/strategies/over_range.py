"""Judging a candidate over the whole recorded range: the shapes it is timed at, their weights,
the weighted latency, the ratio to eager per shape and the per-shape speed gate.

Every candidate is timed at three recorded calls, by total input elements: the smallest, the
typical (median) and the largest (:class:`~aitune_triton.strategies.evaluation.Measurements`).
Labels whose calls have the same input shapes are one shape: it is timed once and carries one
weight, under the first label of ``typical``, ``smallest``, ``largest`` that holds it (a graph
spec with one recorded shape has one weight, on ``typical``).

**Weights.** Every recorded call of the graph spec (all of them, not only the stored samples,
when the recorder's sizes are given) counts for the shape whose total input elements are nearest
to its own (absolute difference; a tie goes to the first label in the order above); a shape's
weight is the fraction of the recorded calls that count for it. The weighted latency of a
candidate is ``sum(weight * median latency)`` over the shapes: its expected time per call over
the recorded calls.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from aitune_triton.spec import CallStructure
    from aitune_triton.strategies.report import CandidateReport

__all__ = [
    "LABEL_ORDER",
    "TIE_TOLERANCE",
    "call_size",
    "describe_shape",
    "distinct_shapes",
    "or_inf",
    "range_note",
    "shape_ratios",
    "shape_refusal",
    "shape_weights",
    "weighted_latency",
]

#: The order in which labels sharing one shape give it their name, and ties of weights are broken.
LABEL_ORDER = ("typical", "smallest", "largest")


def call_size(call: "CallStructure") -> int:
    """Total input elements of ``call``."""
    return sum(t.numel() for t in call.flat.tensors)


def _key(call: "CallStructure") -> tuple:
    return tuple(tuple(t.shape) for t in call.flat.tensors)


def describe_shape(call: "CallStructure") -> str:
    """The call's input shapes, ``input_ids: 32x101, attention_mask: 32x101``."""
    return ", ".join(
        f"{path}: {'x'.join(str(size) for size in tensor.shape) or 'scalar'}"
        for path, tensor in zip(call.flat.tensor_paths, call.flat.tensors)
    )


def distinct_shapes(shapes: Mapping[str, "CallStructure"]) -> dict[str, str]:
    """Label -> the label that owns its shape (the first of :data:`LABEL_ORDER` with the same
    input shapes); an owner maps to itself."""
    owners: dict[tuple, str] = {}
    for label in [*LABEL_ORDER, *(label for label in shapes if label not in LABEL_ORDER)]:
        if label in shapes:
            owners.setdefault(_key(shapes[label]), label)
    return {label: owners[_key(call)] for label, call in shapes.items()}


def shape_weights(shapes: Mapping[str, "CallStructure"], recorded_sizes: Sequence[int]) -> dict[str, float]:
    """Weight of each distinct shape (its owner label): the fraction of ``recorded_sizes`` (total
    input elements of every recorded call) nearest in size to it (see the module docstring).
    Without recorded sizes, every distinct shape weighs the same."""
    owners = [label for label in LABEL_ORDER if label in shapes and distinct_shapes(shapes)[label] == label]
    owners += [label for label, owner in distinct_shapes(shapes).items() if owner == label and label not in owners]
    if not recorded_sizes:
        return {label: 1.0 / len(owners) for label in owners}
    sizes = {label: call_size(shapes[label]) for label in owners}
    counts = dict.fromkeys(owners, 0)
    for size in recorded_sizes:
        counts[min(owners, key=lambda label: abs(size - sizes[label]))] += 1  # min keeps the first on a tie
    return {label: count / len(recorded_sizes) for label, count in counts.items() if count}


def weighted_latency(latencies_ms: Mapping[str, float], weights: Mapping[str, float]) -> float | None:
    """``sum(weight * latency)`` over the weighted shapes, in ms; None when one is not measured."""
    if not weights or any(label not in latencies_ms for label in weights):
        return None
    return sum(weight * latencies_ms[label] for label, weight in weights.items())


def shape_ratios(report: "CandidateReport", eager: "CandidateReport") -> dict[str, float]:
    """Per shape label measured on both: the candidate's latency over eager's."""
    return {
        label: ms / eager.latencies_ms[label]
        for label, ms in report.latencies_ms.items()
        if eager.latencies_ms.get(label)
    }


def shape_refusal(report: "CandidateReport", eager: "CandidateReport", margin: float) -> str | None:
    """Why ``report`` is refused by the per-shape gate: slower than eager by more than ``margin``
    (a fraction) at some recorded shape, the worst one named; None when it is not."""
    ratios = shape_ratios(report, eager)
    worst = max(ratios, key=lambda label: ratios[label], default=None)
    if worst is None or ratios[worst] <= 1.0 + margin:
        return None
    shape = report.shapes.get(worst) or eager.shapes.get(worst)
    where = f"the {worst} recorded shape" + (f" ({shape})" if shape else "")
    return (
        f"{ratios[worst]:.2f}x eager's time at {where}; the speed gate refuses a candidate slower than eager "
        f"by more than speed_margin={margin:g} at any recorded shape (gate_every_shape=True)"
    )


#: The least relative difference of two candidates' measures that :meth:`TuneStrategy.fastest`
#: takes as real: closer ones are a tie, kept in the declared order (their re-timed spread widens it).
TIE_TOLERANCE = 0.03


def or_inf(value: float | None) -> float:
    """``value``, or infinity for None (an unmeasured candidate sorts last)."""
    return math.inf if value is None else value


def range_note(report: "CandidateReport") -> str:
    """``; per shape smallest 0.40x, typical 0.45x, largest 0.50x`` from ``report.ratios_to_eager``,
    one entry per distinct shape; empty for fewer than two."""
    seen: set[str] = set()
    parts = []
    for label in ("smallest", "typical", "largest"):
        shape = report.shapes.get(label, label)
        if label in report.ratios_to_eager and shape not in seen:
            seen.add(shape)
            parts.append(f"{label} {report.ratios_to_eager[label]:.2f}x")
    return "; per shape " + ", ".join(parts) if len(parts) > 1 else ""
