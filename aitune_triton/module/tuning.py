"""Tuning a recorded module: one strategy per graph spec, run in order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton._warnings import warn
from aitune_triton.backends import EagerBackend
from aitune_triton.errors import InvalidArgumentError, StrategyCountError, TuningError
from aitune_triton.module.dims import BatchDim
from aitune_triton.module.padding import check_padding_eager, padded_copies, settle_padding
from aitune_triton.module.recording import Recorder
from aitune_triton.module.samples import Sample
from aitune_triton.spec import (
    CallStructure,
    FlatTree,
    ForwardSignature,
    GraphSpec,
    StoredCall,
    flatten_call,
    flatten_output,
    same_value,
)
from aitune_triton.strategies.validation import compare_outputs
from aitune_triton.module.tuned import TunedGraph
from aitune_triton.strategies import TuneContext, TuneStrategy, default_strategy

__all__ = ["BatchCheck", "StrategiesArg", "check_batch_independence", "decide_batch_axis", "plan_strategies", "tune_graphs"]

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


def _on_device(signature: ForwardSignature, sample: Sample, device: torch.device, strict: bool) -> StoredCall:
    """``sample`` flattened on ``device``, as a call that runs as recorded each time it is run."""
    args, kwargs = pytree.tree_map(
        lambda leaf: leaf.to(device) if isinstance(leaf, torch.Tensor) else leaf, (sample.args, sample.kwargs)
    )
    return StoredCall(signature, flatten_call(signature, args, kwargs, strict))


@dataclass
class BatchCheck:
    """The outcome of :func:`check_batch_independence`.

    Attributes:
        independent: True when the outputs proved independent along the batch axis, False when
            they did not (they differ, or the module failed on a smaller or joined batch), None
            when nothing could be checked.
        reason: One line saying what was run and what it showed.
    """

    independent: bool | None
    reason: str


def _run(forward: Callable[..., Any], call: CallStructure) -> FlatTree:
    """The module's own forward on ``call``, every output leaf flattened."""
    return flatten_output(forward(*call.args, **call.kwargs))


def _joinable_group(calls: Sequence[CallStructure]) -> list[CallStructure]:
    """The largest group (at most 8) of calls whose tensor shapes are all equal."""
    groups: dict[tuple, list[CallStructure]] = {}
    for call in calls:
        groups.setdefault(tuple(tuple(t.shape) for t in call.flat.tensors), []).append(call)
    return max(groups.values(), key=len, default=[])[:8]


def check_batch_independence(
    forward: Callable[..., Any],
    signature: ForwardSignature,
    graph: GraphSpec,
    calls: Sequence[CallStructure],
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> BatchCheck:
    """Whether samples along the batch axis are independent, measured on recorded calls.

    The recorded call with the largest batch (2 or more) is split in two halves: the module's own
    forward on the halves, joined again, must give its outputs on the whole batch. When every
    recorded batch is 1, up to 8 recorded calls of equal shapes are joined into one batch instead:
    the forward on the joined batch must give each call's own outputs. Equality is
    ``|joined - whole| <= atol + rtol * |whole|`` per output leaf.

    Triton's dynamic batcher joins separate requests into one batch, which changes the answers of
    a module that mixes samples (batch statistics, attention across the batch); such graph specs
    are exported without batching, and a batch axis that was only a candidate (one batch size
    recorded) is dropped.

    Args:
        forward: The module's own forward.
        signature: Its forward signature.
        graph: The graph spec; its batch axes (``TensorSpec.batch_axis``) are the ones checked.
        calls: Recorded calls of ``graph``, flattened, on the tuning device.
        atol: Absolute tolerance.
        rtol: Relative tolerance.

    Returns:
        A :class:`BatchCheck`. ``independent`` is None when not every input and output has a batch
        axis, or when every recorded batch is 1 and no two recorded calls have equal shapes.
    """
    in_batch = [spec.batch_axis for spec in graph.inputs]
    out_batch = [spec.batch_axis for spec in graph.outputs]
    if "batch" not in graph.dims or not in_batch or None in in_batch or None in out_batch:
        return BatchCheck(None, "not every input and output has an axis that follows the batch size")
    axes = [axis for axis in in_batch if axis is not None]
    out_axes = [axis for axis in out_batch if axis is not None]
    if not calls:
        return BatchCheck(None, "no recorded call to check")
    sizes = [call.flat.tensors[0].shape[axes[0]] for call in calls]
    largest = max(range(len(calls)), key=lambda index: sizes[index])
    how = "a recorded call"
    try:
        with torch.no_grad():
            if sizes[largest] >= 2:
                call, size = calls[largest], sizes[largest]
                whole = _run(forward, call)
                # Halves, and the first sample alone: a module that mixes samples in pairs passes the
                # halves of an even batch, not a batch of one.
                for split in sorted({size // 2, 1}):
                    how = f"a recorded batch of {size} split into {split} + {size - split}"
                    parts = []
                    for start, stop in ((0, split), (split, size)):
                        sliced = [t.narrow(axis, start, stop - start) for t, axis in zip(call.flat.tensors, axes)]
                        args, kwargs = call.with_tensors(signature, sliced)
                        parts.append(_run(forward, flatten_call(signature, args, kwargs)))
                    problem = _batch_mismatch(whole, parts, out_axes, graph, how, atol, rtol)
                    if problem:
                        return BatchCheck(False, problem)
                splits = " and ".join(f"{split} + {size - split}" for split in sorted({size // 2, 1}))
                return BatchCheck(True, f"a recorded batch of {size} split into {splits} gave the outputs of one batch")
            else:
                group = _joinable_group(calls)
                if len(group) < 2:
                    return BatchCheck(None, "every recorded batch is 1 and no two recorded calls have equal shapes to join")
                how = f"{len(group)} recorded calls of batch 1 joined into one batch"
                joined_inputs = [
                    torch.cat([call.flat.tensors[leaf] for call in group], dim=axis)
                    for leaf, axis in enumerate(axes)
                ]
                args, kwargs = group[0].with_tensors(signature, joined_inputs)
                whole = _run(forward, flatten_call(signature, args, kwargs))
                parts = [_run(forward, call) for call in group]
            problem = _batch_mismatch(whole, parts, out_axes, graph, how, atol, rtol)
    except Exception as error:  # the module refuses another batch size: its batch size is not free
        return BatchCheck(False, f"the module's forward on {how} raised {type(error).__name__}: {str(error)[:200]}")
    return BatchCheck(False, problem) if problem else BatchCheck(True, f"{how} gave the outputs of one batch")


def _batch_mismatch(
    whole: FlatTree, parts: Sequence[FlatTree], out_axes: Sequence[int], graph: GraphSpec, how: str, atol: float, rtol: float
) -> str | None:
    """Why ``parts`` joined along the batch axes are not ``whole``, or None when they are."""
    for part in parts:  # a non-tensor output (``x.shape[0]``, a Python float) must not change with the batch
        if part.treespec != whole.treespec:
            return f"{how} gave another output structure than one batch"
        for path, expected, value in zip(whole.paths, whole.leaves, part.leaves):
            if not isinstance(expected, torch.Tensor) and not same_value(expected, value):
                return f"{how}: non-tensor output {path!r} is {expected!r} for one batch but {value!r} for a part"
    joined = [torch.cat(list(leaves), dim=axis) for *leaves, axis in zip(*[p.tensors for p in parts], out_axes)]
    mismatches, _ = compare_outputs(whole.tensors, joined, [s.path for s in graph.outputs], atol, rtol)
    return f"{how} gave other outputs than one batch ({mismatches[0]})" if mismatches else None


def _declares_batch(recorder: Recorder, graph: GraphSpec) -> bool:
    return any(
        isinstance(decl, BatchDim) for spec in graph.inputs for decl in recorder.dynamic_shapes.get(spec.path, {}).values()
    )


def _drop_batch_axis(graph: GraphSpec) -> None:
    """Make the candidate batch axis of ``graph`` a fixed axis again, on every leaf and in ``dims``."""
    for spec in graph.inputs + graph.outputs:
        if spec.batch_axis is not None:
            names = list(spec.dim_names)
            names[spec.batch_axis] = None
            spec.dim_names = tuple(names)
            spec.batch_axis = None
    graph.dims.pop("batch", None)


def _is_candidate_batch(graph: GraphSpec, declared: bool) -> bool:
    """Whether ``graph`` keeps a batch axis that was only a candidate: one batch size recorded, none declared."""
    if "batch" not in graph.dims or declared:
        return False
    batched = [(spec, spec.batch_axis) for spec in graph.inputs if spec.batch_axis is not None]
    return bool(batched) and not any(spec.min_shape[axis] != spec.max_shape[axis] for spec, axis in batched)


def decide_batch_axis(
    forward: Callable[..., Any],
    signature: ForwardSignature,
    graph: GraphSpec,
    calls: Sequence[CallStructure],
    declared: bool,
) -> str:
    """Settle ``graph``'s batch axis by measurement, before any backend is built; update ``graph``.

    Sets ``graph.batch_independent`` from :func:`check_batch_independence`. A batch axis whose size
    varied across the recorded calls, or one declared with :class:`BatchDim`, stays (Triton joins
    requests only when it proved independent). A candidate batch axis (one batch size recorded)
    stays with the range 1..that size when it proved independent; otherwise it is removed from
    every leaf (``batch_axis``, ``dim_names``) and from ``dims``, so the batch size stays fixed.

    Args:
        declared: Whether the batch axis was declared with :class:`BatchDim`.

    Returns:
        One line for the tuning log and report: the batch range kept, or why the batch is fixed.
    """
    if "batch" not in graph.dims:
        graph.batch_independent = None
        return "no batch axis (no input axis 0 follows a batch size)"
    check = check_batch_independence(forward, signature, graph, calls)
    graph.batch_independent = check.independent
    low, high = graph.dims["batch"].min, graph.dims["batch"].max
    batched = [(spec, spec.batch_axis) for spec in graph.inputs if spec.batch_axis is not None]
    varied = any(spec.min_shape[axis] != spec.max_shape[axis] for spec, axis in batched)
    if check.independent and high < 2:
        return (
            f"batch axis {low}..{high}: {check.reason}; the batch size sweep widens it (find_max_batch_size), or "
            "declare BatchDim(1, N) in dynamic_shapes (or record larger batches) to accept batches above 1"
        )
    if check.independent:
        return f"batch axis {low}..{high}, requests may be joined: {check.reason}"
    if varied or declared:
        joined = "Triton will not join requests" if check.independent is False else "unchecked"
        return f"batch axis {low}..{high} ({'declared' if declared else 'sizes varied'}), {joined}: {check.reason}"
    size = batched[0][0].max_shape[batched[0][1]] if batched else high
    _drop_batch_axis(graph)
    return f"batch fixed at {size} (one batch size recorded): {check.reason}"


#: Artifact roles of the recorded calls kept as warmup inputs (the smallest and the largest).
WARMUP_ROLES = ("warmup_min", "warmup_max")


def write_warmup_samples(samples: Sequence[CallStructure], directory: Path) -> dict[str, Path]:
    """Write the tensor inputs of the recorded calls with the fewest and the most elements.

    Each file is ``torch.save({"tensors": [...]})`` of the call's tensor leaves in flattening
    order (the graph model's input order), on CPU; ``torch.load(weights_only=True)`` reads it back
    without running code. The exporter writes them as ``model_warmup`` inputs.

    Returns:
        Artifact role (:data:`WARMUP_ROLES`) -> file; empty without samples.
    """
    if not samples:
        return {}
    sizes = [sum(t.numel() for t in sample.flat.tensors) for sample in samples]
    chosen = {"warmup_min": samples[sizes.index(min(sizes))], "warmup_max": samples[sizes.index(max(sizes))]}
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for role, sample in chosen.items():
        path = directory / f"{role}.pt"
        torch.save({"tensors": [t.detach().cpu().contiguous() for t in sample.flat.tensors]}, path)
        written[role] = path
    return written


def tune_graphs(
    module: torch.nn.Module,
    forward: Callable[..., Any],
    signature: ForwardSignature,
    recorder: Recorder,
    plan: Sequence[tuple[GraphSpec, TuneStrategy]],
    device: torch.device,
    workdir: Path,
    log: Callable[[str], None],
    pad_values: Mapping[str, int | float] | None = None,
) -> list[TunedGraph]:
    """Run each graph spec's strategy on its recorded samples; artifacts go under ``workdir/<graph>``.

    A graph spec with a dynamic axis besides the batch is checked for padding invariance
    (:mod:`aitune_triton.module.padding`, with ``pad_values`` by leaf path) before its batch axis
    is decided (a held check lets calls of different lengths, padded, be joined for the batch
    independence check) and again on the tuned backend; the outcome is ``GraphSpec.padding``
    and the report's ``padding`` line.

    Raises:
        RecordingError: a graph spec's calls returned inconsistent output structures.
        TuningError: no candidate passed for some graph spec. Backends built so far are released.
    """
    tuned: list[TunedGraph] = []
    try:
        for graph, strategy in plan:
            log(f"{graph.name} ({graph.num_calls} calls): {strategy.describe()}")
            samples: list[CallStructure] = [_on_device(signature, s, device, recorder.strict) for s in recorder.samples(graph)]
            example = _on_device(signature, recorder.largest_sample(graph), device, recorder.strict)
            declared = _declares_batch(recorder, graph)
            atol, rtol = getattr(strategy, "atol", 1e-4), getattr(strategy, "rtol", 1e-4)
            padding = check_padding_eager(forward, signature, graph, samples, pad_values or {}, atol, rtol)
            batch_calls = samples
            if padding is not None and padding.held and padding.layout is not None:
                batch_calls = [*samples, *padded_copies(padding.layout, samples, signature)]
            batch_note = decide_batch_axis(forward, signature, graph, batch_calls, declared)
            log(f"{graph.name}: {batch_note}")
            context = TuneContext(
                module, signature, graph, samples, example, workdir / graph.name, device, log, forward, batch_declared=declared,
                call_sizes=recorder.call_sizes(graph),
            )
            try:
                backend, report = strategy.tune(context)
            except TuningError as error:
                if not _is_candidate_batch(graph, declared):
                    raise
                # The forward specialises on its batch size (torch.export infers it static): keep it fixed.
                size = graph.dims["batch"].max
                _drop_batch_axis(graph)
                graph.batch_independent = None
                batch_note = (
                    f"batch fixed at {size}: no candidate passed with the batch axis dynamic "
                    f"({str(error).splitlines()[0][:200]})"
                )
                log(f"{graph.name}: {batch_note}; tuning again")
                backend, report = strategy.tune(context)
            report.batch = batch_note
            if padding is not None:
                padding = settle_padding(padding, graph, backend.infer, forward, signature, samples, atol, rtol)
                graph.padding = padding.to_dict()
                report.padding = padding.describe()
                log(f"{graph.name}: {report.padding}")
            log(f"{graph.name}: chose {backend.name}")
            if backend.name == EagerBackend.name:
                warn(
                    f"{graph.name}: kept on eager ({report.decision}). It runs in process as before, but it cannot be "
                    "exported to Triton; to serve it, tune it with OneBackendStrategy('onnxruntime'), ('aoti'), "
                    "('inductor') or ('openvino')"
                    + ("" if getattr(strategy, "speed_margin", None) is None else ", or pass speed_margin=None to keep the fastest candidate even when slower than eager")
                    + "."
                )
            if backend.artifacts:  # a backend with an artifact can be served: keep warmup inputs with it
                backend.artifacts.update(write_warmup_samples(samples, workdir / graph.name))
            tuned.append(TunedGraph(graph, backend, report))
    except BaseException:
        for entry in tuned:
            entry.backend.deactivate()
        raise
    return tuned
