"""The check of one request before it joins a padded batch (:func:`request_problem`).

Part of :mod:`.padding` (which re-exports it): the request's inputs agree in rank, rows and
length, a mask holds 0/1, and pad positions hold the pad value. Runs inside Triton beside
``model.py`` like the rest of this package: numpy only, torch lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from .padding import PaddingLayout

__all__ = ["Array", "is_torch", "request_problem"]

#: An array of one input: a numpy array or a torch tensor (bfloat16 only travels as a tensor).
Array = Any


def is_torch(array: Array) -> bool:
    """Whether ``array`` is a torch tensor (without importing torch)."""
    return not isinstance(array, np.ndarray) and type(array).__module__.startswith("torch")


def _all_in(array: Array, values: tuple[int, ...]) -> bool:
    if is_torch(array):
        import torch

        return bool(torch.isin(array, torch.tensor(values, dtype=array.dtype, device=array.device)).all())
    return bool(np.isin(np.asarray(array), values).all())


def _every_row_has_a_one(mask: Array, axis: int) -> bool:
    """Whether every row of ``mask`` along ``axis`` holds at least one 1."""
    if is_torch(mask):
        return bool((mask == 1).any(dim=axis).all())
    return bool((np.asarray(mask) == 1).any(axis=axis).all())


def _pads_hold_data(array: Array, mask: Array, pad_value: float | int) -> bool:
    """Whether ``array`` holds anything but ``pad_value`` where ``mask`` (same shape) is 0."""
    if is_torch(array) or is_torch(mask):
        import torch

        tensor, mask_tensor = torch.as_tensor(array), torch.as_tensor(mask)
        return bool((tensor[mask_tensor == 0] != pad_value).any())
    return bool((np.asarray(array)[np.asarray(mask) == 0] != pad_value).any())


def request_problem(layout: PaddingLayout, arrays: Sequence[Array]) -> str | None:
    """Why one request cannot join a padded batch, or None when it can.

    Checked, each message naming the input (an INVALID_ARGUMENT answer for that request alone):

    * every input has the rank and the batch size (axis 0) of the first;
    * the padded inputs agree on their length along the padded dimension;
    * that length is within ``min_length..max_length``;
    * a mask input (``layout.masks``) holds only 0 and 1;
    * *pad positions hold no data*: where a mask is 0 (the request's own pad positions), every
      other padded input of the mask's shape holds its pad value. Tuning proved only that pad
      values there change no valid output, so other contents are refused rather than trusted.

    Args:
        layout: The graph spec's padding layout.
        arrays: The request's inputs in the artifact's input order (numpy arrays or torch
            tensors), batch axis 0.

    Returns:
        One line naming the input and what is wrong, or None.
    """
    names = layout.input_names
    if len(arrays) != len(names):
        return f"expected {len(names)} inputs ({', '.join(names)}), got {len(arrays)}"
    rows = int(arrays[0].shape[0]) if len(arrays[0].shape) else None
    for name, array in zip(names, arrays):
        if not len(array.shape) or int(array.shape[0]) != rows:
            return f"input '{name}' has shape {list(array.shape)}, but '{names[0]}' has {rows} rows on the batch axis 0"
    length = None
    first = ""
    for index in layout.padded_inputs:
        axis, name, array = layout.input_axes[index], names[index], arrays[index]
        if axis is None:  # padded_inputs lists only inputs with an axis; this keeps the type checker told
            continue
        if len(array.shape) <= axis:
            return f"input '{name}' has rank {len(array.shape)}, but it is padded along axis {axis} ({layout.dim})"
        size = int(array.shape[axis])
        if length is None:
            length, first = size, name
            if not layout.min_length <= size <= layout.max_length:
                return (
                    f"input '{name}' has length {size} on axis {axis} ({layout.dim}), outside "
                    f"{layout.min_length}..{layout.max_length} that the model accepts"
                )
        elif size != length:
            return (
                f"input '{name}' has length {size} on axis {axis} ({layout.dim}), but '{first}' has {length}; "
                f"inputs sharing {layout.dim!r} must have equal lengths"
            )
    for index, is_mask in enumerate(layout.masks):
        if not is_mask:
            continue
        mask = arrays[index]
        if not _all_in(mask, (0, 1)):
            return f"input '{names[index]}' is a mask but holds values other than 0 and 1; send a 0/1 attention mask"
        mask_axis = layout.input_axes[index]
        if mask_axis is not None and len(mask.shape) > mask_axis and not _every_row_has_a_one(mask, mask_axis):
            return (
                f"input '{names[index]}' has a row of only 0s along axis {mask_axis} ({layout.dim}): a request with no "
                "valid position has no defined result once padded with others; send at least one position with mask 1"
            )
        for other in layout.padded_inputs:
            value = layout.pad_values[other]
            if other == index or layout.masks[other] or value is None or tuple(arrays[other].shape) != tuple(mask.shape):
                continue
            if _pads_hold_data(arrays[other], mask, value):
                return (
                    f"input '{names[other]}' holds data at pad positions (where '{names[index]}' is 0); "
                    f"expected its pad value {value!r} there, as the tuned model was checked with (pad with that value, "
                    "the tokenizer's pad id)"
                )
    return None
