"""Tuning a recorded module: one strategy per graph spec, run in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton.errors import InvalidArgumentError, StrategyCountError
from aitune_triton.module.recording import Recorder
from aitune_triton.module.samples import Sample
from aitune_triton.backends import EagerBackend
from aitune_triton.spec import CallStructure, ForwardSignature, GraphSpec, flatten_call
from aitune_triton.strategies.validation import compare_outputs
from aitune_triton.module.tuned import TunedGraph
from aitune_triton.strategies import TuneContext, TuneStrategy, default_strategy

__all__ = ["StrategiesArg", "check_batch_independence", "plan_strategies", "tune_graphs"]

StrategiesArg = Sequence[TuneStrategy] | Mapping[Any, TuneStrategy] | None


def _describe(graphs: Sequence[GraphSpec]) -> str:
    return "\n".join(f"  {g.name}: {g.description}" for g in graphs)


def _graph_for_key(key: Any, graphs: Sequence[GraphSpec]) -> GraphSpec | None:
    for graph in graphs:
        if key == graph.name or key == graph.key or (isinstance(key, GraphSpec) and key.key == graph.key):
            return graph
    return None


def plan_strategies(
    graphs: Sequence[GraphSpec],
    strategies: StrategiesArg,
    constructor_strategy: TuneStrategy | None,
    tune_strategy: TuneStrategy | None,
) -> list[tuple[GraphSpec, TuneStrategy]]:
    """Pick the strategy of every graph spec.

    Precedence, as the AITune Module API documents it: the constructor's ``strategies`` entry for
    the graph spec, then the constructor's ``strategy``, then the ``strategy`` passed to
    ``tune()``, then :func:`~aitune_triton.strategies.default_strategy`.

    Args:
        graphs: Recorded graph specs, in order.
        strategies: A list (one per graph spec, in graph spec order) or a dict keyed by graph spec
            name (``"graph_0"``), by :class:`GraphSpec` or by its input structure key.

    Raises:
        StrategyCountError: (a RuntimeError) the list has fewer entries than there are graph specs.
        InvalidArgumentError: (a ValueError) the dict has keys that name no graph spec.
    """
    per_graph: dict[str, TuneStrategy] = {}
    if isinstance(strategies, Mapping):
        unknown = [key for key in strategies if _graph_for_key(key, graphs) is None]
        if unknown:
            raise InvalidArgumentError(
                f"strategies: {len(unknown)} key(s) name no recorded graph spec ({[str(k)[:80] for k in unknown]}). "
                f"Key by graph spec name; the recorded graph specs are:\n{_describe(graphs)}"
            )
        per_graph = {_graph_for_key(key, graphs).name: strategy for key, strategy in strategies.items()}  # type: ignore[union-attr]
    elif strategies is not None:
        if len(strategies) < len(graphs):
            raise StrategyCountError(
                f"strategies: {len(strategies)} given, but {len(graphs)} graph specs were captured. Pass one strategy "
                f"per graph spec (or a dict keyed by graph spec name). Captured graph specs:\n{_describe(graphs)}"
            )
        per_graph = {graph.name: strategy for graph, strategy in zip(graphs, strategies)}
    fallback = constructor_strategy or tune_strategy
    return [(graph, per_graph.get(graph.name) or fallback or default_strategy()) for graph in graphs]


def _on_device(signature: ForwardSignature, sample: Sample, device: torch.device, strict: bool):
    args, kwargs = pytree.tree_map(
        lambda leaf: leaf.to(device) if isinstance(leaf, torch.Tensor) else leaf, (sample.args, sample.kwargs)
    )
    return flatten_call(signature, args, kwargs, strict)


def check_batch_independence(
    forward: Callable[..., Any], signature: ForwardSignature, graph: GraphSpec, call: CallStructure, atol: float = 1e-4, rtol: float = 1e-4
) -> bool | None:
    """Whether samples along the batch axis are independent: the module's own forward on the two
    halves of ``call``'s batch gives the outputs of the whole batch (within ``atol + rtol*|whole|``).

    Triton's dynamic batcher joins separate requests into one batch, which changes the answers of
    a module that mixes samples (batch statistics, attention across the batch); such graph specs
    are exported without batching.

    Returns:
        True or False; None when there is no batch axis on every input and output, or the call's
        batch is below 2.
    """
    inputs = [spec.batch_axis for spec in graph.inputs]
    outputs = [spec.batch_axis for spec in graph.outputs]
    if "batch" not in graph.dims or None in inputs or None in outputs or not inputs:
        return None
    axes = [axis for axis in inputs if axis is not None]
    out_axes = [axis for axis in outputs if axis is not None]
    tensors = call.flat.tensors
    size = tensors[0].shape[axes[0]]
    if size < 2:
        return None
    with torch.no_grad():
        whole = EagerBackend.reference(forward, call)
        halves = []
        for part in (slice(0, size // 2), slice(size // 2, size)):
            sliced = [t.narrow(axis, part.start, part.stop - part.start) for t, axis in zip(tensors, axes)]
            args, kwargs = call.with_tensors(signature, sliced)
            halves.append(EagerBackend.reference(forward, flatten_call(signature, args, kwargs)))
        joined = [torch.cat([first, second], dim=axis) for first, second, axis in zip(*halves, out_axes)]
    mismatches, _ = compare_outputs(whole, joined, [s.path for s in graph.outputs], atol, rtol)
    return not mismatches


def tune_graphs(
    module: torch.nn.Module,
    forward: Callable[..., Any],
    signature: ForwardSignature,
    recorder: Recorder,
    plan: Sequence[tuple[GraphSpec, TuneStrategy]],
    device: torch.device,
    workdir: Path,
    log: Callable[[str], None],
) -> list[TunedGraph]:
    """Run each graph spec's strategy on its recorded samples; artifacts go under ``workdir/<graph>``.

    Raises:
        RecordingError: a graph spec's calls returned inconsistent output structures.
        TuningError: no candidate passed for some graph spec. Backends built so far are released.
    """
    tuned: list[TunedGraph] = []
    try:
        for graph, strategy in plan:
            log(f"{graph.name} ({graph.num_calls} calls): {strategy.describe()}")
            samples = [_on_device(signature, s, device, recorder.strict) for s in recorder.samples(graph)]
            example = _on_device(signature, recorder.largest_sample(graph), device, recorder.strict)
            graph.batch_independent = check_batch_independence(forward, signature, graph, example)
            if graph.batch_independent is False:
                log(f"{graph.name}: outputs depend on other samples of the batch; Triton will not join requests")
            context = TuneContext(module, signature, graph, samples, example, workdir / graph.name, device, log, forward)
            backend, report = strategy.tune(context)
            log(f"{graph.name}: chose {backend.name}")
            tuned.append(TunedGraph(graph, backend, report))
    except BaseException:
        for entry in tuned:
            entry.backend.deactivate()
        raise
    return tuned
