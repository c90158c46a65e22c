"""Pre- and post-processing steps: plain Python functions served as their own Triton models.

A step declares its tensors (:class:`StepTensor`: name, Triton data type, dims) and wraps a
module-level function that takes one numpy array per input (keyword arguments) and returns a dict
of numpy arrays, one per output::

    from aitune_triton.triton.steps import StepTensor, step

    @step(inputs=[StepTensor("text", "TYPE_STRING", [-1])],
          outputs=[StepTensor("input_ids", "TYPE_INT64", [-1, -1])])
    def tokenize(text):
        ...  # text: numpy object array of str, shape [batch]
        return {"input_ids": ids}

``export(..., preprocess=tokenize)`` (or ``--preprocess my_steps:tokenize``) then writes the step as
a Python-backend model and an ensemble wiring it to the tuned module
(:mod:`aitune_triton.triton.ensemble`).

What the served function may use: the step's module file is copied into the model's version
directory and imported from there, so the function may import the standard library, numpy and
any package installed in the server's Python environment (torch, transformers, aitune_triton
itself where installed), and read files through absolute paths or installed packages; it may not
import other modules of the user's source tree, which the server does not have. It must be
importable as ``module:function`` (defined at module level, not in a function or ``__main__``).

Dims are the full shape the function sees (the step models do not batch: ``max_batch_size: 0``);
``-1`` is any size. ``TYPE_STRING`` tensors (BYTES on the wire) arrive as numpy object arrays of
``str`` (UTF-8) and may be returned as ``str`` or ``bytes`` items.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from aitune_triton.errors import InvalidArgumentError
from aitune_triton.names import validate_model_name
from aitune_triton.served.step_runtime import TRITON_TO_NUMPY

__all__ = ["DATA_TYPES", "Step", "StepTensor", "as_step_tensor", "resolve_step", "step"]

#: Triton data types a step tensor may have (``TYPE_STRING`` is BYTES).
DATA_TYPES = tuple(TRITON_TO_NUMPY)


@dataclass(frozen=True)
class StepTensor:
    """One input or output tensor of a step.

    Attributes:
        name: Triton tensor name (``[A-Za-z0-9_.-]``); also the keyword the function gets (an
            input name must then be a Python identifier).
        data_type: Triton config data type, one of :data:`DATA_TYPES` (``TYPE_FP32``,
            ``TYPE_INT64``, ``TYPE_STRING`` for BYTES...).
        dims: Full shape, ``-1`` for an axis of any size (``[-1]``: a batch of sentences).

    Raises:
        InvalidArgumentError: a name outside ``[A-Za-z0-9_.-]``, an unknown data type, no dims,
            or a dim that is not an integer >= -1.
    """

    name: str
    data_type: str
    dims: tuple[int, ...]

    def __init__(self, name: str, data_type: str, dims: Iterable[int]):
        validate_model_name(name, "StepTensor name")
        if data_type not in TRITON_TO_NUMPY:
            raise InvalidArgumentError(
                f"StepTensor {name!r} data_type: expected one of {list(DATA_TYPES)}, got {data_type!r}"
            )
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
            raise InvalidArgumentError(f"StepTensor {name!r} dims: expected a list of integers >= -1, got {dims!r}")
        dims = tuple(dims)
        if not dims:
            raise InvalidArgumentError(
                f"StepTensor {name!r} dims: expected at least one dim (Triton declares a scalar as [1]), got []"
            )
        if any(isinstance(d, bool) or not isinstance(d, int) or d < -1 for d in dims):
            raise InvalidArgumentError(
                f"StepTensor {name!r} dims: expected integers >= -1 (-1: any size), got {list(dims)}"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "data_type", data_type)
        object.__setattr__(self, "dims", dims)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (as ``step.json`` holds it)."""
        return {"name": self.name, "data_type": self.data_type, "dims": list(self.dims)}


def as_step_tensor(value: Any, where: str) -> StepTensor:
    """A :class:`StepTensor` from itself or a ``(name, data_type, dims)`` tuple.

    Raises:
        InvalidArgumentError: anything else.
    """
    if isinstance(value, StepTensor):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return StepTensor(*value)
    raise InvalidArgumentError(f"{where}: expected a StepTensor or a (name, data_type, dims) tuple, got {value!r}")


class Step:
    """A function declared as a pipeline step, with its input and output tensors.

    Calling a Step calls its function (so a decorated function still works in process).

    Args:
        function: A module-level function; called with one keyword argument per input.
        inputs: Its input tensors (:class:`StepTensor` or ``(name, data_type, dims)``), at least one.
        outputs: Its output tensors, at least one.
        name: Step name, used in model names and messages; default the function's name.

    Raises:
        InvalidArgumentError: ``function`` is not callable, a list is empty, a name repeats (an
            input and an output may not share one either), an input name is not a Python
            identifier, the function does not take every input as a keyword, or a tensor is
            invalid (:class:`StepTensor`).
    """

    def __init__(self, function: Callable[..., Any], inputs: Sequence[Any], outputs: Sequence[Any], name: str | None = None):
        if not callable(function):
            raise InvalidArgumentError(f"Step function: expected a function, got {type(function).__name__}")
        label: str = name or str(getattr(function, "__name__", "step"))
        self.function = function
        self.name = validate_model_name(name, "Step name") if name is not None else label
        self.inputs = tuple(as_step_tensor(t, f"step {label!r} inputs[{i}]") for i, t in enumerate(_sequence(inputs, label, "inputs")))
        self.outputs = tuple(as_step_tensor(t, f"step {label!r} outputs[{i}]") for i, t in enumerate(_sequence(outputs, label, "outputs")))
        names = [t.name for t in self.inputs + self.outputs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidArgumentError(
                f"step {label!r}: tensor names {repeated} appear more than once among its inputs and outputs; "
                "give every input and output its own name"
            )
        for tensor in self.inputs:
            if not tensor.name.isidentifier() or keyword.iskeyword(tensor.name):
                raise InvalidArgumentError(
                    f"step {label!r}: input name {tensor.name!r} is not a Python identifier; the function gets each "
                    "input as a keyword argument. Rename it (letters, digits, _)."
                )
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            try:
                signature.bind(**{t.name: None for t in self.inputs})
            except TypeError as error:
                raise InvalidArgumentError(
                    f"step {label!r}: the function {getattr(function, '__qualname__', function)!r} cannot be called with "
                    f"the inputs {[t.name for t in self.inputs]} as keywords ({error}); make its parameters the input names"
                ) from None

    def __call__(self, **arrays: Any) -> Any:
        return self.function(**arrays)

    def __repr__(self) -> str:
        return f"Step({self.name!r}, inputs={[t.name for t in self.inputs]}, outputs={[t.name for t in self.outputs]})"

    @property
    def reference(self) -> str:
        """``module:function`` of the function (what ``resolve_step`` takes)."""
        return f"{getattr(self.function, '__module__', '?')}:{getattr(self.function, '__qualname__', '?')}"

    def source_file(self) -> Path:
        """The file defining the function's module, to be copied beside the step's ``model.py``.

        Raises:
            InvalidArgumentError: the function is not defined at module level of an importable
                module with a ``.py`` file (a lambda, a nested function, ``__main__``, a builtin).
        """
        module_name = getattr(self.function, "__module__", None)
        qualname = getattr(self.function, "__qualname__", "")
        if not module_name or module_name == "__main__" or "<" in qualname or "." in qualname:
            raise InvalidArgumentError(
                f"step {self.name!r}: the function {qualname or self.function!r} (module {module_name!r}) must be defined "
                "at module level of an importable module (not in __main__, a function or a class), so the server can "
                "import it as module:function; move it to a .py file"
            )
        module = sys.modules.get(module_name)
        path = getattr(module, "__file__", None)
        if path is None or not str(path).endswith(".py"):
            raise InvalidArgumentError(
                f"step {self.name!r}: module {module_name!r} has no .py source file ({path!r}); define the step in a .py file"
            )
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        """The served description (``step.json``): name, ``module:function``, inputs, outputs."""
        return {
            "name": self.name,
            "function": self.reference,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


def _sequence(values: Any, label: str, argument: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidArgumentError(f"step {label!r} {argument}: expected a list of StepTensor, got {values!r}")
    values = list(values)
    if not values:
        raise InvalidArgumentError(f"step {label!r} {argument}: expected at least one StepTensor, got none")
    return values


def step(inputs: Sequence[Any], outputs: Sequence[Any], name: str | None = None) -> Callable[[Callable[..., Any]], Step]:
    """Decorator declaring a module-level function as a :class:`Step` (same arguments).

    Raises:
        InvalidArgumentError: as :class:`Step`.
    """

    def declare(function: Callable[..., Any]) -> Step:
        return Step(function, inputs, outputs, name)

    return declare


def resolve_step(reference: "str | Step", argument: str = "step") -> Step:
    """The :class:`Step` named ``module:function`` (what ``--preprocess`` / ``--postprocess`` take);
    a Step is returned as it is.

    The module is imported as Python imports it (from ``sys.path``: the current directory for the
    command line, installed packages).

    Raises:
        InvalidArgumentError: ``reference`` is not ``module:function``, the module cannot be
            imported, it has no such attribute, or the attribute is not a Step (declare it with
            ``@step(inputs=..., outputs=...)``).
    """
    if isinstance(reference, Step):
        return reference
    if not isinstance(reference, str) or reference.count(":") != 1 or not all(reference.split(":")):
        raise InvalidArgumentError(f"{argument}: expected 'module:function' (e.g. 'my_steps:tokenize'), got {reference!r}")
    module_name, attribute = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InvalidArgumentError(
            f"{argument}: cannot import module {module_name!r} ({type(error).__name__}: {error}); run from the directory "
            "holding it or install it"
        ) from None
    found = getattr(module, attribute, None)
    if found is None:
        raise InvalidArgumentError(f"{argument}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no {attribute!r}")
    if not isinstance(found, Step):
        raise InvalidArgumentError(
            f"{argument}: {reference} is a {type(found).__name__}, not a step; declare it with "
            "@aitune_triton.triton.steps.step(inputs=[...], outputs=[...])"
        )
    return found
