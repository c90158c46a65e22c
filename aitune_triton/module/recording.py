"""Recording: real calls in, graph specs out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree

from aitune_triton._warnings import warn
from aitune_triton.errors import RecordingError
from aitune_triton.module.declared_check import check_declared
from aitune_triton.module.dim_inference import infer_dims
from aitune_triton.module.dims import BatchDim, validate_dynamic_shapes
from aitune_triton.module.state import ModuleState
from aitune_triton.module.callers import inside_generation_loop
from aitune_triton.module.samples import Sample, SampleStore, copy_call
from aitune_triton.spec import (
    CallStructure,
    FlatTree,
    ForwardSignature,
    GraphSpec,
    OutputStructure,
    TensorSpec,
    dtype_name,
    flatten_call,
    flatten_output,
    holds_tensor,
    output_leaf_problems,
    same_value,
)

__all__ = ["Recorder", "RecordingState", "infer_dims"]

Shape = tuple[int, ...]


def _shapes(tensors: Sequence[torch.Tensor]) -> list[Shape]:
    return [tuple(t.shape) for t in tensors]


@dataclass
class _GraphRecord:
    """What recording keeps for one input structure."""

    key: str
    description: str
    input_paths: list[str]
    input_dtypes: list[str]
    output_key: tuple
    output_treespec: Any
    output_template: list[Any]
    output_paths: list[str]
    output_dtypes: list[str]
    output_leaf_paths: list[str]
    constants: dict[str, str]
    samples: SampleStore
    input_shapes: list[list[Shape]] = field(default_factory=list)
    output_shapes: list[list[Shape]] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class _GivenCall:
    """What recording keeps of a call's arguments, taken before the forward runs.

    A forward may change its arguments in place (a ``transformers`` cache passed empty to the
    first decode step comes back filled), so nothing about the call is read from the argument
    objects afterwards: the graph spec is the structure the forward was given.
    """

    key: str
    description: str
    input_paths: list[str]
    input_dtypes: list[str]
    shapes: list[Shape]
    constants: dict[str, str]
    problems: list[str]

    @classmethod
    def of(cls, call: CallStructure) -> "_GivenCall":
        """Describe ``call`` as it is now."""
        problems = [
            f"input leaf {path!r} is a {type(leaf).__module__}.{type(leaf).__qualname__} that holds tensors, which "
            "torch.utils._pytree cannot flatten, so a backend would keep this call's tensors as constants. Register "
            "the type with torch.utils._pytree, or pass its tensors as arguments"
            for path, leaf in zip(call.flat.paths, call.flat.leaves)
            if not isinstance(leaf, torch.Tensor) and holds_tensor(leaf)
        ]
        return cls(
            key=call.key,
            description=call.describe(),
            input_paths=call.flat.tensor_paths,
            input_dtypes=[dtype_name(t.dtype) for t in call.flat.tensors],
            shapes=_shapes(call.flat.tensors),
            constants=call.flat.constants,
            problems=problems,
        )


def _container_ids(tree: Any) -> dict[int, str]:
    """``{id: type name}`` of every mutable pytree node in ``tree`` other than a plain dict or list."""
    found: dict[int, str] = {}
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, torch.Tensor) or pytree.tree_is_leaf(node):
            continue
        frozen = isinstance(node, tuple) or getattr(getattr(node, "__dataclass_params__", None), "frozen", False)
        if type(node) not in (dict, list) and not frozen:  # an immutable one cannot have been updated in place
            found[id(node)] = type(node).__qualname__
        children, _ = pytree.SUPPORTED_NODES[pytree._get_node_type(node)].flatten_fn(node)
        pending.extend(children)
    return found


def _output_key(flat: FlatTree) -> tuple:
    """Structure and tensor dtypes and ranks; constant values are compared on their own."""
    return (repr(flat.treespec), tuple(flat.leaf_descriptions(strict=False)))


def _short(value: Any, limit: int = 300) -> str:
    """``repr`` with the type name, cut to ``limit`` characters (a cache's structure is long)."""
    text = repr(value)
    return f"{text[:limit]}... ({type(value).__name__})" if len(text) > limit else f"{text} ({type(value).__name__})"


def _changed_constants(record: _GraphRecord, output: FlatTree) -> list[str]:
    """Non-tensor output leaves whose value differs from the first recorded call's."""
    return [
        f"output leaf {path!r} was {_short(recorded)} in an earlier call and {_short(value)} in this one"
        for path, recorded, value in zip(output.paths, record.output_template, output.leaves)
        if recorded is not None and not same_value(recorded, value)
    ]


class Recorder:
    """Groups real calls into graph specs and keeps bounded copies of them.

    Args:
        signature: The module's forward signature.
        max_samples: Calls kept per graph spec (see :class:`SampleStore`).
        strict: Whether non-tensor argument values are part of the graph spec key.
        samples_dir: Directory for stored calls (one subdirectory per graph spec); None keeps
            them in memory.
        dynamic_shapes: Declared dims per input path, in either form
            :func:`~aitune_triton.module.dims.validate_dynamic_shapes` takes (checked again here
            unless it is that function's output).

    Raises:
        InvalidArgumentError: (a ValueError) ``dynamic_shapes`` is not a valid declaration.
    """

    def __init__(
        self,
        signature: ForwardSignature,
        max_samples: int = 32,
        strict: bool = True,
        samples_dir: Path | None = None,
        dynamic_shapes: Mapping[Any, Any] | None = None,
    ):
        self.signature = signature
        self.max_samples = max_samples
        self.strict = strict
        self.samples_dir = samples_dir
        self.dynamic_shapes = validate_dynamic_shapes(dynamic_shapes)
        self._graphs: dict[str, _GraphRecord] = {}
        self._warned_returned: set[str] = set()

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def num_calls(self) -> int:
        """Calls recorded over every graph spec."""
        return sum(len(record.input_shapes) for record in self._graphs.values())

    def record(self, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run ``forward(*args, **kwargs)``, record the call and return the output unchanged.

        Raises:
            TypeError: the arguments do not fit the forward signature.
            RecordingError: a tensor breaks a declared dynamic dim (rank, fixed size or range);
                the call is not run and not recorded.
        """
        call = flatten_call(self.signature, args, kwargs, self.strict)
        given = _GivenCall.of(call)  # before the forward runs: it may fill an argument in place (a cache)
        check_declared(given.input_paths, given.shapes, self.dynamic_shapes)
        copied_args, copied_kwargs = copy_call(args, kwargs)
        output = forward(*args, **kwargs)
        flat_output = flatten_output(output)
        self._warn_returned_arguments(call, args, kwargs, output)
        self._add(given, Sample(copied_args, copied_kwargs, given.shapes), flat_output)
        return output

    def _warn_returned_arguments(self, call: CallStructure, args: tuple, kwargs: dict, output: Any) -> None:
        """Warn once per module and type when the output holds a container object that was passed in.

        Such a module updates its argument in place (a Hugging Face cache passed as ``past_key_values``
        is filled and returned). A tuned or served module computes a new object and leaves the argument
        as it was, so the caller's own loop must use the returned value; during a Hugging Face
        ``generate()``, which passes each returned cache on itself, nothing is said.
        """
        returned = _container_ids(output)
        names = sorted({returned[i] for i in returned.keys() & _container_ids((args, kwargs)).keys()} - self._warned_returned)
        if names and not inside_generation_loop():
            self._warned_returned.update(names)
            warn(
                f"the module returns the {', '.join(names)} object it was given as an argument (updated in place). A "
                "tuned or served module returns a new object and leaves the argument unchanged: in your own loop, pass "
                "the returned value (outputs.past_key_values, say) to the next call, not the object you passed in "
                "(Hugging Face generate() already does). Said once per module."
            )

    def _add(self, call: _GivenCall, sample: Sample, output: FlatTree) -> None:
        record = self._graphs.get(call.key)
        if record is None:
            directory = self.samples_dir / f"graph_{len(self._graphs)}" if self.samples_dir is not None else None
            record = _GraphRecord(
                key=call.key,
                description=call.description,
                input_paths=call.input_paths,
                input_dtypes=call.input_dtypes,
                output_key=_output_key(output),
                output_treespec=output.treespec,
                output_template=output.template,
                output_paths=output.tensor_paths,
                output_dtypes=[dtype_name(t.dtype) for t in output.tensors],
                output_leaf_paths=output.paths,
                constants=call.constants,
                samples=SampleStore(self.max_samples, directory),
            )
            self._graphs[call.key] = record
            problems = call.problems + output_leaf_problems(output)
            if problems:
                self._refuse(record, "; ".join(problems))
        elif _output_key(output) != record.output_key:
            # Keep the first structure for the graph spec; the call is not recorded and tuning refuses.
            self._refuse(
                record,
                f"calls with the same input structure ({record.description}) returned differently structured "
                f"outputs: {_short(record.output_treespec)} vs {_short(output.treespec)}",
            )
            return
        else:
            changed = _changed_constants(record, output)
            if changed:
                self._refuse(
                    record,
                    f"calls with the same input structure ({record.description}) returned different non-tensor "
                    f"outputs: {'; '.join(changed)}. A tuned or served module returns non-tensor outputs as recorded, "
                    "so they must be the same in every call: return such values as tensors",
                )
                return
        record.samples.add(sample)
        record.input_shapes.append(sample.shapes)
        record.output_shapes.append(_shapes(output.tensors))

    def _refuse(self, record: _GraphRecord, error: str) -> None:
        """Mark the graph spec as not tunable (the first reason is kept) and warn once."""
        if record.error is None:
            record.error = error
            warn(f"graph_{list(self._graphs).index(record.key)}: {error}. tune() will refuse this graph spec.")

    def clear(self) -> None:
        """Forget every recorded call and delete stored samples."""
        for record in self._graphs.values():
            record.samples.clear()
        self._graphs.clear()

    def declared_paths_unused(self) -> list[str]:
        """Declared dynamic-shape paths that no recorded graph spec has as a tensor input."""
        seen = {path for record in self._graphs.values() for path in record.input_paths}
        return sorted(set(self.dynamic_shapes) - seen)

    def graph_specs(self) -> list[GraphSpec]:
        """Graph specs in the order their first call was seen."""
        return [self._to_spec(i, record) for i, record in enumerate(self._graphs.values())]

    def samples(self, graph: GraphSpec) -> list[Sample]:
        """Stored calls of ``graph``.

        Raises:
            RecordingError: the graph's calls returned inconsistent output structures.
        """
        record = self._graphs[graph.key]
        if record.error:
            raise RecordingError(f"{graph.name}: {record.error}")
        return list(record.samples)

    def call_sizes(self, graph: GraphSpec) -> list[int]:
        """Total input tensor elements of every recorded call of ``graph`` (stored or not), in order."""
        return [sum(math.prod(shape) for shape in shapes) for shapes in self._graphs[graph.key].input_shapes]

    def largest_sample(self, graph: GraphSpec) -> Sample:
        """The stored call of ``graph`` with the most tensor elements."""
        return self._graphs[graph.key].samples.largest()

    def _to_spec(self, index: int, record: _GraphRecord) -> GraphSpec:
        declared = {
            (leaf, axis): decl
            for leaf, path in enumerate(record.input_paths)
            for axis, decl in self.dynamic_shapes.get(path, {}).items()
        }
        fixed = [(leaf, axis) for leaf, path in enumerate(record.input_paths) for axis in self.dynamic_shapes.fixed_axes(path)]
        dims = infer_dims(record.input_shapes, record.output_shapes, declared, fixed)

        def specs(paths, dtypes, calls, batch_axes, dim_names) -> list[TensorSpec]:
            result = []
            for leaf, (path, dtype) in enumerate(zip(paths, dtypes)):
                shapes = [call[leaf] for call in calls]
                result.append(
                    TensorSpec(
                        path=path,
                        dtype=dtype,
                        min_shape=tuple(min(axis) for axis in zip(*shapes)),
                        max_shape=tuple(max(axis) for axis in zip(*shapes)),
                        batch_axis=batch_axes[leaf],
                        dim_names=dim_names[leaf],
                    )
                )
            return result

        return GraphSpec(
            name=f"graph_{index}",
            key=record.key,
            description=record.description,
            inputs=specs(record.input_paths, record.input_dtypes, record.input_shapes, dims.input_batch_axes, dims.input_dim_names),
            outputs=specs(
                record.output_paths,
                record.output_dtypes,
                record.output_shapes,
                dims.output_batch_axes,
                dims.output_dim_names,
            ),
            output_structure=OutputStructure(record.output_treespec),
            output_template=record.output_template,
            output_paths=record.output_leaf_paths,
            num_calls=len(record.input_shapes),
            dims=dims.ranges,
            constants=dict(record.constants),
            preferred_batch_size=_declared_batch_opt(declared.values(), dims.ranges),
        )


def _declared_batch_opt(declared: Any, ranges: dict[str, Any]) -> int | None:
    """The ``opt`` of a declared :class:`BatchDim`: the batch size the dynamic batcher aims for
    (``preferred_batch_size``) until a batch size sweep measures one; None when none is declared
    or the graph spec has no batch axis."""
    for decl in declared:
        if isinstance(decl, BatchDim) and decl.opt is not None and "batch" in ranges:
            return int(decl.opt)
    return None


class RecordingState:
    """Runs the module's forward and records each call with a :class:`Recorder`."""

    state = ModuleState.RECORDING

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def __call__(self, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return self.recorder.record(forward, args, kwargs)
