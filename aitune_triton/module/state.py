"""The life-cycle states of a wrapped module."""

from __future__ import annotations

import enum

__all__ = ["ModuleState"]


class ModuleState(enum.Enum):
    """Where a :class:`~aitune_triton.Module` is in its life cycle.

    ``INIT`` -> (first call or ``enable_recording``) -> ``RECORDING`` -> ``tune()`` -> ``TUNED``;
    ``enable_passthrough`` -> ``PASSTHROUGH`` from ``INIT``/``RECORDING`` (and from ``TUNED`` with
    ``force=True``).
    """

    INIT = "init"
    PASSTHROUGH = "passthrough"
    RECORDING = "recording"
    TUNED = "tuned"
