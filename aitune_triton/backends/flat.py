"""A flat view of a module for exporters: tensors in, tensors out."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Callable, Iterator

import torch
import torch.utils._pytree as pytree

from aitune_triton.spec import CallStructure, FlatTree, ForwardSignature, GraphSpec

__all__ = ["FlatModule", "export_dynamic_shapes", "export_example", "index_ranges", "input_axes", "quiet_export"]

#: ATen ops whose first argument's values reach their output unchanged (moved, copied, cast, cut).
_VALUE_PRESERVING = frozenset(
    {
        "view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "expand", "flatten", "permute",
        "transpose", "t", "to", "_to_copy", "clone", "contiguous", "detach", "alias", "repeat", "lift_fresh_copy",
    }
)  # fmt: skip


class FlatModule(torch.nn.Module):
    """Calls ``module`` with one recorded input structure, taking and returning flat tensors.

    ``forward(*tensors)`` takes the tensor leaves of a call in flattening order, puts them back
    into the recorded structure (constants included), calls the module and returns its tensor
    output leaves as a tuple. ``torch.export`` and ``torch.onnx.export`` see only tensors.

    Args:
        module: The original module (registered as a submodule, so its parameters are captured).
        signature: Its forward signature.
        example: A recorded call of the graph spec; only its structure and constants are kept.
        forward: What to call: the module's own forward without hooks (default ``module.forward``).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        signature: ForwardSignature,
        example: CallStructure,
        forward: Callable[..., Any] | None = None,
    ):
        super().__init__()
        self.module = module
        self._forward = forward or module.forward
        self._signature = signature
        # Keep the structure and constants only, not the example's tensors.
        self._structure = CallStructure((), {}, FlatTree(example.flat.treespec, example.flat.template, example.flat.paths), example.key)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Tensor input leaves in, tensor output leaves out (both in flattening order)."""
        args, kwargs = self._structure.with_tensors(self._signature, tensors)
        output = self._forward(*args, **kwargs)
        return tuple(leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor))


def export_dynamic_shapes(graph: GraphSpec) -> tuple[tuple[dict[int, Any], ...]] | None:
    """``dynamic_shapes`` for exporting a :class:`FlatModule` of ``graph``.

    Every dynamic axis gets its own ``Dim.DYNAMIC`` hint bounded by its dimension's range, and
    ``torch.export`` finds which axes the model itself ties together (``input_ids`` and
    ``attention_mask`` lengths, say). Axes are never tied just because their recorded sizes were
    equal: square images recorded at 224 and 256 must still run at 224 x 256. The result is wrapped
    in a 1-tuple because ``FlatModule.forward`` takes ``*tensors``. None when every axis is static.
    """
    per_input = tuple(
        {axis: _hint(graph.dims[name].min, graph.dims[name].max) for axis, name in enumerate(spec.dim_names) if name is not None}
        for spec in graph.inputs
    )
    if not any(per_input):
        return None
    return (per_input,)


def input_axes(exported: torch.export.ExportedProgram) -> list[list[int | str]]:
    """Per user input of ``exported``, per axis: the size export fixed it to, or its size symbol.

    Axes with one symbol are the ones the exported graph assumes equal (see
    :meth:`aitune_triton.contract.InputContract.shape_violations`).
    """
    placeholders = {node.name: node for node in exported.graph.nodes if node.op == "placeholder"}
    axes = []
    for name in exported.graph_signature.user_inputs:
        shape = placeholders[name].meta["val"].shape
        axes.append([str(size.node.expr) if isinstance(size, torch.SymInt) else int(size) for size in shape])
    return axes


def index_ranges(exported: torch.export.ExportedProgram) -> list[list[dict[str, Any]]]:
    """Per user input of ``exported``: the value ranges its elements must lie in (may be empty).

    An integer input that reaches the index argument of ``aten.embedding`` (the table's rows),
    ``index_select``/``gather`` (the indexed dimension) or ``index.Tensor`` (advanced indexing,
    where negative values count from the end), directly or through ops that keep its values
    (view, reshape, unsqueeze, expand, to an integer dtype, clone...), gets that op's
    :class:`~aitune_triton.contract.IndexRange` as a dict. The indexed size is an integer, or the
    symbol of an input axis when it is one; any other symbolic size is left out. Values an input
    reaches only through arithmetic (``ids + 1``) or through a slice or select (part of an input
    used as an index, the rest as data) are not covered. Eager PyTorch raises
    ``IndexError`` for such values; compiled artifacts read out of bounds or abort the process.
    """
    symbols = {axis for axes in input_axes(exported) for axis in axes if isinstance(axis, str)}
    placeholders = {node.name: node for node in exported.graph.nodes if node.op == "placeholder"}
    found = []
    for name in exported.graph_signature.user_inputs:
        node = placeholders[name]
        value = node.meta.get("val")
        ranges: list[dict[str, Any]] = []
        if isinstance(value, torch.Tensor) and not value.dtype.is_floating_point and not value.dtype.is_complex and value.dtype != torch.bool:
            for index_range in _reached_index_ranges(node):
                size = index_range["size"]
                if isinstance(size, torch.SymInt):
                    size = str(size.node.expr)
                    if size not in symbols:
                        continue
                entry = {**index_range, "size": int(size) if not isinstance(size, str) else size}
                if entry not in ranges:
                    ranges.append(entry)
        found.append(ranges)
    return found


def _reached_index_ranges(start: torch.fx.Node) -> Iterator[dict[str, Any]]:
    """The index ranges of the indexing ops ``start``'s values reach (``size`` possibly a SymInt)."""
    seen, pending = {start}, [start]
    while pending:
        node = pending.pop()
        for user in node.users:
            op = getattr(getattr(user.target, "overloadpacket", None), "__name__", "")
            args: list[Any] = list(user.args)
            if op in _VALUE_PRESERVING and args and args[0] is node:
                output = _value(user)
                kept = isinstance(output, torch.Tensor) and _keeps_integers(_value(node), output)
                if kept and user not in seen:
                    seen.add(user)
                    pending.append(user)
            elif op == "embedding" and len(args) > 1 and args[1] is node:
                yield {"op": "aten.embedding", "size": _value(args[0]).shape[0], "negative": False}
            elif op in ("index_select", "gather") and len(args) > 2 and args[2] is node:
                source = _value(args[0])
                yield {"op": f"aten.{op}", "size": source.shape[int(args[1]) % source.dim()], "negative": False}
            elif op == "index" and len(args) > 1 and isinstance(args[1], (list, tuple)):
                indices = list(args[1])
                for position, index in enumerate(indices):
                    if index is node and not any(_is_bool(other) for other in indices[:position]):
                        yield {"op": "aten.index", "size": _value(args[0]).shape[position], "negative": True}


def _keeps_integers(source: Any, output: torch.Tensor) -> bool:
    """Whether an op's integer output holds its integer input's values: no float or bool result,
    and no cast to an 8- or 16-bit type narrower than the input (int64 -> int8 wraps 300 to 44).
    int64 -> int32 counts as keeping them: ids past 2**31 are refused rather than wrapped."""
    if output.dtype.is_floating_point or output.dtype.is_complex or output.dtype == torch.bool:
        return False
    if not isinstance(source, torch.Tensor) or source.dtype in (output.dtype, torch.bool):
        return True
    wide, narrow = torch.iinfo(source.dtype), torch.iinfo(output.dtype)
    return narrow.bits >= 32 or (narrow.min <= wide.min and wide.max <= narrow.max)


def _value(node: Any) -> Any:
    """The fake value export recorded for a graph node (None for anything else)."""
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _is_bool(node: Any) -> bool:
    value = _value(node)
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool


def _hint(low: int, high: int) -> Any:
    """``Dim.DYNAMIC`` over ``low..high``, widened so that it stays dynamic in ``torch.export``.

    ``torch.export`` assumes a dynamic size is at least 2 (its 0/1 specialization), so a range of
    1..2 would collapse to the single size 2 and fail the export; the upper bound is raised to keep
    at least two sizes. Calls are still checked against the recorded range before they run.
    """
    return torch.export.Dim.DYNAMIC(min=low, max=max(high, max(low, 2) + 1))


def export_example(graph: GraphSpec, example: CallStructure, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The example tensors to export ``graph`` with, on ``device``.

    ``torch.export`` specializes an axis whose example size is 1, so when every batched input has
    batch size 1 in the example (calls recorded at batch 1 only, with a declared
    :class:`~aitune_triton.module.dims.BatchDim` or proved independent by joining them), the example
    is repeated to batch size 2 along each batch axis; the export hint of the batch reaches at least
    3 (see :func:`export_dynamic_shapes`). Samples along a batch axis are independent, so this
    changes no result.
    """
    tensors = [t.to(device) for t in example.flat.tensors]
    bounds = graph.dims.get("batch")
    axes = [spec.batch_axis for spec in graph.inputs]
    batched = [(t, axis) for t, axis in zip(tensors, axes) if axis is not None]
    if bounds and batched and all(t.shape[axis] == 1 for t, axis in batched):
        tensors = [torch.cat([t, t], dim=axis) if axis is not None else t for t, axis in zip(tensors, axes)]
    return tuple(tensors)


@contextlib.contextmanager
def quiet_export() -> Iterator[io.StringIO]:
    """Keep exporter chatter (stdout prints, warnings, torch.onnx log lines) off the console.

    Yields a buffer with what was printed and warned, for error messages when the export fails.
    """
    buffer = io.StringIO()
    loggers = [
        logging.getLogger(name)
        for name in ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "torch._functorch")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buffer):
            warnings.simplefilter("always")
            yield buffer
        for warning in caught:
            buffer.write(f"{warning.category.__name__}: {warning.message}\n")
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
