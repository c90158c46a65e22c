"""Padded batching in process: run a list of variable-length calls as few padded batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError, TuningError
from aitune_triton.module.padding import PaddingCheck
from aitune_triton.served.padding import PaddingLayout, cut_outputs, pad_run, plan_runs, request_length, request_problem
from aitune_triton.spec import CallStructure, flatten_call, flatten_output, rebuild_output

if TYPE_CHECKING:
    from aitune_triton.module.tuned import TunedGraph
    from aitune_triton.module.wrapper import Module

__all__ = ["padded_calls"]


def _bound(call: Any) -> tuple[tuple, dict]:
    if isinstance(call, Mapping):
        return (), dict(call)
    if isinstance(call, (tuple, list)):
        return tuple(call), {}
    return (call,), {}


def _layout(graph: "TunedGraph") -> PaddingLayout | None:
    padding = graph.spec.padding
    if not padding:
        return None
    check = PaddingCheck.from_dict(padding)
    return check.layout if check.held and "batch" in graph.spec.dims else None


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"{name}: expected a positive integer or None, got {value!r}")


def padded_calls(
    module: "Module", calls: Sequence[Any], max_batch_size: int | None = None, max_tokens: int | None = None
) -> list[Any]:
    """Run ``calls`` through a tuned module, padding calls of different lengths into shared batches.

    What the served graph model does with the requests of one ``execute()``, in process: calls of
    a graph spec whose padding invariance check held (``GraphSpec.padding``) are sorted by length,
    grouped into runs of at most ``max_batch_size`` rows (and ``max_tokens`` padded positions),
    padded to each run's longest length with the pad values tuning checked, run as one call of
    the module, and each call gets its own rows back, cut to its own length on the outputs that
    follow the padded axis. Other calls (a graph spec without held padding, a call whose inputs
    :func:`~aitune_triton.served.padding.request_problem` refuses, such as a mask holding a 2) run
    one by one, exactly as ``module(...)`` would.

    Args:
        module: A tuned :class:`~aitune_triton.Module`.
        calls: One entry per call: a mapping of keyword arguments (a tokenizer's output, say), a
            tuple or list of positional arguments, or a single tensor (the one positional argument).
            Tensors have the batch axis at 0 (each call is ``rows`` samples).
        max_batch_size: Most rows per run; None or larger than the graph spec's batch range: its
            largest batch size.
        max_tokens: Most ``rows x padded length`` per run; None: no limit.

    Returns:
        Each call's output, in the order of ``calls``, with the structure ``module(...)`` returns.
        Padded outputs are views into the run's outputs.

    Raises:
        ModuleStateError: ``module`` is not tuned.
        ArgumentTypeError: (a TypeError) ``module`` is not a Module, or ``calls`` is not a sequence.
        InvalidArgumentError: (a ValueError) ``max_batch_size`` or ``max_tokens`` is not a positive integer.
        GraphSpecMismatchError: as ``module(...)`` raises it, for a call that matches no graph spec.
    """
    from aitune_triton.module.wrapper import Module

    if not isinstance(module, Module):
        raise ArgumentTypeError(f"module: expected a tuned aitune_triton.Module, got {type(module).__name__}")
    if isinstance(calls, (str, bytes, Mapping)) or not isinstance(calls, Sequence):
        raise ArgumentTypeError(f"calls: expected a list of calls (mappings of keyword arguments or tuples), got {type(calls).__name__}")
    _check_limit("max_batch_size", max_batch_size)
    _check_limit("max_tokens", max_tokens)
    tuned = module._tuned()
    by_key = {graph.spec.key: graph for graph in tuned.graphs}
    results: list[Any] = [None] * len(calls)
    groups: dict[str, list[tuple[int, CallStructure]]] = {}
    for index, call in enumerate(calls):
        args, kwargs = _bound(call)
        flat = flatten_call(module.signature, args, kwargs, tuned.strict)
        graph = by_key.get(flat.key)
        layout = _layout(graph) if graph is not None else None
        if layout is None or request_problem(layout, flat.flat.tensors) is not None:
            results[index] = module(*args, **kwargs)
        else:
            groups.setdefault(flat.key, []).append((index, flat))
    with torch.no_grad():
        for key, members in groups.items():
            _run_graph(module, by_key[key], members, max_batch_size, max_tokens, results)
    return results


def _run_graph(
    module: "Module",
    graph: "TunedGraph",
    members: list[tuple[int, CallStructure]],
    max_batch_size: int | None,
    max_tokens: int | None,
    results: list[Any],
) -> None:
    layout = _layout(graph)
    if layout is None:  # members are grouped only where a layout exists: a bug if reached
        raise TuningError(f"{graph.spec.name}: padded_calls grouped calls of a graph spec without a padding layout")
    high = graph.spec.dims["batch"].max
    limit = high if max_batch_size is None else min(max_batch_size, high)
    rows = [int(call.flat.tensors[0].shape[0]) for _, call in members]
    lengths = [request_length(layout, call.flat.tensors) for _, call in members]
    for run in plan_runs(list(zip(rows, lengths)), limit, max_tokens, layout.run_overhead_tokens):
        first = members[run[0]][1]
        joined = pad_run(layout, [members[i][1].flat.tensors for i in run])
        args, kwargs = first.with_tensors(module.signature, joined)
        outputs = flatten_output(module(*args, **kwargs))
        own = cut_outputs(layout, outputs.tensors, [rows[i] for i in run], [lengths[i] for i in run])
        for position, tensors in zip(run, own):
            results[members[position][0]] = rebuild_output(graph.spec.output_treespec, graph.spec.output_template, tensors)
