"""An ``ensemble`` model wiring pre-processing step -> tuned module -> post-processing step.

Triton runs an ensemble itself (``platform: "ensemble"``, model configuration docs, "Ensemble
Models"): each ``ensemble_scheduling.step`` names a model, maps the ensemble's tensors to that
model's inputs (``input_map``: model input -> ensemble tensor) and its outputs to ensemble tensors
(``output_map``: model output -> ensemble tensor). Here the stages are::

    [preprocess step] -> entry model of the tuned module -> [postprocess step]

Ensemble tensors are named after the tensor that produces them, and every one is produced by
exactly one stage: the ensemble's inputs (the pre step's inputs, or the entry model's), the pre
step's outputs, the entry model's outputs, the post step's outputs. A stage's input takes the
tensor of the same name produced before it, with the same data type and compatible dims (same
rank; each axis equal or ``-1`` on either side). Outputs nobody consumes are left unmapped; the
ensemble's outputs are the post step's outputs (the entry model's without a post step).

The entry model routes each request to the graph model whose inputs are exactly the ones present
(its inputs are ``optional``), so the tensors reaching it must be exactly one graph spec's inputs.
The steps and the ensemble have ``max_batch_size: 0`` with full dims; the graph models batch
requests themselves. The ensemble calls the entry model, which is the graph model itself for a
module with one graph spec exported without a router, rather than a graph model behind a router
directly, so a request still gets the entry model's input-contract check (sizes, token ids past an
embedding table answered with INVALID_ARG before they reach a compiled artifact) and every graph
spec stays reachable; the price is one BLS hop (benchmarks/text_ensemble.py measures the ensemble
against a client doing the steps itself around the entry model: ratios 0.7-1.4 here, in noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton.errors import ExportError
from aitune_triton.triton.steps import Step, StepTensor

__all__ = ["Stage", "StageTensor", "ensemble_model_config", "step_model_config"]


@dataclass(frozen=True)
class StageTensor:
    """A tensor of one ensemble stage as its model's configuration declares it (full dims)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Stage:
    """One model of the ensemble.

    Attributes:
        model_name: Triton model name.
        version: The version the ensemble pins.
        label: What messages call it (``"preprocess step 'tokenize'"``).
        inputs: Its inputs.
        outputs: Its outputs.
        input_sets: For the entry model: the input names of each graph spec (a request must carry
            exactly one of them); empty for a step (every input is needed).
    """

    model_name: str
    version: int
    label: str
    inputs: tuple[StageTensor, ...]
    outputs: tuple[StageTensor, ...]
    input_sets: tuple[frozenset[str], ...] = ()

    @classmethod
    def from_step(cls, step: Step, model_name: str, version: int, role: str) -> "Stage":
        """The stage of a declared step (``role``: ``"preprocess"`` or ``"postprocess"``)."""

        def tensors(declared: Sequence[StepTensor]) -> tuple[StageTensor, ...]:
            return tuple(StageTensor(t.name, t.data_type, t.dims) for t in declared)

        return cls(model_name, version, f"{role} step '{step.name}' ({model_name})", tensors(step.inputs), tensors(step.outputs))

    @classmethod
    def from_config(cls, config: mc.ModelConfig, version: int, label: str, input_sets: Sequence[frozenset[str]] = ()) -> "Stage":
        """The stage of the model the ensemble calls: an entry (router) model, or the one graph model of a
        module exported without a router.

        The ensemble itself has ``max_batch_size: 0``, so it sees full shapes: a model that batches
        (``max_batch_size > 0``) gets its batch axis (``-1``) put in front of its configured dims, as
        Triton does when it checks an ensemble's tensors against a batching model.
        """
        batch = (-1,) if config.max_batch_size > 0 else ()

        def tensors(messages: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput]) -> tuple[StageTensor, ...]:
            return tuple(StageTensor(m.name, mc.DataType.Name(m.data_type), batch + tuple(m.dims),
                                     bool(getattr(m, "optional", False)))
                         for m in messages)

        return cls(config.name, version, label, tensors(config.input), tensors(config.output), tuple(input_sets))


def step_model_config(name: str, step: Step, instance_count: int = 1) -> mc.ModelConfig:
    """Configuration of a step's Python-backend model: the declared tensors, ``max_batch_size: 0``,
    ``KIND_CPU`` instances (a step runs plain Python on the CPU)."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    for tensor in step.inputs:
        config.input.add(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type), dims=list(tensor.dims))
    for tensor in step.outputs:
        config.output.add(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type), dims=list(tensor.dims))
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instance_count)
    config.version_policy.latest.num_versions = 1
    return config


def _compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def ensemble_model_config(name: str, stages: Sequence[Stage]) -> mc.ModelConfig:
    """The ensemble's configuration, wiring ``stages`` in order; checked while it is built.

    The first stage's inputs are the ensemble's inputs; the last stage's outputs its outputs.

    Raises:
        ExportError: a stage's input is produced by no earlier stage (or the tensors reaching the
            entry model are no graph spec's inputs), a tensor would be produced twice, or a
            producer and consumer disagree on data type or dims. The message names the tensor,
            both sides and what to do.
    """
    if not stages:
        raise ExportError(f"ensemble {name!r}: no stages to wire")
    available: dict[str, tuple[StageTensor, str]] = {}  # ensemble tensor -> (as produced, producer)
    consumed: set[str] = set()
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    first = stages[0]
    for tensor in first.inputs:
        available[tensor.name] = (tensor, "the ensemble's input")
        config.input.add(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type), dims=list(tensor.dims),
                         optional=tensor.optional)
    steps = []
    for stage in stages:
        scheduled = mc.ModelEnsembling.Step(model_name=stage.model_name, model_version=stage.version)
        if stage.input_sets and stage is not first:  # the ensemble's own optional inputs: each request decides
            present = frozenset(t.name for t in stage.inputs if t.name in available)
            if present not in stage.input_sets:
                expected = "; ".join(sorted(", ".join(sorted(s)) for s in stage.input_sets))
                raise ExportError(
                    f"ensemble {name!r}: the tensors reaching {stage.label} are {sorted(present)}, but it routes a request "
                    f"only when its inputs are exactly one graph spec's: {expected}. Make the preprocess step's outputs "
                    "one of these sets (names as in the tuned module's arguments)."
                )
            wanted = [t for t in stage.inputs if t.name in present]
        else:
            wanted = list(stage.inputs)
        for tensor in wanted:
            if tensor.name not in available:
                producers = ", ".join(f"{n!r} ({p})" for n, (_, p) in sorted(available.items())) or "none"
                raise ExportError(
                    f"ensemble {name!r}: input {tensor.name!r} of {stage.label} is produced by no earlier stage "
                    f"(available: {producers}). Rename the producing tensor or this input so that they match."
                )
            produced, producer = available[tensor.name]
            if produced.data_type != tensor.data_type or not _compatible(produced.dims, tensor.dims):
                raise ExportError(
                    f"ensemble {name!r}: tensor {tensor.name!r} is {produced.data_type} dims {list(produced.dims)} as "
                    f"{producer} produces it, but {stage.label} takes {tensor.data_type} dims {list(tensor.dims)}. Declare "
                    "the same data type and the same rank (each axis equal or -1) on both sides, casting in the step "
                    "function where needed."
                )
            scheduled.input_map[tensor.name] = tensor.name
            consumed.add(tensor.name)
        for tensor in stage.outputs:
            if tensor.name in available:
                raise ExportError(
                    f"ensemble {name!r}: tensor {tensor.name!r} would be produced by both {available[tensor.name][1]} "
                    f"and {stage.label}; every ensemble tensor has one producer. Rename one of them (a step's output "
                    "names are its declaration's)."
                )
            available[tensor.name] = (tensor, stage.label)
        steps.append((scheduled, stage))
    last = stages[-1]
    for tensor in last.outputs:
        config.output.add(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type), dims=list(tensor.dims))
        consumed.add(tensor.name)
    for scheduled, stage in steps:
        for tensor in stage.outputs:
            if tensor.name in consumed:  # outputs nobody takes stay unmapped
                scheduled.output_map[tensor.name] = tensor.name
        config.ensemble_scheduling.step.append(scheduled)
    config.version_policy.latest.num_versions = 1
    return config
