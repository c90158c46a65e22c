"""Padded batching of variable-length requests: one graph spec's padded axis, checked, planned, padded and cut.

Requests whose inputs differ in length along one dynamic axis (a sentence's tokens) are joined
into one batch by padding each to the longest with a pad value per input; each request then gets
its own rows of the outputs back, cut to its own length on the output axes that follow the padded
one. Tuning uses this only where it proved padding changes no valid output (the *padding
invariance* check of :mod:`aitune_triton.module.padding`); the outcome is a :class:`PaddingLayout`.

The same functions serve the graph model inside Triton (this file is copied beside ``model.py``
and runs without aitune_triton installed: it imports only numpy, and torch lazily for tensors
numpy cannot hold, such as bfloat16) and :func:`aitune_triton.module.padded_calls.padded_calls` in
process. Every tensor here has its batch axis at 0: a request is ``rows`` samples.

A graph model's ``execute()`` needs one call, :func:`run_padded`::

    layout = PaddingLayout.from_dict(io["padding"])     # io.json, where tuning's check held
    results = run_padded(layout, [inputs of each request], run_artifact, max_batch_size)
    # per request: its outputs, or a str (answer INVALID_ARGUMENT), or the exception its run raised

which checks each request (:func:`request_problem`, in :mod:`.padding_check`), groups them (:func:`plan_runs`), pads each
run (:func:`pad_run`) and cuts each request's outputs back (:func:`cut_outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .padding_check import Array, is_torch as _is_torch, request_problem

__all__ = [
    "PaddingLayout",
    "cut_outputs",
    "pad_request",
    "pad_run",
    "plan_runs",
    "request_length",
    "request_problem",
    "run_padded",
]


@dataclass(frozen=True)
class PaddingLayout:
    """Where a graph spec is padded: the padded axis per input, its pad value, the output axes cut back.

    Axes are axes of the full (module) shape, the batch axis at 0.

    Attributes:
        dim: Name of the padded dimension (the graph spec's dynamic dim tying the inputs' axes).
        min_length: Smallest length a request may have on that dimension.
        max_length: Largest length the artifact accepts (and pads to at most).
        input_names: Name of each input, in the artifact's input order (for messages).
        input_axes: Per input, the padded axis, or None for an input without that dimension.
        pad_values: Per input, the value written at pad positions (None where not padded).
        masks: Per input, whether it is an attention mask (tuning saw every row read 1...1 0...0):
            a request's values must be 0 or 1, and where it is 0 (the request's own pad positions)
            every other padded input of the same shape must hold its pad value.
        output_names: Name of each output, in the artifact's output order.
        output_axes: Per output, the axis whose length follows the padded dimension (cut back to
            each request's own length), or None for an output that does not follow it.
        run_overhead_tokens: The fixed cost of one run of the tuned artifact, in padded positions
            (rows x length) that cost as much, measured at tune time; :func:`plan_runs` then splits
            the requests of one ``execute()`` into runs where that costs less than padding them
            together. None (not measured, older exports): one run while the rows fit.
    """

    dim: str
    min_length: int
    max_length: int
    input_names: tuple[str, ...]
    input_axes: tuple[int | None, ...]
    pad_values: tuple[float | int | None, ...]
    masks: tuple[bool, ...]
    output_names: tuple[str, ...]
    output_axes: tuple[int | None, ...]
    run_overhead_tokens: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (``io.json``'s ``padding``, a graph spec's padding layout)."""
        return {
            "dim": self.dim,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "input_names": list(self.input_names),
            "input_axes": list(self.input_axes),
            "pad_values": list(self.pad_values),
            "masks": list(self.masks),
            "output_names": list(self.output_names),
            "output_axes": list(self.output_axes),
            "run_overhead_tokens": self.run_overhead_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PaddingLayout":
        """Rebuild from :meth:`to_dict`.

        Raises:
            ValueError: a key is missing, the per-input lists differ in length, or a value has the wrong type.
        """
        keys = ("dim", "min_length", "max_length", "input_names", "input_axes", "pad_values", "masks", "output_names", "output_axes")
        if not isinstance(data, Mapping) or any(key not in data for key in keys):
            raise ValueError(f"padding layout: expected a dict with the keys {list(keys)}, got {data!r}")
        per_input = [data[key] for key in ("input_names", "input_axes", "pad_values", "masks")]
        per_output = [data[key] for key in ("output_names", "output_axes")]
        if not all(isinstance(v, list) for v in per_input + per_output) or len({len(v) for v in per_input}) != 1 or len(
            {len(v) for v in per_output}
        ) != 1:
            raise ValueError(f"padding layout: expected per-input and per-output lists of equal lengths, got {data!r}")
        axes = list(data["input_axes"]) + list(data["output_axes"])
        if not all(a is None or (isinstance(a, int) and not isinstance(a, bool) and a >= 1) for a in axes):
            raise ValueError(f"padding layout: expected axes >= 1 (the batch axis is 0) or null, got {axes}")
        if not all(isinstance(data[key], int) and not isinstance(data[key], bool) for key in ("min_length", "max_length")):
            raise ValueError(f"padding layout: expected integer min_length and max_length, got {data!r}")
        return cls(
            dim=str(data["dim"]),
            min_length=int(data["min_length"]),
            max_length=int(data["max_length"]),
            input_names=tuple(str(n) for n in data["input_names"]),
            input_axes=tuple(data["input_axes"]),
            pad_values=tuple(data["pad_values"]),
            masks=tuple(bool(m) for m in data["masks"]),
            output_names=tuple(str(n) for n in data["output_names"]),
            output_axes=tuple(data["output_axes"]),
            run_overhead_tokens=_overhead(data.get("run_overhead_tokens")),
        )

    @property
    def padded_inputs(self) -> list[int]:
        """Indices of the inputs that have the padded dimension."""
        return [i for i, axis in enumerate(self.input_axes) if axis is not None]


def _overhead(value: Any) -> float | None:
    """``run_overhead_tokens`` read from a layout dict: a number >= 0, or None (absent, older layouts)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"padding layout: expected run_overhead_tokens >= 0 or null, got {value!r}")
    return float(value)


def request_length(layout: PaddingLayout, arrays: Sequence[Array]) -> int:
    """A request's length on the padded dimension (that of its first padded input)."""
    first = layout.padded_inputs[0]
    return int(arrays[first].shape[layout.input_axes[first]])


def plan_runs(
    sizes: Sequence[tuple[int, int]],
    max_batch_size: int,
    max_tokens: int | None = None,
    run_overhead_tokens: float | None = None,
) -> list[list[int]]:
    """Group requests into padded runs; none is refused.

    Requests are taken in order of length (stable), so that each run pads little. Without
    ``run_overhead_tokens`` a run is closed when one more request would exceed ``max_batch_size``
    rows or ``max_tokens`` padded positions (rows x longest length). With it, the runs are the
    split of that order into consecutive groups within the same limits that costs least, a run
    costing ``run_overhead_tokens + rows x its longest length`` (dynamic programming over the
    requests of one call: a few short requests no longer pay for the longest one). A request that
    alone exceeds a limit runs alone.

    Args:
        sizes: Per request ``(rows, length)``: its batch size and its length on the padded dimension.
        max_batch_size: Most rows per run (Triton's ``max_batch_size``), at least 1.
        max_tokens: Most ``rows x length`` per run; None: no limit besides the rows.
        run_overhead_tokens: The fixed cost of one run in padded positions
            (:attr:`PaddingLayout.run_overhead_tokens`); None: as few runs as the limits allow.

    Returns:
        Runs, each a list of request indices (ascending length); every index exactly once.

    Raises:
        ValueError: ``max_batch_size`` < 1 or ``max_tokens`` < 1.
    """
    if max_batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"plan_runs: expected max_batch_size >= 1 and max_tokens >= 1 or None, got {max_batch_size}, {max_tokens}")
    order = sorted(range(len(sizes)), key=lambda i: sizes[i][1])
    if run_overhead_tokens is not None:
        return _cheapest_runs([sizes[i] for i in order], order, max_batch_size, max_tokens, run_overhead_tokens)
    runs: list[list[int]] = []
    rows_in_run = longest = 0
    for index in order:
        rows, length = sizes[index]
        fits = runs and rows_in_run + rows <= max_batch_size and (
            max_tokens is None or (rows_in_run + rows) * max(longest, length) <= max_tokens
        )
        if fits:
            runs[-1].append(index)
            rows_in_run, longest = rows_in_run + rows, max(longest, length)
        else:
            runs.append([index])
            rows_in_run, longest = rows, length
    return runs


def _cheapest_runs(
    ordered: Sequence[tuple[int, int]], order: Sequence[int], max_batch_size: int, max_tokens: int | None, overhead: float
) -> list[list[int]]:
    """The split of ``ordered`` (``(rows, length)`` by ascending length) into consecutive runs of
    least total cost ``overhead + rows x longest`` each, within the limits (a lone request always fits)."""
    count = len(ordered)
    best = [0.0] + [float("inf")] * count
    start_of = [0] * (count + 1)
    for end in range(1, count + 1):
        rows = 0
        for start in range(end - 1, -1, -1):  # the run ordered[start:end]; its longest is ordered[end - 1]
            rows += ordered[start][0]
            padded = rows * ordered[end - 1][1]
            if start < end - 1 and (rows > max_batch_size or (max_tokens is not None and padded > max_tokens)):
                break
            cost = best[start] + overhead + padded
            if cost < best[end]:
                best[end], start_of[end] = cost, start
    runs: list[list[int]] = []
    end = count
    while end > 0:
        runs.append(list(order[start_of[end] : end]))
        end = start_of[end]
    return runs[::-1]


def _padded(array: Array, axis: int, length: int, value: float | int) -> Array:
    size = int(array.shape[axis])
    if size == length:
        return array
    shape = list(array.shape)
    shape[axis] = length - size
    if _is_torch(array):
        import torch

        return torch.cat([array, torch.full(shape, value, dtype=array.dtype, device=array.device)], dim=axis)
    return np.concatenate([array, np.full(shape, value, dtype=array.dtype)], axis=axis)


def _joined(arrays: Sequence[Array]) -> Array:
    if len(arrays) == 1:
        return arrays[0]
    if _is_torch(arrays[0]):
        import torch

        return torch.cat(list(arrays), dim=0)
    return np.concatenate(list(arrays), axis=0)


def pad_request(layout: PaddingLayout, arrays: Sequence[Array], length: int) -> list[Array]:
    """One request's inputs with its padded inputs padded to ``length`` with their pad values.

    Args:
        layout: The graph spec's padding layout.
        arrays: The request's inputs in the artifact's input order.
        length: The length to pad to (not below the request's own).

    Returns:
        The inputs; those without the padded dimension (and any already that long) unchanged.
    """
    result = []
    for array, axis, value in zip(arrays, layout.input_axes, layout.pad_values):
        result.append(array if axis is None else _padded(array, axis, length, 0 if value is None else value))
    return result


def pad_run(layout: PaddingLayout, requests: Sequence[Sequence[Array]]) -> list[Array]:
    """Pad one run's requests to its longest length and join them along the batch axis.

    Args:
        layout: The graph spec's padding layout.
        requests: Per request, its inputs in the artifact's input order (checked with
            :func:`request_problem`).

    Returns:
        One array per input: the requests' rows in the order given, padded inputs padded with
        their pad value to the longest request's length.
    """
    longest = max(request_length(layout, arrays) for arrays in requests)
    padded = [pad_request(layout, arrays, longest) for arrays in requests]
    return [_joined([arrays[index] for arrays in padded]) for index in range(len(layout.input_axes))]


def cut_outputs(
    layout: PaddingLayout, outputs: Sequence[Array], rows: Sequence[int], lengths: Sequence[int]
) -> list[list[Array]]:
    """Each request's own outputs from a padded run's outputs.

    Args:
        layout: The graph spec's padding layout.
        outputs: The run's output arrays, in the artifact's output order, batch axis 0.
        rows: Per request of the run (in :func:`pad_run` order), its number of rows.
        lengths: Per request, its own length on the padded dimension.

    Returns:
        Per request, per output: its rows, cut to its own length on the output's axis that follows
        the padded dimension (views where the array type allows).
    """
    result: list[list[Array]] = []
    start = 0
    for count, length in zip(rows, lengths):
        own = []
        for output, axis in zip(outputs, layout.output_axes):
            part = output[start : start + count]
            if axis is not None:
                index: list[Any] = [slice(None)] * len(part.shape)
                index[axis] = slice(0, length)
                part = part[tuple(index)]
            own.append(part)
        result.append(own)
        start += count
    return result


def run_padded(
    layout: PaddingLayout,
    requests: Sequence[Sequence[Array]],
    run: Callable[[list[Array]], Sequence[Array]],
    max_batch_size: int,
    max_tokens: int | None = None,
) -> list[list[Array] | str | Exception]:
    """Serve the requests of one ``execute()``: check each, pad them into runs, cut each its outputs.

    A request :func:`request_problem` refuses gets its message (answer INVALID_ARGUMENT) and is
    left out of every run, so it never fails the others. When a padded run raises, each of its
    requests is run again alone (padded to nothing), so one request that breaks the artifact fails
    alone; its exception is its result.

    Args:
        layout: The graph model's padding layout (``io.json``'s ``padding``).
        requests: Per request, its inputs in the artifact's input order, batch axis 0.
        run: Runs the artifact on joined inputs; returns its outputs in the artifact's output order.
        max_batch_size: Most rows per run (the model's ``max_batch_size``).
        max_tokens: Most ``rows x padded length`` per run; None: no limit.

    Returns:
        Per request, in order: its outputs (a list, in the artifact's output order), or the
        message of why it was refused (a str), or the exception its own run raised.
    """
    results: list[list[Array] | str | Exception] = [""] * len(requests)
    accepted: list[int] = []
    for index, arrays in enumerate(requests):
        problem = request_problem(layout, arrays)
        if problem is None:
            accepted.append(index)
        else:
            results[index] = problem
    sizes = [(int(requests[i][0].shape[0]), request_length(layout, requests[i])) for i in accepted]
    for planned in plan_runs(sizes, max_batch_size, max_tokens, layout.run_overhead_tokens):
        members = [accepted[j] for j in planned]
        try:
            outputs = run(pad_run(layout, [requests[i] for i in members]))
            own = cut_outputs(layout, outputs, [sizes[j][0] for j in planned], [sizes[j][1] for j in planned])
        except Exception as error:
            if len(members) == 1:
                results[members[0]] = error
            for index in members if len(members) > 1 else []:
                try:  # alone, unpadded: only the request that breaks the artifact fails
                    results[index] = list(run(list(requests[index])))
                except Exception as alone:
                    results[index] = alone
            continue
        for index, outputs_of_request in zip(members, own):
            results[index] = outputs_of_request
    return results
