"""A stand-in for ``aitune_triton.triton.steps`` where the served step runs without aitune_triton.

A step's source declares it with ``from aitune_triton.triton.steps import StepTensor, step``. Inside
an image that holds only the runtime environment (``aitune-triton runtime-env``: the packages the
models import, not aitune_triton), that import would fail and the step model would not load.
:func:`provide_steps_module` then registers this minimal module under that name: ``step`` keeps
the function and its declared tensors, ``StepTensor`` keeps its three fields. The served step
reads only the function (:func:`~.step_runtime.load_step_function`); the tensors were checked at
export and are in the model's ``config.pbtxt`` and ``step.json``.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, Callable, Sequence

__all__ = ["StepTensor", "StandInStep", "provide_steps_module", "step"]

#: The module a step's source imports its decorator from.
STEPS_MODULE = "aitune_triton.triton.steps"


class StepTensor:
    """A declared step tensor: ``name``, ``data_type``, ``dims``, as the source gives them."""

    def __init__(self, name: str, data_type: str, dims: Sequence[int]):
        self.name, self.data_type, self.dims = name, data_type, tuple(dims)


class StandInStep:
    """A declared step: its function and tensors; calling it calls the function."""

    def __init__(self, function: Callable[..., Any], inputs: Sequence[Any], outputs: Sequence[Any], name: str | None = None):
        self.function, self.inputs, self.outputs = function, list(inputs), list(outputs)
        self.name = name or getattr(function, "__name__", "step")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def step(inputs: Sequence[Any], outputs: Sequence[Any], name: str | None = None) -> Callable[[Callable[..., Any]], StandInStep]:
    """The decorator a step's source applies (same arguments as aitune_triton's)."""

    def declare(function: Callable[..., Any]) -> StandInStep:
        return StandInStep(function, inputs, outputs, name)

    return declare


def _installed() -> bool:
    try:
        return importlib.util.find_spec("aitune_triton") is not None
    except (ImportError, ValueError):
        return False


def provide_steps_module() -> bool:
    """Register this module as ``aitune_triton.triton.steps`` (with empty parent packages) when
    aitune_triton is not installed and nothing holds that name; return whether it did."""
    if STEPS_MODULE in sys.modules or _installed():
        return False
    package_names = ("aitune_triton", "aitune_triton.triton")
    for package in package_names:
        module = types.ModuleType(package)
        module.__path__ = []  # a package: its submodules are the ones registered here
        sys.modules.setdefault(package, module)
    sys.modules[STEPS_MODULE] = sys.modules[__name__]
    setattr(sys.modules["aitune_triton.triton"], "steps", sys.modules[__name__])
    setattr(sys.modules["aitune_triton"], "triton", sys.modules["aitune_triton.triton"])
    return True
