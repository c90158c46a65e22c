"""Calls of any batch size built from recorded samples, for throughput and max batch size search."""

from __future__ import annotations

from typing import Sequence

import torch

from aitune_triton.spec import CallStructure, ForwardSignature, GraphSpec, StoredCall, flatten_call

__all__ = ["batch_axes", "batch_of", "batched_call"]


def batch_axes(graph: GraphSpec) -> list[int] | None:
    """The batch axis of every input of ``graph``, or None when batches cannot be built for it:
    no batch axis, an input without one, or samples not proved independent along it."""
    axes = [spec.batch_axis for spec in graph.inputs]
    if "batch" not in graph.dims or not axes or None in axes or graph.batch_independent is not True:
        return None
    return [axis for axis in axes if axis is not None]


def batch_of(graph: GraphSpec, call: CallStructure) -> int:
    """The batch size of ``call`` (1 when ``graph`` has no batch axis)."""
    for spec, tensor in zip(graph.inputs, call.flat.tensors):
        if spec.batch_axis is not None:
            return int(tensor.shape[spec.batch_axis])
    return 1


def batched_call(
    signature: ForwardSignature, graph: GraphSpec, samples: Sequence[CallStructure], like: CallStructure, batch_size: int
) -> CallStructure | None:
    """A call of ``batch_size`` samples with ``like``'s per-sample shapes, made of recorded samples.

    The samples (single rows along the batch axis) of every recorded call whose per-sample shapes
    equal ``like``'s are taken in order and cycled until ``batch_size`` rows are joined with
    ``torch.cat`` along each input's batch axis. Only for graph specs whose samples proved
    independent along the batch axis (see :func:`batch_axes`): joining rows then changes no
    row's result.

    Returns:
        The call (a :class:`~aitune_triton.spec.StoredCall`), or None when ``graph`` cannot be
        batched.
    """
    axes = batch_axes(graph)
    if axes is None or batch_size < 1:
        return None

    def per_sample(call: CallStructure) -> tuple:
        return tuple(tuple(s for i, s in enumerate(t.shape) if i != axis) for t, axis in zip(call.flat.tensors, axes))

    wanted = per_sample(like)
    rows: list[list[torch.Tensor]] = []
    for call in samples:
        if per_sample(call) != wanted:
            continue
        size = call.flat.tensors[0].shape[axes[0]]
        rows.extend([t.narrow(axis, row, 1) for t, axis in zip(call.flat.tensors, axes)] for row in range(size))
    if not rows:
        return None
    chosen = [rows[index % len(rows)] for index in range(batch_size)]
    tensors = [torch.cat([row[leaf] for row in chosen], dim=axis) for leaf, axis in enumerate(axes)]
    args, kwargs = like.with_tensors(signature, tensors)
    return StoredCall(signature, flatten_call(signature, args, kwargs))
