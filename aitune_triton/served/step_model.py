"""The step model: what a generated step ``model.py`` runs (a pre/post-processing step of an ensemble).

It imports the user's module copied beside ``model.py`` (``step_module.py``) and runs the declared
function through :class:`.step_runtime.StepRuntime`. Each request is answered on its own: an input
that does not fit the declaration (or text that is not UTF-8) gets INVALID_ARG, an exception raised
by the function or a wrong output gets INTERNAL with the function's message; neither stops this
model, which answers the next request.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .shipped import verify_file
from .step_runtime import StepRequestError, StepRuntime, load_step_function

__all__ = ["StepModel"]


class StepModel:
    """The ``TritonPythonModel`` logic of a step model.

    Args:
        pb_utils: The Python backend's ``triton_python_backend_utils`` module (or a stand-in).
        args: The ``initialize()`` arguments Triton passes.
        module_file: The user's module copy in the version directory (``step_module.py``).

    Raises:
        ShippedFileError: ``module_file`` differs from its SHA-256 in ``manifest.json``.
        RuntimeError: the module does not define the declared function.
    """

    def __init__(self, pb_utils: Any, args: dict[str, str], module_file: str) -> None:
        self.pb_utils = pb_utils
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.model_name = args["model_name"]
        with open(os.path.join(version_dir, "step.json")) as handle:
            description = json.load(handle)
        verify_file(version_dir, module_file)  # code that runs here
        module_name, function_name = description["function"].split(":")
        function = load_step_function(version_dir, module_file, module_name, function_name)
        self.runtime = StepRuntime(description, function)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, in order; never raises."""
        return [self.answer(request) for request in requests]

    def answer(self, request: Any) -> Any:
        """The response to one request."""
        pb_utils = self.pb_utils
        try:
            arrays = {}
            for tensor in self.runtime.inputs:
                value = pb_utils.get_input_tensor_by_name(request, tensor["name"])
                if value is not None:
                    arrays[tensor["name"]] = value.as_numpy()
            prepared = self.runtime.prepare(arrays)
        except StepRequestError as error:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.model_name}: {error}", pb_utils.TritonError.INVALID_ARG))
        except Exception as error:  # must answer this request, not fail the others of the call
            return self.failed(error)
        try:
            outputs = self.runtime.call(prepared)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array) for name, array in outputs.items()])
        except Exception as error:  # the user's function raised, or returned something undeclared
            return self.failed(error)

    def failed(self, error: Exception) -> Any:
        """An INTERNAL error response naming the step function and what it raised."""
        message = f"{self.model_name}: {self.runtime.reference} raised {type(error).__name__}: {error}"
        return self.pb_utils.InferenceResponse(error=self.pb_utils.TritonError(message, self.pb_utils.TritonError.INTERNAL))
