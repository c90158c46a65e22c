"""Padding invariance: may requests of different lengths be padded into one batch?

A graph spec with one dynamic axis besides the batch (a sentence's tokens, named ``seq`` or the
recorder's ``dim1``) can serve variable-length requests as one batch only if padding that axis
changes no valid output. Tuning checks it on the recorded calls (:func:`check_padding_eager`,
then :func:`check_padded_backend` on the tuned backend) and stores a :class:`PaddingCheck` in the
graph spec (``GraphSpec.padding``); the exporter turns a held check into ``allow_ragged_batch``
and the served graph model pads with :mod:`aitune_triton.served.padding`.
:func:`padded_calls` does the same padding in process for a list of calls.

Pad values, per input on the padded axis, in this order:

1. declared: ``Module(..., pad_values={"input_ids": tokenizer.pad_token_id, "attention_mask": 0})``;
2. proposed 0 for an input whose recorded values are all 0 or 1 (an attention mask, token type ids);
3. proposed for an integer input (token ids) when another input on the axis is an *attention
   mask* (each recorded row 1...1 0...0, starting with 1): the value the recorded calls hold where
   the mask is 0 (a tokenizer's pad id), else 0; the mask is what should hide the pad positions,
   and the check proves whether it does;
4. none: padding is not checked, and the report says which input needs a declared pad value.

A proposal is never trusted: the check pads with exactly these values, and only where the outputs
stay equal to eager is padding used, with exactly these values.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from aitune_triton.module.padding_layout import padding_layout, validate_pad_values
from aitune_triton.served.padding import PaddingLayout, cut_outputs, pad_request, pad_run, request_length
from aitune_triton.spec import CallStructure, FlatTree, ForwardSignature, GraphSpec, flatten_call, flatten_output, same_value
from aitune_triton.strategies.validation import compare_outputs

__all__ = [
    "PaddingCheck",
    "check_padded_backend",
    "check_padding_eager",
    "padded_copies",
    "padding_layout",
    "settle_padding",
    "validate_pad_values",
]

#: Recorded calls checked per graph spec (each one padded twice, run eagerly).
MAX_CHECKED_CALLS = 8


@dataclass(frozen=True)
class PaddingCheck:
    """The outcome of the padding invariance check of one graph spec.

    Attributes:
        held: Whether padding changed no valid output (eager, and the tuned backend on a padded batch).
        reason: One line: what was checked and what it showed, or why it was not checked.
        layout: The padded axis per input, the pad values and the output axes cut back; None when
            the graph spec has no layout to check (no single dynamic axis, a missing pad value).
    """

    held: bool
    reason: str
    layout: PaddingLayout | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (``GraphSpec.padding``)."""
        return {"held": self.held, "reason": self.reason, "layout": None if self.layout is None else self.layout.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PaddingCheck":
        """Rebuild from :meth:`to_dict`.

        Raises:
            ValueError: ``data`` is not such a dict.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("held"), bool) or not isinstance(data.get("reason"), str):
            raise ValueError(f"padding: expected {{'held': bool, 'reason': str, 'layout': dict or null}}, got {data!r}")
        layout = data.get("layout")
        return cls(data["held"], data["reason"], None if layout is None else PaddingLayout.from_dict(layout))

    def describe(self) -> str:
        """The line the tuning report shows."""
        if self.layout is None:
            return f"padding not used: {self.reason}"
        pads = ", ".join(
            f"{name}={value!r}" for name, value, axis in zip(self.layout.input_names, self.layout.pad_values, self.layout.input_axes)
            if axis is not None
        )
        cut = [name for name, axis in zip(self.layout.output_names, self.layout.output_axes) if axis is not None]
        what = f"axis {self.layout.dim!r} padded with {pads}; outputs cut back: {', '.join(cut) or 'none'}"
        return f"padding {'used' if self.held else 'not used'} ({what}): {self.reason}"


def _as_call(signature: ForwardSignature, template: CallStructure, tensors: Sequence[torch.Tensor]) -> CallStructure:
    args, kwargs = template.with_tensors(signature, tensors)
    return flatten_call(signature, args, kwargs)


def _run(forward: Callable[..., Any], call: CallStructure) -> FlatTree:
    with torch.no_grad():
        return flatten_output(forward(*call.args, **call.kwargs))


def _mismatch(
    expected: FlatTree, treespec: Any, leaves: Sequence[Any], tensors: Sequence[torch.Tensor], graph: GraphSpec, how: str, atol: float, rtol: float
) -> str | None:
    """Why a padded run's own outputs differ from eager on the unpadded call (every leaf), or None."""
    if treespec is not None and treespec != expected.treespec:
        return f"{how} gave another output structure"
    for path, value, got in zip(expected.paths, expected.leaves, leaves):
        if not isinstance(value, torch.Tensor) and not same_value(value, got):
            return f"{how}: non-tensor output {path!r} is {got!r}, eager {value!r}"
    found, _ = compare_outputs(expected.tensors, list(tensors), [s.path for s in graph.outputs], atol, rtol)
    return f"{how}: {found[0]}" if found else None


def _checked_calls(calls: Sequence[CallStructure], layout: PaddingLayout) -> list[CallStructure]:
    """Up to :data:`MAX_CHECKED_CALLS` calls, of as many different lengths as there are."""
    by_length: dict[int, list[CallStructure]] = {}
    for call in calls:
        by_length.setdefault(request_length(layout, call.flat.tensors), []).append(call)
    chosen: list[CallStructure] = []
    while len(chosen) < min(MAX_CHECKED_CALLS, len(calls)):
        for group in by_length.values():
            if group and len(chosen) < MAX_CHECKED_CALLS:
                chosen.append(group.pop(0))
    return chosen


def check_padding_eager(
    forward: Callable[..., Any],
    signature: ForwardSignature,
    graph: GraphSpec,
    calls: Sequence[CallStructure],
    pad_values: Mapping[str, int | float],
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> PaddingCheck | None:
    """Pad recorded calls and compare their outputs, cut back, with eager on the calls as recorded.

    Each checked call (up to :data:`MAX_CHECKED_CALLS`, of different lengths) is padded by one
    position and to the graph spec's largest length; the module's own forward on the padded call,
    cut back to the call's length on the output axes that follow the padded one, must equal its
    forward on the call itself on every output leaf: ``|padded - eager| <= atol + rtol * |eager|``.

    Args:
        forward: The module's own forward.
        signature: Its forward signature.
        graph: The graph spec (its dims, batch axes and dim names).
        calls: Recorded calls of ``graph``, flattened, on the tuning device.
        pad_values: Declared pad values by leaf path (:func:`validate_pad_values`).
        atol: Absolute tolerance (the eager check's).
        rtol: Relative tolerance.

    Returns:
        None when the graph spec has no dynamic axis besides the batch; else the check (not held
        with the reason when there is no layout, a padded call differs or the forward raises).
    """
    layout, reason = padding_layout(graph, calls, pad_values)
    if layout is None:
        return PaddingCheck(False, reason) if reason else None
    checked = 0
    how = "padding"
    chosen = _checked_calls(calls, layout)
    try:
        for call in chosen:
            length = request_length(layout, call.flat.tensors)
            expected = _run(forward, call)
            for target in sorted({min(length + 1, layout.max_length), layout.max_length} - {length}):
                how = f"a recorded call of length {length} padded to {target}"
                grown = pad_request(layout, call.flat.tensors, target)
                padded = _run(forward, _as_call(signature, call, grown))
                rows = int(call.flat.tensors[0].shape[0])
                own = cut_outputs(layout, padded.tensors, [rows], [length])[0]
                problem = _mismatch(expected, padded.treespec, padded.leaves, own, graph, how, atol, rtol)
                if problem:
                    return PaddingCheck(False, f"{problem}; padding would change results", layout)
                checked += 1
    except Exception as error:  # the module refuses a padded length: padding is not free
        return PaddingCheck(False, f"the module's forward on {how} raised {type(error).__name__}: {str(error)[:200]}", layout)
    if not checked:
        return PaddingCheck(False, f"every recorded call already has the largest length {layout.max_length}", layout)
    return PaddingCheck(
        True, f"{len(chosen)} recorded calls, padded by 1 and to {layout.max_length} ({checked} runs), gave eager's outputs", layout
    )


def padded_copies(layout: PaddingLayout, calls: Sequence[CallStructure], signature: ForwardSignature) -> list[CallStructure]:
    """Every call padded to the longest recorded length: calls of equal shapes, which the batch
    independence check can join where the recorded calls (all of batch 1, say) had none."""
    longest = max(request_length(layout, call.flat.tensors) for call in calls)
    return [_as_call(signature, call, pad_request(layout, call.flat.tensors, longest)) for call in calls]


def check_padded_backend(
    infer: Callable[[CallStructure], Sequence[torch.Tensor]],
    forward: Callable[..., Any],
    signature: ForwardSignature,
    graph: GraphSpec,
    calls: Sequence[CallStructure],
    layout: PaddingLayout,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> str | None:
    """Run the tuned backend on one padded batch of recorded calls of different lengths.

    Calls are joined while their rows fit the graph spec's batch range (a lone call is padded to
    the largest length), padded to the longest, run once through ``infer``, cut back per call and
    compared with eager on each call alone, every output leaf.

    Returns:
        None when every call got eager's outputs, else one line saying which did not.
    """
    high = graph.dims["batch"].max if "batch" in graph.dims else 1
    group: list[CallStructure] = []
    rows = 0
    for call in _checked_calls(calls, layout):
        count = int(call.flat.tensors[0].shape[0])
        if rows + count <= high:
            group.append(call)
            rows += count
    if not group:
        return None
    lengths = [request_length(layout, call.flat.tensors) for call in group]
    requests = [call.flat.tensors for call in group]
    if len(group) == 1:
        requests = [pad_request(layout, group[0].flat.tensors, layout.max_length)]
    how = f"the tuned backend on {len(group)} recorded calls of lengths {sorted(lengths)} padded into one batch"
    try:
        with torch.no_grad():
            joined = _as_call(signature, group[0], pad_run(layout, requests))
            outputs = list(infer(joined))
            own = cut_outputs(layout, outputs, [int(c.flat.tensors[0].shape[0]) for c in group], lengths)
            for call, tensors in zip(group, own):
                expected = _run(forward, call)
                problem = _mismatch(expected, None, expected.leaves, tensors, graph, how, atol, rtol)
                if problem:
                    return problem
    except Exception as error:
        return f"{how} raised {type(error).__name__}: {str(error)[:200]}"
    return None


def settle_padding(
    check: PaddingCheck,
    graph: GraphSpec,
    infer: Callable[[CallStructure], Sequence[torch.Tensor]],
    forward: Callable[..., Any],
    signature: ForwardSignature,
    calls: Sequence[CallStructure],
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> PaddingCheck:
    """The final padding outcome of a tuned graph spec, from the eager check and the tuned backend.

    Padding held on eager is kept only when requests may be joined (a batch axis kept, not found
    dependent on other samples) and the tuned backend (``infer``), run on a padded batch of recorded
    calls of different lengths, gave each call eager's outputs (:func:`check_padded_backend`).
    """
    if not check.held or check.layout is None:
        return check
    layout = check.layout
    if "batch" not in graph.dims or any(spec.batch_axis != 0 for spec in graph.inputs + graph.outputs):
        return PaddingCheck(False, f"{check.reason}, but the batch size is fixed, so requests are not joined", layout)
    if graph.batch_independent is False:
        return PaddingCheck(False, f"{check.reason}, but outputs depend on other samples of the batch", layout)
    problem = check_padded_backend(infer, forward, signature, graph, calls, layout, atol, rtol)
    if problem:
        return PaddingCheck(False, f"{check.reason}, but {problem}", layout)
    high = graph.dims["batch"].max
    note = "" if high >= 2 else f"; the batch range is 1..{high}, so nothing is joined: declare BatchDim(1, N) to join requests"
    overhead = run_overhead_tokens(infer, signature, calls, layout)
    if overhead is not None:
        layout = dataclasses.replace(layout, run_overhead_tokens=overhead)
        note += f"; one run costs as much as {overhead:.0f} padded positions (requests are split into runs where that pads less)"
    return PaddingCheck(True, f"{check.reason}, and the tuned backend on a padded batch too{note}", layout)


def run_overhead_tokens(
    infer: Callable[[CallStructure], Sequence[torch.Tensor]],
    signature: ForwardSignature,
    calls: Sequence[CallStructure],
    layout: PaddingLayout,
    repeats: int = 5,
) -> float | None:
    """The fixed cost of one run of the tuned backend, in padded positions that cost as much.

    Times (median of ``repeats``, after one warm-up) the shortest recorded call alone and the
    checked recorded calls padded into one batch, fits ``time = a + b x rows x length`` through
    the two and returns ``a / b`` (:func:`aitune_triton.served.padding.plan_runs` uses it to split
    the requests of one ``execute()``). None when the two cannot tell (equal sizes, or the larger
    one not slower: a noisy machine).
    """
    checked = _checked_calls(calls, layout)
    if len(checked) < 2:
        return None
    sizes = [(int(c.flat.tensors[0].shape[0]), request_length(layout, c.flat.tensors)) for c in checked]
    small = min(range(len(checked)), key=lambda i: sizes[i][0] * sizes[i][1])
    big = _as_call(signature, checked[0], pad_run(layout, [c.flat.tensors for c in checked]))
    small_positions = sizes[small][0] * sizes[small][1]
    big_positions = sum(rows for rows, _ in sizes) * max(length for _, length in sizes)

    def median_s(call: CallStructure) -> float:
        times = []
        with torch.no_grad():
            infer(call)
            for _ in range(repeats):
                start = time.perf_counter()
                infer(call)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    try:
        small_s, big_s = median_s(checked[small]), median_s(big)
    except Exception:  # the backend already ran both in the checks; timing must never fail a tune
        return None
    if big_positions <= small_positions or big_s <= small_s:
        return None
    per_position = (big_s - small_s) / (big_positions - small_positions)
    return max(small_s - per_position * small_positions, 0.0) / per_position
