"""Which inputs a graph spec pads, along which axis, with which pad value: the padding layout.

The pad values a user declares (``Module(..., pad_values=...)``, checked by
:func:`validate_pad_values` when the Module is built) and those proposed from the recorded calls
make a :class:`~aitune_triton.served.padding.PaddingLayout` (:func:`padding_layout`); whether
padding with it changes any result is checked by :mod:`aitune_triton.module.padding`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.served.padding import PaddingLayout, request_problem
from aitune_triton.spec import CallStructure, GraphSpec

__all__ = ["padding_layout", "validate_pad_values"]


def validate_pad_values(pad_values: Mapping[Any, Any] | None, parameters: Sequence[str]) -> dict[str, int | float]:
    """Check a ``pad_values`` declaration and key it by dotted leaf path.

    Args:
        pad_values: ``{input path: pad value}``; a path is dotted (``"inputs.ids"``) or a tuple of
            its parts, as in ``dynamic_shapes``; a value is an int, float or bool. None: nothing declared.
        parameters: The forward's parameter names (a path starts with one of them).

    Returns:
        ``{dotted path: value}``.

    Raises:
        InvalidArgumentError: (a ValueError) not a mapping, a key that is no leaf path or starts with no
            parameter name, or a value that is not a number.
    """
    if pad_values is None:
        return {}
    if not isinstance(pad_values, Mapping):
        raise InvalidArgumentError(
            f"pad_values: expected a mapping {{input path: pad value}} (e.g. {{'input_ids': 0, 'attention_mask': 0}}), "
            f"got {type(pad_values).__name__}"
        )
    result: dict[str, int | float] = {}
    for key, value in pad_values.items():
        if isinstance(key, tuple) and key and all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in key):
            path = ".".join(str(p) for p in key)
        elif isinstance(key, str) and key:
            path = key
        else:
            raise InvalidArgumentError(f"pad_values: expected each key to be an input leaf path ('input_ids', ('inputs', 'ids')), got {key!r}")
        if path.split(".", 1)[0] not in parameters:
            raise InvalidArgumentError(
                f"pad_values: {path!r} names no parameter of the forward; expected a path starting with one of {list(parameters)}"
            )
        if not isinstance(value, (int, float)):
            raise InvalidArgumentError(
                f"pad_values[{path!r}]: expected a number (the value written at pad positions, e.g. the tokenizer's "
                f"pad_token_id), got {value!r}"
            )
        result[path] = int(value) if isinstance(value, bool) else value
    return result


def _is_binary(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every recorded value is 0 or 1 (an attention mask, token type ids of one segment)."""
    return bool(tensors) and all(t.numel() > 0 and bool(((t == 0) | (t == 1)).all()) for t in tensors)


def _is_attention_mask(tensors: Sequence[torch.Tensor], axis: int) -> bool:
    """Whether every recorded row along ``axis`` reads 1...1 0...0 with at least one 1: a mask whose
    zeros mark padding at the end (token type ids, 0...0 1...1 or all 0, are not)."""
    for tensor in tensors:
        rows = tensor.movedim(axis, -1).reshape(-1, tensor.shape[axis])
        if rows.shape[-1] == 0 or not bool((rows[:, 0] == 1).all()) or not bool((rows[:, 1:] <= rows[:, :-1]).all()):
            return False
    return _is_binary(tensors)


def _dim_axis(names: Sequence[str | None], dim: str) -> list[int]:
    return [axis for axis, name in enumerate(names) if name == dim]


def padding_layout(
    graph: GraphSpec, calls: Sequence[CallStructure], pad_values: Mapping[str, int | float]
) -> tuple[PaddingLayout | None, str]:
    """The padding layout of ``graph``, or None and why there is none.

    Needs: a batch axis at 0 on every input and output, exactly one other dynamic dimension, on
    at most one axis of each tensor, and a pad value for every input that has it.

    Returns:
        ``(layout, "")`` or ``(None, reason)``; the reason is empty when the graph spec has no
        dynamic axis besides the batch (nothing to pad, nothing to report).
    """
    dims = sorted({n for spec in graph.inputs for n in spec.dim_names if n is not None and n != "batch"})
    if not dims:
        return None, ""
    if len(dims) > 1:
        return None, f"several dynamic axes besides the batch ({', '.join(dims)}); padding handles one"
    dim = dims[0]
    if "batch" not in graph.dims or any(spec.batch_axis != 0 for spec in graph.inputs + graph.outputs):
        return None, "not every input and output has the batch axis at 0, so requests cannot be joined"
    input_axes: list[int | None] = []
    for spec in graph.inputs:
        axes = _dim_axis(spec.dim_names, dim)
        if len(axes) > 1:
            return None, f"input {spec.path!r} has {dim!r} on several axes {axes}"
        input_axes.append(axes[0] if axes else None)
    output_axes: list[int | None] = []
    for spec in graph.outputs:
        axes = _dim_axis(spec.dim_names, dim)
        if len(axes) > 1:
            return None, f"output {spec.path!r} follows {dim!r} on several axes {axes}"
        output_axes.append(axes[0] if axes else None)
    recorded = [[call.flat.tensors[index] for call in calls] for index in range(len(graph.inputs))]
    binary = [axis is not None and _is_binary(recorded[index]) for index, axis in enumerate(input_axes)]
    masks = [axis is not None and binary[index] and _is_attention_mask(recorded[index], axis) for index, axis in enumerate(input_axes)]
    values: list[int | float | None] = []
    for index, (spec, axis) in enumerate(zip(graph.inputs, input_axes)):
        if axis is None:
            values.append(None)
        elif spec.path in pad_values:
            values.append(pad_values[spec.path])
        elif binary[index] or (any(masks) and not spec.dtype.startswith(("float", "bfloat", "complex"))):
            values.append(_recorded_pad_value(recorded, masks, index))
        else:
            return None, (
                f"no pad value for input {spec.path!r} ({spec.dtype}, not a 0/1 mask); declare it with "
                f"Module(..., pad_values={{{spec.path!r}: ...}}) (e.g. the tokenizer's pad_token_id)"
            )
    low, high = graph.dims[dim].min, graph.dims[dim].max
    layout = PaddingLayout(
        dim=dim,
        min_length=low,
        max_length=high,
        input_names=tuple(spec.path for spec in graph.inputs),
        input_axes=tuple(input_axes),
        pad_values=tuple(values),
        masks=tuple(masks),
        output_names=tuple(spec.path for spec in graph.outputs),
        output_axes=tuple(output_axes),
    )
    for number, call in enumerate(calls):  # the served model checks every request so: the recorded ones must pass
        problem = request_problem(layout, call.flat.tensors)
        if problem:
            return None, (
                f"recorded call {number} would be refused by the served padding checks ({problem}); declare the pad "
                "value your tokenizer writes with Module(..., pad_values=...)"
            )
    return layout, ""


def _recorded_pad_value(recorded: Sequence[Sequence[torch.Tensor]], masks: Sequence[bool], index: int) -> int:
    """The pad value proposed for input ``index``: the one value the recorded calls hold where an
    attention mask of the same shape is 0 (a tokenizer's pad id), else 0."""
    found: set[float] = set()
    for mask_index, is_mask in enumerate(masks):
        if not is_mask or mask_index == index:
            continue
        for tensor, mask in zip(recorded[index], recorded[mask_index]):
            if tensor.shape == mask.shape:
                found.update(float(value) for value in torch.unique(tensor[mask == 0]).tolist())
    return int(found.pop()) if len(found) == 1 else 0
