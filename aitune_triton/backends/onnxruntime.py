"""The ONNX Runtime backend: ``torch.onnx.export`` (dynamo exporter) + an ``onnxruntime.InferenceSession``."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from aitune_triton.backends.base import Backend, BuildContext
from aitune_triton.backends.flat import FlatModule, export_dynamic_shapes, export_example, index_ranges, input_axes, quiet_export
from aitune_triton.errors import BackendBuildError
from aitune_triton.spec import CallStructure

__all__ = ["OnnxRuntimeBackend"]


class OnnxRuntimeBackend(Backend):
    """Exports the graph spec to ONNX with dynamic axes over the recorded range and runs it with ONNX Runtime.

    Inputs are named ``input_0..N`` and outputs ``output_0..M`` in flattening order; the graph
    spec maps them back to leaf paths. The model is written as one file (weights inline), so
    modules above 2 GB of weights are out of reach of this backend (ONNX protobuf limit).

    Args:
        opset_version: ONNX opset; None lets the exporter pick.
        providers: ONNX Runtime execution providers; default CPU, or CUDA then CPU on a CUDA device.
    """

    name = "onnxruntime"
    triton_runtime = "onnxruntime"
    artifact_names = {"model": "model.onnx"}

    def __init__(self, opset_version: int | None = None, providers: list[str] | None = None):
        options: dict[str, Any] = {}
        if opset_version is not None:
            options["opset_version"] = opset_version
        if providers is not None:
            options["providers"] = list(providers)
        super().__init__(**options)
        self._session: Any = None

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Needs onnxruntime and onnxscript; on CUDA, onnxruntime's CUDAExecutionProvider."""
        if importlib.util.find_spec("onnxruntime") is None:
            return "the onnxruntime package is not installed (pip install onnxruntime)"
        if importlib.util.find_spec("onnxscript") is None:
            return "the onnxscript package (needed by torch.onnx.export) is not installed"
        if device.type == "cuda":
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                return "device is CUDA but this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
        return None

    def _build(self, context: BuildContext) -> None:
        graph = context.graph
        tensors = export_example(context.graph, context.example, context.device)
        flat = FlatModule(context.module, context.signature, context.example, context.forward)
        try:
            with quiet_export(), torch.no_grad():
                program = torch.onnx.export(
                    flat,
                    tensors,
                    str(self.artifacts["model"]),
                    input_names=[f"input_{i}" for i in range(len(graph.inputs))],
                    output_names=[f"output_{i}" for i in range(len(graph.outputs))],
                    dynamic_shapes=export_dynamic_shapes(graph),
                    opset_version=self.options.get("opset_version"),
                    dynamo=True,
                    external_data=False,
                )
        except Exception as error:
            raise BackendBuildError(f"onnxruntime: torch.onnx.export failed: {type(error).__name__}: {error}") from error
        if program is None or program.exported_program is None:
            raise BackendBuildError("onnxruntime: torch.onnx.export returned no exported program")
        self.input_axes = input_axes(program.exported_program)
        self.index_ranges = index_ranges(program.exported_program)

    def _providers(self) -> list[str]:
        if "providers" in self.options:
            return list(self.options["providers"])
        if self.device.type == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _load(self) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(str(self.artifacts["model"]), providers=self._providers())
        self._input_names = [i.name for i in self._session.get_inputs()]

    def _unload(self) -> None:
        self._session = None

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self._input_names, call.flat.tensors)}
        outputs = self._session.run(None, feed)
        return [torch.from_numpy(np.asarray(o)).to(self.device) for o in outputs]
