"""The checks of :class:`~aitune_triton.strategies.TuneStrategy`'s constructor options, apart from
the life cycle so that each refusal names its option, the expected value and the value given."""

from __future__ import annotations

from typing import Any

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.strategies.profiler import Profiler

__all__ = ["check_fraction", "check_strategy_options"]


def check_fraction(option: str, value: float | None, allow_none: bool) -> None:
    """Raise :class:`InvalidArgumentError` unless ``value`` is a fraction in [0, 1) (or None where allowed);
    a value that looks like a percentage gets the fraction it likely meant in the message."""
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        expected = "a fraction in [0, 1) or None" if allow_none else "a fraction in [0, 1)"
        hint = f" (a fraction: {value / 100:g} for {value:g}%)" if isinstance(value, (int, float)) and 1 <= value < 100 else ""
        raise InvalidArgumentError(f"{option}: expected {expected}, got {value!r}{hint}")


def _check_flag(option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{option}: expected True or False, got {value!r}")


def check_strategy_options(
    *, atol: Any, rtol: Any, speed_margin: Any, accuracy: Any, min_accuracy: Any, find_max_batch_size: Any,
    max_batch_size_limit: Any, batch_gain_threshold: Any, profiler: Any, measure_layouts: Any, layout_seconds: Any,
    layout_latency_tolerance: Any, prune: Any,
) -> None:
    """Check the strategy options (see :class:`~aitune_triton.strategies.TuneStrategy` for each).

    Raises:
        InvalidArgumentError: (a ValueError) the first option outside its allowed values; the
            message names it, what was expected and the value given.
    """
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (atol, rtol)) or atol < 0 or rtol < 0:
        raise InvalidArgumentError(f"atol/rtol: expected non-negative tolerances, got atol={atol!r}, rtol={rtol!r}")
    check_fraction("speed_margin", speed_margin, allow_none=True)
    check_fraction("batch_gain_threshold", batch_gain_threshold, allow_none=False)
    if accuracy is not None and not callable(accuracy):
        raise InvalidArgumentError(f"accuracy: expected a callable (eager, tuned) -> bool or score, got {accuracy!r}")
    if min_accuracy is not None and (not isinstance(min_accuracy, (int, float)) or isinstance(min_accuracy, bool)):
        raise InvalidArgumentError(f"min_accuracy: expected a number or None, got {min_accuracy!r}")
    if min_accuracy is not None and accuracy is None:
        raise InvalidArgumentError(
            f"min_accuracy: given ({min_accuracy!r}) without accuracy=; pass the metric it applies to "
            "(accuracy=lambda eager, tuned: score) or drop min_accuracy"
        )
    if not isinstance(max_batch_size_limit, int) or isinstance(max_batch_size_limit, bool) or max_batch_size_limit < 1:
        raise InvalidArgumentError(f"max_batch_size_limit: expected a positive integer, got {max_batch_size_limit!r}")
    if profiler is not None and not isinstance(profiler, Profiler):
        raise InvalidArgumentError(f"profiler: expected an aitune_triton.strategies.Profiler, got {type(profiler).__name__}")
    _check_flag("find_max_batch_size", find_max_batch_size)
    _check_flag("measure_layouts", measure_layouts)
    if not isinstance(layout_seconds, (int, float)) or isinstance(layout_seconds, bool) or not layout_seconds > 0:
        raise InvalidArgumentError(f"layout_seconds: expected a positive number of seconds, got {layout_seconds!r}")
    check_fraction("layout_latency_tolerance", layout_latency_tolerance, allow_none=False)
    _check_flag("prune", prune)
