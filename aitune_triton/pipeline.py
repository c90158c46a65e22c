"""Tune every wrapped module of a pipeline by running the pipeline on a dataset."""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import default_collate

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.module.registry import live_modules
from aitune_triton.module.state import ModuleState

__all__ = ["tune"]

logger = logging.getLogger("aitune_triton")


def _batches(items: list[Any], batch_sizes: Sequence[int]) -> Iterable[Any]:
    if not batch_sizes:
        raise InvalidArgumentError("batch_sizes: expected None or a non-empty list of positive integers, got []")
    for batch_size in batch_sizes:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_sizes: expected positive integers, got {list(batch_sizes)!r}")
        for start in range(0, len(items), batch_size):
            yield default_collate(items[start : start + batch_size])


def tune(
    func: Callable[[Any], Any],
    dataset: Iterable[Any],
    batch_sizes: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    dry_run: bool = False,
) -> dict[str, str]:
    """Record and tune every live :class:`~aitune_triton.Module` that ``func`` calls.

    Every live Module that is not tuned starts (or continues) recording; ``func`` runs once per
    dataset item, or, with ``batch_sizes``, once per batch built from consecutive items with
    ``torch.utils.data.default_collate`` for each batch size in turn (so calls are recorded at
    those batch sizes). Then each Module that ``func`` called is tuned. A Module whose tuning fails
    is left in passthrough, with the reason logged on the ``aitune_triton`` logger and returned.
    Modules ``func`` did not call, and every Module when ``func`` raises, get their earlier state
    back.

    Args:
        func: The pipeline: called with one dataset item or one collated batch.
        dataset: Items for ``func`` (a list, a ``torch.utils.data.Dataset`` with ``__iter__``...).
        batch_sizes: Batch sizes to collate items into; None calls ``func`` on single items.
        device: Device to tune for; default each Module's device.
        dry_run: Record, then print what each Module's tuning would build, without tuning.

    Returns:
        Module name -> ``"tuned"``, ``"dry run"``, ``"not called"`` (earlier state kept) or
        ``"failed: <reason>"`` (left in passthrough).

    Raises:
        InvalidArgumentError: (a ValueError) ``batch_sizes`` holds something other than positive integers.
        Exception: whatever ``func`` raises (after the earlier states are restored).
    """
    modules = [m for m in live_modules() if m.state is not ModuleState.TUNED]
    items = list(dataset)
    batches = list(_batches(items, batch_sizes)) if batch_sizes is not None else items
    before = {m.name: (m.state, m._recorded_calls()) for m in modules}
    for module in modules:
        module.enable_recording()
    try:
        with torch.no_grad():
            for inputs in batches:
                func(inputs)
    except BaseException:
        for module in modules:
            module._restore_state(before[module.name][0])
        raise
    results: dict[str, str] = {}
    for module in modules:
        state, calls = before[module.name]
        if module._recorded_calls() == calls:
            module._restore_state(state)
            results[module.name] = "not called"
            continue
        try:
            module.tune(device=device, dry_run=dry_run)
            results[module.name] = "dry run" if dry_run else "tuned"
        except Exception as error:  # any failure leaves this Module eager and the pipeline running
            module.enable_passthrough()
            logger.warning("Module '%s' is left in passthrough: tuning failed: %s", module.name, error)
            results[module.name] = f"failed: {error}"
    return results
