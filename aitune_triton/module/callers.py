"""Who is calling a wrapped module: told from the Python call stack, for warnings that only the
caller's own code can act on."""

from __future__ import annotations

import sys

__all__ = ["GENERATION_MODULES", "inside_generation_loop"]

#: Modules whose code runs a generation loop that passes each step's returned cache to the next
#: step itself (Hugging Face ``generate()``): a warning about reusing the cache object is not for them.
GENERATION_MODULES = ("transformers.generation",)


def inside_generation_loop() -> bool:
    """Whether a frame of a generation loop (:data:`GENERATION_MODULES`) is on the call stack, that is,
    the call is a step of ``model.generate()`` rather than of the caller's own loop."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if any(name == module or name.startswith(module + ".") for module in GENERATION_MODULES):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
