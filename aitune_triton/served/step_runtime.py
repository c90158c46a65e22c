"""What a served step model runs around the user's function: input conversion and output checks.

This module is part of :mod:`aitune_triton.served`, copied beside every generated step ``model.py``
and imported from there, so it needs only numpy and the standard library: the server's Python need
not have aitune_triton installed for this part. :mod:`aitune_triton.triton.steps` uses the same
dtype table and checks, so the declaration and the served check are one implementation.

A step function is called with one keyword argument per declared input (a numpy array; a
``TYPE_STRING`` input is a numpy object array of ``str``, decoded as UTF-8) and returns a mapping
from every declared output name to an array-like of the declared dtype and rank
(``TYPE_STRING`` outputs: ``str`` or ``bytes`` items).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Callable, Mapping

import numpy as np

from .step_standin import provide_steps_module

__all__ = [
    "TRITON_TO_NUMPY",
    "StepOutputError",
    "StepRequestError",
    "StepRuntime",
    "dims_problem",
    "load_step_function",
]

#: Triton config data type -> numpy dtype of the arrays a step sees and returns (Triton
#: "Datatypes" table; ``TYPE_STRING`` is BYTES on the wire, ``object`` arrays in the Python backend).
TRITON_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class StepRequestError(ValueError):
    """A request's input does not fit the step's declaration (answered as INVALID_ARG)."""


class StepOutputError(RuntimeError):
    """The step function returned something other than its declared outputs (answered as INTERNAL)."""


def dims_problem(shape: tuple[int, ...], dims: list[int] | tuple[int, ...]) -> str | None:
    """Why ``shape`` does not fit declared ``dims`` (-1: any size), or None when it fits."""
    if len(shape) != len(dims):
        return f"rank {len(shape)} (shape {list(shape)}), declared rank {len(dims)} (dims {list(dims)})"
    for axis, (size, dim) in enumerate(zip(shape, dims)):
        if dim != -1 and size != dim:
            return f"size {size} on axis {axis} (shape {list(shape)}), declared {dim} (dims {list(dims)})"
    return None


def load_step_function(version_dir: str, module_file: str, module_name: str, function_name: str) -> Callable[..., Any]:
    """Import ``module_file`` from ``version_dir`` and return its ``function_name``.

    The module is imported under ``module_name`` (its name where it was declared, so that it may
    import itself or be pickled by name) unless that name is taken in this process. An attribute
    that is a declared step (it has ``function``, ``inputs`` and ``outputs``) gives its function.
    Without aitune_triton installed, the step's import of its decorator gets the stand-in of
    :mod:`.step_standin`.
    """
    provide_steps_module()  # a step's own import of aitune_triton, where only the runtime environment is installed
    path = os.path.join(version_dir, module_file)
    name = module_name if module_name not in sys.modules else f"aitune_triton_step_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    found = getattr(module, function_name, None)
    if found is None:
        raise RuntimeError(f"{path}: defines no {function_name!r}")
    function = getattr(found, "function", found) if hasattr(found, "inputs") and hasattr(found, "outputs") else found
    if not callable(function):
        raise RuntimeError(f"{path}: {function_name!r} is a {type(function).__name__}, not a function")
    return function


class StepRuntime:
    """The served side of one step: converts inputs, calls the function, checks its outputs.

    Args:
        description: The step's ``step.json``: ``name``, ``function`` (``module:function``),
            ``inputs`` and ``outputs`` (lists of ``{"name", "data_type", "dims"}``).
        function: The step function.
    """

    def __init__(self, description: Mapping[str, Any], function: Callable[..., Any]):
        self.name = str(description["name"])
        self.reference = str(description["function"])
        self.inputs = [dict(tensor) for tensor in description["inputs"]]
        self.outputs = [dict(tensor) for tensor in description["outputs"]]
        self.function = function

    def prepare(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Keyword arguments of the function from a request's input arrays (by input name).

        Raises:
            StepRequestError: an input is missing, has another rank or fixed size than declared,
                or a ``TYPE_STRING`` item is not valid UTF-8.
        """
        prepared = {}
        for tensor in self.inputs:
            name = tensor["name"]
            if name not in arrays:
                raise StepRequestError(f"step {self.name!r}: input {name!r} is missing")
            array = np.asarray(arrays[name])
            problem = dims_problem(tuple(array.shape), tensor["dims"])
            if problem:
                raise StepRequestError(f"step {self.name!r}: input {name!r} has {problem}")
            if tensor["data_type"] == "TYPE_STRING":
                strings = np.empty(array.shape, dtype=object)
                for index, item in np.ndenumerate(array):
                    try:
                        strings[index] = item.decode("utf-8") if isinstance(item, (bytes, np.bytes_)) else str(item)
                    except UnicodeDecodeError as error:
                        raise StepRequestError(
                            f"step {self.name!r}: input {name!r} item {list(index)} is not valid UTF-8 ({error}); "
                            "send text encoded as UTF-8"
                        ) from None
                array = strings
            prepared[name] = array
        return prepared

    def call(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the function on prepared inputs and check what it returns (:meth:`check`)."""
        return self.check(self.function(**arrays))

    def check(self, result: Any) -> dict[str, np.ndarray]:
        """Output arrays by name from what the function returned.

        Raises:
            StepOutputError: ``result`` is not a mapping, lacks a declared output, or an output has
                another dtype, rank or fixed size than declared (nothing is cast silently).
        """
        where = f"step {self.name!r} ({self.reference})"
        if not isinstance(result, Mapping):
            raise StepOutputError(
                f"{where}: returned a {type(result).__name__}; expected a dict with the outputs "
                f"{[t['name'] for t in self.outputs]}"
            )
        outputs = {}
        for tensor in self.outputs:
            name, data_type = tensor["name"], tensor["data_type"]
            if name not in result:
                raise StepOutputError(f"{where}: returned no output {name!r} (returned {sorted(map(str, result))})")
            value = result[name]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu().numpy()
            array = np.asarray(value)
            if data_type == "TYPE_STRING":
                if array.dtype.kind not in "OUS":
                    raise StepOutputError(f"{where}: output {name!r} has dtype {array.dtype}, declared TYPE_STRING "
                                          "(return str or bytes items)")
                encoded = np.empty(array.shape, dtype=object)
                for index, item in np.ndenumerate(array):
                    if isinstance(item, (bytes, np.bytes_)):
                        encoded[index] = bytes(item)
                    elif isinstance(item, str):
                        encoded[index] = item.encode("utf-8")
                    else:
                        raise StepOutputError(f"{where}: output {name!r} item {list(index)} is a "
                                              f"{type(item).__name__}, declared TYPE_STRING (str or bytes)")
                array = encoded
            elif array.dtype != np.dtype(TRITON_TO_NUMPY[data_type]):
                raise StepOutputError(f"{where}: output {name!r} has dtype {array.dtype}, declared {data_type} "
                                      f"({np.dtype(TRITON_TO_NUMPY[data_type])}); cast it in the function")
            problem = dims_problem(tuple(array.shape), tensor["dims"])
            if problem:
                raise StepOutputError(f"{where}: output {name!r} has {problem}")
            outputs[name] = array
        return outputs
