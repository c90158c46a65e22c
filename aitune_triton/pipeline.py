"""Tune every wrapped module of a pipeline by running the pipeline on a dataset."""

from __future__ import annotations

import difflib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, Dataset, IterableDataset, default_collate

from aitune_triton._warnings import warn
from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError
from aitune_triton.module.registry import live_modules
from aitune_triton.module.state import ModuleState

__all__ = ["tune"]

logger = logging.getLogger("aitune_triton")

_ARGUMENTS = (
    "func",
    "dataset",
    "batch_sizes",
    "max_num_batches_per_batch_size",
    "ignore_failing_modules",
    "device",
    "dry_run",
)
# Options of AITune's tune() accepted and ignored here, with why (a warning says it).
_AITUNE_IGNORED = {
    "disable_external_logging": "aitune_triton changes no other library's logging; configure the loggers you want quiet "
    "with the logging module",
}
# Options of AITune's tune() that this library has no counterpart for, with what to do instead.
_AITUNE_ONLY = {
    "clear_cache": "every tune() builds into a fresh directory under the Module's cache_dir; delete that directory "
    "(default ~/.cache/aitune_triton, or $AITUNE_TRITON_CACHE_DIR) to clear it",
}


def _refuse_unknown(options: Mapping[str, Any]) -> None:
    for name in options:
        if name in _AITUNE_IGNORED:
            warn(f"{name}: AITune's tune() option is accepted and ignored: {_AITUNE_IGNORED[name]}.")
            continue
        if name in _AITUNE_ONLY:
            raise InvalidArgumentError(
                f"{name}: AITune's tune() option has no counterpart in aitune_triton.tune(): {_AITUNE_ONLY[name]}. "
                f"Remove {name}=...; accepted arguments: {', '.join(_ARGUMENTS)}."
            )
        close = difflib.get_close_matches(name, _ARGUMENTS, n=1)
        hint = f" Did you mean {close[0]}=...?" if close else ""
        raise InvalidArgumentError(
            f"{name}: tune() got an unexpected keyword argument {name}={options[name]!r}; "
            f"accepted arguments: {', '.join(_ARGUMENTS)}.{hint}"
        )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _validate(
    func: Any,
    batch_sizes: Any,
    max_num_batches: Any,
    ignore_failing_modules: Any,
    device: Any,
    dry_run: Any,
) -> torch.device | None:
    if not callable(func):
        raise ArgumentTypeError(
            f"func: expected a callable (a wrapped aitune_triton.Module, a torch.nn.Module holding wrapped Modules, "
            f"or a function running the pipeline), got {type(func).__name__}. Pass the model or a function calling it."
        )
    if batch_sizes is not None:
        if not isinstance(batch_sizes, Sequence) or isinstance(batch_sizes, (str, bytes)) or not batch_sizes:
            raise InvalidArgumentError(
                f"batch_sizes: expected None or a non-empty list of positive integers, got {batch_sizes!r}. "
                "Pass e.g. batch_sizes=[1, 8]."
            )
        bad = [size for size in batch_sizes if not _is_positive_int(size)]
        if bad:
            raise InvalidArgumentError(
                f"batch_sizes: expected positive integers, got {list(batch_sizes)!r} ({bad[0]!r} is not one). "
                "Pass e.g. batch_sizes=[1, 8]."
            )
    if max_num_batches is not None and not _is_positive_int(max_num_batches):
        raise InvalidArgumentError(
            f"max_num_batches_per_batch_size: expected None (every batch) or a positive integer, got {max_num_batches!r}."
        )
    for name, value in (("ignore_failing_modules", ignore_failing_modules), ("dry_run", dry_run)):
        if not isinstance(value, bool):
            raise ArgumentTypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__}).")
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InvalidArgumentError(
            f"device: expected None (each Module's own device), a torch.device or a device string such as 'cpu' or "
            f"'cuda:0', got {device!r} ({error})."
        ) from None


# --------------------------------------------------------------------------------- samples
def _is_map_style(dataset: Any) -> bool:
    kind = type(dataset)
    return hasattr(kind, "__len__") and hasattr(kind, "__getitem__")


def _sample_reader(dataset: Any, needed: int | None) -> tuple[int, Callable[[int], Any]]:
    """``(number of samples, sample by index)`` for a dataset, following AITune's reading of it.

    One sample: a tensor, a tuple, a mapping, a string, or any object that is neither a sequence
    nor iterable. Map-style (``__len__`` and ``__getitem__``): read by ``len()`` and index, only
    the indices used. Iterable: read once into memory, at most ``needed`` samples.
    """
    if dataset is None:
        raise InvalidArgumentError(
            "dataset: expected samples (a tensor, a tuple or dict of inputs, a list of them, a torch.utils.data.Dataset "
            "or an iterable), got None."
        )
    if isinstance(dataset, (torch.Tensor, tuple, Mapping, str, bytes)):
        return 1, lambda index: dataset
    if not isinstance(dataset, IterableDataset) and _is_map_style(dataset):
        count = len(dataset)
        if count == 0:
            raise InvalidArgumentError(f"dataset: the {type(dataset).__name__} is empty (len 0); pass at least one sample.")
        return count, dataset.__getitem__
    if isinstance(dataset, IterableDataset) or hasattr(type(dataset), "__iter__"):
        samples = list(itertools.islice(iter(dataset), needed))
        if not samples:
            raise InvalidArgumentError(f"dataset: the {type(dataset).__name__} yielded no sample; pass at least one.")
        return len(samples), samples.__getitem__
    if isinstance(dataset, Dataset):
        raise InvalidArgumentError(
            f"dataset: the {type(dataset).__name__} has __getitem__ but neither __len__ nor __iter__, so its end cannot "
            "be known. Define __len__ (a map-style dataset) or make it a torch.utils.data.IterableDataset."
        )
    return 1, lambda index: dataset


def _batches(count: int, batch_sizes: Sequence[int] | None, cap: int | None) -> Iterator[tuple[int | None, list[int]]]:
    """``(batch size or None, sample indices)`` per call: single samples, or for each batch size
    the samples cycled to fill at least one batch, the last incomplete batch dropped."""
    if batch_sizes is None:
        yield from ((None, [index]) for index in range(min(count, cap or count)))
        return
    for batch_size in batch_sizes:
        cycled = [index % count for index in range(max(count, batch_size))]
        for indices in itertools.islice(BatchSampler(cycled, batch_size, drop_last=True), cap):
            yield batch_size, indices


def _collate(samples: list[Any], indices: list[int], batch_size: int) -> Any:
    try:
        return default_collate(samples)
    except (TypeError, RuntimeError) as error:
        raise InvalidArgumentError(
            f"dataset: samples {indices} cannot be collated into a batch of {batch_size} with "
            f"torch.utils.data.default_collate: {error}. Samples are stacked along a new axis 0, so their tensors need "
            "equal shapes and every value must be a tensor, number, string or a container of them; pass constants "
            "such as None from func instead, or pass batch_sizes=None to call func on each sample as it is."
        ) from error


def _call(func: Callable[..., Any], first: Any, inputs: Any, indices: list[int]) -> None:
    if isinstance(first, Mapping):
        keys = [key for key in inputs if not isinstance(key, str)]
        if keys:
            raise InvalidArgumentError(
                f"dataset: sample {indices[0]} is a dict, passed as keyword arguments (func(**sample)), so its keys must "
                f"be strings; got key {keys[0]!r} ({type(keys[0]).__name__}). Use argument names as keys, or a tuple "
                "for positional arguments."
            )
        func(**inputs)
    elif isinstance(first, tuple):
        func(*inputs)
    else:
        func(inputs)


def tune(
    func: Callable[..., Any],
    dataset: Any,
    batch_sizes: Sequence[int] | None = None,
    max_num_batches_per_batch_size: int | None = None,
    *,
    ignore_failing_modules: bool = True,
    device: str | torch.device | None = None,
    dry_run: bool = False,
    **unknown: Any,
) -> dict[str, str]:
    """Record and tune every live :class:`~aitune_triton.Module` that ``func`` calls (AITune's ``tune``).

    Every live Module that is not tuned starts (or continues) recording, ``func`` runs on the
    dataset under ``torch.no_grad()``, and then each Module that ``func`` called is tuned, one
    after another in name order. ``func`` may be a wrapped Module itself, a plain
    ``torch.nn.Module`` holding wrapped submodules, or any callable.

    What the dataset is:

    * One sample: a tensor, a tuple or dict (of tensors, say), a string, or any object that is
      neither a sequence nor iterable: ``tune(model, torch.randn(3, 224, 224), batch_sizes=[1, 8])``
      records batches of that one image.
    * Map-style (has ``__len__`` and ``__getitem__``: a list, a ``torch.utils.data.Dataset``):
      ``len(dataset)`` samples, read by index, only the indices used (a ``__getitem__`` that
      never raises ``IndexError`` is fine).
    * Iterable (a ``torch.utils.data.IterableDataset``, a generator, a ``DataLoader``): read
      once into memory, to its end, or only as far as the batches need when
      ``max_num_batches_per_batch_size`` is given (which an endless one needs).

    How ``func`` is called: with a dict (any mapping) sample, or a batch of them, as
    ``func(**sample)``; a tuple (namedtuples too) as ``func(*sample)``; anything else (a tensor, a
    list, a string) as ``func(sample)``.

    With ``batch_sizes``, for each batch size in turn consecutive samples are collated into
    batches with ``torch.utils.data.default_collate``: samples are single examples and gain a new
    axis 0 (``torch.stack``; a sample of shape ``(1, 8)`` gives batches ``(b, 1, 8)``), numbers
    become tensors and strings lists, dicts and tuples are collated per entry. A dataset smaller
    than a batch is repeated to fill one batch; the last incomplete batch is dropped. So
    ``tune(model, sample, batch_sizes=[1, 8])`` records ``model`` at batch 1 and batch 8, and
    tuning then accepts any batch from 1 to 8 where the batch axis is confirmed. Without
    ``batch_sizes``, ``func`` gets each sample as it is, already batched or not.

    ``ignore_failing_modules``, ``device`` and ``dry_run`` are keyword-only (AITune's fifth
    positional parameter is ``device``, so a positional call written for AITune fails here
    rather than binding a device to a flag).

    Args:
        func: The pipeline or model: called once per sample or batch, as above.
        dataset: The samples, as above.
        batch_sizes: Positive batch sizes to collate samples into, e.g. ``[1, 8]``; None (default)
            calls ``func`` on each sample as it is. AITune defaults to ``[1, 2]`` instead (here
            the batch axis is found by measurement, and samples that already are batches are
            used as given).
        max_num_batches_per_batch_size: At most this many calls per batch size (without
            ``batch_sizes``: at most this many samples); None (default) uses every batch.
        ignore_failing_modules: True (default, as AITune): a Module whose tuning fails is left
            in passthrough (its own forward runs), the reason is logged on the
            ``aitune_triton`` logger and returned, and the other Modules are still tuned.
            False: the first failure is raised after every Module that this call did not tune
            (the failing one and the ones after it) gets its earlier state back, keeping the
            calls it recorded, so ``module.tune()`` can be called on it again after a fix;
            Modules tuned before the failure stay tuned.
        device: Device to tune for; None (default) tunes each Module on its own device (AITune
            defaults to ``"cuda:0"``).
        dry_run: Record, then print what each Module's tuning would build, without tuning
            (Modules stay recording).
        **unknown: Refused, each an error naming it (AITune's ``disable_external_logging``: ignored with a warning).

    Returns:
        Module name -> ``"tuned"``, ``"dry run"``, ``"not called"`` (earlier state kept) or
        ``"failed: <reason>"`` (left in passthrough), for every live Module not tuned before.

    Raises:
        InvalidArgumentError: (a ValueError) an unknown keyword argument (``batch_size=8``) or an
            AITune option without a counterpart here (``clear_cache``); ``batch_sizes`` that is
            not a non-empty list of positive integers; ``max_num_batches_per_batch_size`` that
            is not a positive integer; an unknown ``device``; a dataset that is None, empty, or a
            ``Dataset`` with neither ``__len__`` nor ``__iter__``: all before anything runs.
            While running: samples that ``default_collate`` cannot join into a batch (unequal
            shapes, None values) or a dict sample with non-string keys.
        ArgumentTypeError: (a TypeError) ``func`` is not callable, or ``ignore_failing_modules``
            or ``dry_run`` is not a bool.
        Exception: whatever ``func`` or reading the dataset raises, after every Module gets its
            earlier state back; with ``ignore_failing_modules=False``, the first tuning failure.
    """
    _refuse_unknown(unknown)
    tune_device = _validate(func, batch_sizes, max_num_batches_per_batch_size, ignore_failing_modules, device, dry_run)
    cap = max_num_batches_per_batch_size
    count, sample = _sample_reader(dataset, None if cap is None else cap * max(batch_sizes or [1]))
    modules = [m for m in live_modules() if m.state is not ModuleState.TUNED]
    before, called, results = _record(func, modules, sample, _batches(count, batch_sizes, cap))
    results.update(_tune_called(called, before, tune_device, dry_run, ignore_failing_modules))
    return results


def _record(
    func: Callable[..., Any], modules: Sequence[Any], sample: Callable[[int], Any], batches: Iterable[tuple[int | None, list[int]]]
) -> tuple[dict[str, tuple[ModuleState, int]], list[Any], dict[str, str]]:
    """Step 1 of :func:`tune`: every Module in ``modules`` records while ``func`` runs on each
    batch. On any failure every Module gets its earlier state back (and the error is raised);
    after the run, so does every Module that ``func`` did not call.

    Returns:
        ``(before, called, results)``: Module name -> (earlier state, calls recorded before), the
        Modules that recorded calls, and ``"not called"`` for each of the others.
    """
    before = {m.name: (m.state, m._recorded_calls()) for m in modules}
    for module in modules:
        module.enable_recording()
    try:
        with torch.no_grad():
            for batch_size, indices in batches:
                samples = [sample(index) for index in indices]
                inputs = samples[0] if batch_size is None else _collate(samples, indices, batch_size)
                _call(func, samples[0], inputs, indices)
    except BaseException:
        for module in modules:
            module._restore_state(before[module.name][0])
        raise
    called, results = [], {}
    for module in modules:
        state, calls = before[module.name]
        if module._recorded_calls() == calls:
            module._restore_state(state)
            results[module.name] = "not called"
        else:
            called.append(module)
    return before, called, results


def _tune_called(
    called: Sequence[Any],
    before: Mapping[str, tuple[ModuleState, int]],
    device: torch.device | None,
    dry_run: bool,
    ignore_failing_modules: bool,
) -> dict[str, str]:
    """Step 2 of :func:`tune`: tune each Module that recorded calls, in order; a failure leaves it
    in passthrough (``ignore_failing_modules``) or is raised after the Modules not tuned get their
    earlier state back. Returns Module name -> outcome."""
    results: dict[str, str] = {}
    for position, module in enumerate(called):
        try:
            module.tune(device=device, dry_run=dry_run)
            results[module.name] = "dry run" if dry_run else "tuned"
        except Exception as error:
            if not ignore_failing_modules:
                _restore_untuned(called[position:], before)
                logger.error(
                    "Module '%s': tuning failed, raising it (ignore_failing_modules=False); the Modules this call did "
                    "not tune have their earlier state back: %s",
                    module.name,
                    error,
                )
                raise
            module.enable_passthrough()
            logger.warning("Module '%s' is left in passthrough: tuning failed: %s", module.name, error)
            results[module.name] = f"failed: {error}"
        except BaseException:  # an interrupt: no Module is left recording on this call's behalf
            _restore_untuned(called[position:], before)
            raise
    return results


def _restore_untuned(modules: Iterable[Any], before: Mapping[str, tuple[ModuleState, int]]) -> None:
    for module in modules:
        module._restore_state(before[module.name][0])
