"""The check of a candidate against eager: elementwise tolerances for fp32, an accuracy gate for
lower precisions (a user metric, else :data:`PRECISION_TOLERANCES`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton.backends import Backend
from aitune_triton.errors import InvalidArgumentError, OutputMismatchError
from aitune_triton.spec import CallStructure, FlatTree, flatten_output, output_leaves
from aitune_triton.strategies.batching import batch_of
from aitune_triton.strategies.context import TuneContext
from aitune_triton.strategies.report import CandidateReport
from aitune_triton.strategies.validation import compare_outputs, raise_on_mismatch

__all__ = ["PRECISION_TOLERANCES", "AccuracyMetric", "EagerCheck", "candidate_label", "candidate_precision"]

#: Per lower precision: ``(atol, rtol)`` of the accuracy gate when the strategy has no accuracy
#: metric. Elementwise bounds on network outputs: fp16 keeps about 3 significant decimal digits
#: and bf16 about 2, and errors add up over layers; int8 dynamic quantization moves outputs by a
#: few percent of their range. These are coarse on purpose: judge lower precision with a metric on
#: real inputs (``accuracy=``), e.g. cosine similarity of embeddings.
PRECISION_TOLERANCES: dict[str, tuple[float, float]] = {"fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2), "int8": (1e-1, 1e-1)}

#: ``accuracy(eager_output, tuned_output)`` for one sample (both the module's output structure):
#: True/False, or a score that must reach the strategy's ``min_accuracy``.
AccuracyMetric = Callable[[Any, Any], Any]


def candidate_precision(backend: Backend) -> str:
    """The backend's ``precision`` option (``"fp32"`` when it has none)."""
    return backend.precision


def candidate_label(backend: Backend) -> str:
    """The backend's name, with its precision when not fp32 (``onnxruntime[int8]``)."""
    precision = candidate_precision(backend)
    return backend.name if precision == "fp32" else f"{backend.name}[{precision}]"


@dataclass(frozen=True)
class EagerCheck:
    """How a candidate is compared with eager (the strategy's ``atol``, ``rtol``, ``accuracy`` and
    ``min_accuracy``; see :class:`~aitune_triton.strategies.TuneStrategy`)."""

    atol: float
    rtol: float
    accuracy: AccuracyMetric | None = None
    min_accuracy: float | None = None

    def tolerances(self, precision: str) -> tuple[float, float]:
        """``(atol, rtol)`` of the elementwise check: the strategy's for fp32, else the precision's
        documented one (:data:`PRECISION_TOLERANCES`)."""
        if precision == "fp32":
            return self.atol, self.rtol
        return PRECISION_TOLERANCES.get(precision, (self.atol, self.rtol))

    def check(self, backend: Backend, context: TuneContext, references: Sequence[FlatTree], report: CandidateReport) -> None:
        """Compare ``backend`` with eager (``references``) on every sample of ``context``. Sets
        ``report.max_abs_diff`` (and ``report.accuracy`` with a metric).

        Raises:
            OutputMismatchError: listing every mismatch.
            InvalidArgumentError: the accuracy metric returned something other than a bool or a
                number, or a number without ``min_accuracy``.
        """
        graph = context.graph
        precision = report.precision
        atol, rtol = self.tolerances(precision)
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
                value, problem = self.judge(score)
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

    def judge(self, score: Any) -> tuple[float, str | None]:
        """``(value, problem)`` of one accuracy metric result.

        Raises:
            InvalidArgumentError: ``score`` is neither a bool nor a number, or a number without ``min_accuracy``.
        """
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

    def check_batched(self, backend: Backend, context: TuneContext, call: CallStructure) -> None:
        """Compare ``backend`` with eager on a built batch (the largest size of the batch sweep).

        Raises:
            OutputMismatchError: an output leaf differs from eager's beyond the tolerance.
        """
        reference = flatten_output(context.run(*call.args, **call.kwargs))
        actual = output_leaves(context.graph.output_template, backend.infer(call))
        precision = candidate_precision(backend)
        if precision != "fp32" and self.accuracy is not None:
            return  # judged on the recorded samples; a metric may need real rows, not repeated ones
        atol, rtol = self.tolerances(precision)
        label = f"batch of {batch_of(context.graph, call)}: "
        found, _ = compare_outputs(reference.leaves, actual, reference.paths, atol, rtol, label)
        raise_on_mismatch(candidate_label(backend), found)
