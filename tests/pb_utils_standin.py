"""A stand-in of the Python backend's ``triton_python_backend_utils``, for unit tests of generated models.

It holds only what the ``model.py`` files that aitune_triton generates call (graph models and the
entry/router model), with the behaviour the Python backend documents for them (Triton Python
backend README: "Usage", "Error Handling", "Business Logic Scripting", "Interoperability and GPU
Support"):

* :class:`Tensor`: ``Tensor(name, numpy_array)``, ``name()``, ``as_numpy()``, ``to_dlpack()``,
  ``Tensor.from_dlpack(name, capsule)``, ``is_cpu()``. Data lives in CPU memory. A bfloat16
  tensor (made from DLPack) has no numpy form: ``as_numpy()`` raises, as numpy has no bfloat16.
* :class:`TritonError` with ``message()``, ``code()`` and the code constants.
* :class:`InferenceResponse` (``output_tensors=`` or ``error=``; ``output_tensors()``,
  ``has_error()``, ``error()``).
* :class:`InferenceRequest` (``model_name``, ``model_version``, ``requested_output_names``,
  ``inputs``; ``exec()`` / ``async_exec()``): BLS calls go to the models registered with
  :func:`register_model`, each request through that model's own ``execute()``; an unknown model
  answers with an error response, as a BLS call to a model that is not loaded does.
* :func:`get_input_tensor_by_name` / :func:`get_output_tensor_by_name` (None when absent).

It does not check a request against a model configuration (Triton's core does that before
``execute()``): tests use that to hand ``execute()`` what a client could not send through a
real server, and check that the model answers it with an error instead of raising.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import numpy as np
import torch
import torch.utils.dlpack


class TritonError:
    """An error answer; ``code`` one of the constants below (the Python backend's ``TritonError``)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


class Tensor:
    """A named tensor in CPU memory: a numpy array, or a torch tensor when it came from DLPack."""

    def __init__(self, name: str, data: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Tensor name must be a str, got {type(name).__name__}")
        if isinstance(data, torch.Tensor):  # Tensor(name, torch tensor) is not in the API
            raise TypeError("pb_utils.Tensor takes a numpy array; use Tensor.from_dlpack for a torch tensor")
        if not isinstance(data, np.ndarray):
            raise TypeError(f"pb_utils.Tensor takes a numpy array, got {type(data).__name__}")
        self._name = name
        self._data: np.ndarray | torch.Tensor = np.array(data, copy=True)

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> "Tensor":
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._data = torch.utils.dlpack.from_dlpack(capsule).clone()
        return tensor

    def name(self) -> str:
        return self._name

    def is_cpu(self) -> bool:
        return True

    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    def as_numpy(self) -> np.ndarray:
        if isinstance(self._data, np.ndarray):
            return self._data
        if self._data.dtype == torch.bfloat16:
            raise TypeError(f"tensor {self._name!r}: BF16 has no numpy dtype; use to_dlpack()")
        return self._data.numpy()

    def to_dlpack(self) -> Any:
        data = self._data if isinstance(self._data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(self._data))
        return torch.utils.dlpack.to_dlpack(data)

    def torch(self) -> torch.Tensor:
        """Test helper (not in the Python backend's API): the data as a torch tensor, bfloat16 included."""
        return self._data if isinstance(self._data, torch.Tensor) else torch.from_numpy(self._data)


class InferenceResponse:
    """A response: output tensors, or an error."""

    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


#: Model name -> (the TritonPythonModel instance BLS requests reach, its configuration as JSON
#: dict); see :func:`register_model`.
_MODELS: dict[str, tuple[Any, dict[str, Any]]] = {}


def register_model(name: str, model: Any, config: dict[str, Any]) -> None:
    """Test helper (not in the Python backend's API): make ``model`` reachable by BLS as ``name``.

    ``config`` (the model configuration as a JSON dict) gives the ``reshape`` of its tensors: as
    Triton's core does, a BLS request's input of wire shape ``[batch] + dims`` reaches the model
    as ``[batch] + reshape.shape`` and its output goes back as ``[batch] + dims``.
    """
    _MODELS[name] = (model, config)


def _reshaped(tensor: Tensor, shape: list[int]) -> Tensor:
    if isinstance(tensor._data, np.ndarray):
        return Tensor(tensor.name(), tensor._data.reshape(shape))
    return Tensor.from_dlpack(tensor.name(), torch.utils.dlpack.to_dlpack(tensor._data.reshape(shape).contiguous()))


def _apply_reshape(tensors: list[Tensor], declared: list[dict[str, Any]], batching: bool, to_model: bool) -> list[Tensor]:
    by_name = {entry["name"]: entry for entry in declared}
    result = []
    for tensor in tensors:
        entry = by_name.get(tensor.name(), {})
        if batching and "reshape" in entry:
            inner = entry["reshape"].get("shape", []) if to_model else entry["dims"]
            tensor = _reshaped(tensor, [tensor.shape()[0], *[int(d) for d in inner]])
        result.append(tensor)
    return result


def clear_models() -> None:
    """Test helper: forget every registered model."""
    _MODELS.clear()


class InferenceRequest:
    """A BLS request to another model."""

    def __init__(
        self,
        model_name: str,
        inputs: list[Tensor],
        requested_output_names: list[str],
        model_version: int = -1,
        **_: Any,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.requested_output_names = list(requested_output_names)
        self._inputs = list(inputs)

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def exec(self) -> InferenceResponse:
        if self.model_name not in _MODELS:
            return InferenceResponse(error=TritonError(f"Failed for execute the inference request. Model '{self.model_name}' is not ready."))
        model, config = _MODELS[self.model_name]
        batching = int(config.get("max_batch_size", 0)) > 0
        arrived = InferenceRequest(self.model_name, _apply_reshape(self._inputs, config.get("input", []), batching, True),
                                   self.requested_output_names, self.model_version)
        responses = model.execute([arrived])
        if inspect.isawaitable(responses):
            responses = asyncio.run(responses)
        (response,) = responses
        if response.has_error():
            # A BLS response's error keeps only its message (its code is INTERNAL).
            return InferenceResponse(error=TritonError(response.error().message()))
        wanted = [t for t in response.output_tensors() if t.name() in self.requested_output_names]
        wanted = _apply_reshape(wanted, config.get("output", []), batching, False)
        return InferenceResponse(output_tensors=wanted)

    async def async_exec(self) -> InferenceResponse:
        return self.exec()


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None
