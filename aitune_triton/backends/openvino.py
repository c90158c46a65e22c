"""The OpenVINO backend: ``torch.export`` of the graph spec, ``openvino.convert_model`` into an IR
(``model.xml`` + ``model.bin``) whose dynamic axes are bounded by the graph spec's ranges, compiled
for OpenVINO's CPU plugin; int8 through NNCF post-training quantization calibrated on the recorded
calls (:mod:`aitune_triton.backends.openvino_int8`).

The compile properties (precision hint, threads, latency hint) are
:mod:`aitune_triton.served.runtimes.openvino`'s, shared with the served model.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from aitune_triton._cpu import native_bf16, native_bf16_reason
from aitune_triton.backends.artifact_kinds import describe_file
from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.backends.build_timing import MEASURE_ROUNDS, build_shapes, time_settings
from aitune_triton.backends.flat import index_ranges, input_axes
from aitune_triton.backends.openvino_int8 import looks_like_transformer, quantize_int8
from aitune_triton.backends.openvino_options import OPENVINO_TARGET, PRECISIONS, OpenVINOOptions
from aitune_triton.backends.precision import exported_at
from aitune_triton.errors import BackendBuildError, BackendUnavailableError
from aitune_triton.served.runtimes.openvino import load_compiled
from aitune_triton.spec import CallStructure, GraphSpec

__all__ = ["OpenVINOBackend", "OpenVINOOptions", "PRECISIONS"]

_logger = logging.getLogger(__name__)


class OpenVINOBackend(Backend):
    """Converts the graph spec's ``torch.export`` program with OpenVINO and runs it on its CPU plugin.

    Inputs are named ``input_0..N`` and outputs ``output_0..M`` in flattening order (the names
    Triton's OpenVINO backend matches). Every axis the program keeps dynamic is bounded by the graph
    spec's range for it (``openvino.Dimension(min, max)``), so one compiled model serves the whole
    recorded range. The IR is saved with float32 weights (no fp16 compression).

    Args:
        precision: ``"fp32"``: compiled with ``INFERENCE_PRECISION_HINT=f32`` (the plugin would
            otherwise compute in bf16 on CPUs that have it). ``"bf16"``: the bf16 hint, on CPUs
            with AVX512-BF16 or AMX only (elsewhere the candidate is unavailable, see
            :func:`aitune_triton._cpu.native_bf16_reason`). ``"int8"``: ``nncf.quantize`` on the
            recorded calls (see :func:`aitune_triton.backends.openvino_int8.quantize_int8`; on
            MiniLM-L6 a per-sentence embedding cosine of 0.992 or more against eager, but on this
            project's AVX2 CPU without VNNI it ran slower than fp32). A quantized model may need the
            strategy's tolerance loosened, or an accuracy metric.
        inference_num_threads: The CPU plugin's ``INFERENCE_NUM_THREADS`` (an int >= 1); None:
            1 and ``os.cpu_count()`` are timed at build over the recorded range (smallest, typical
            and largest recorded calls, in rotated rounds, see :mod:`aitune_triton.backends.build_timing`)
            and the one with the lower geometric mean over the shapes is stored (so in
            ``to_dict()``, checkpoints and the served model) and logged.

    Raises:
        InvalidArgumentError: an option has a value outside the ones listed above.
    """

    name = "openvino"
    triton_runtime = "openvino"
    triton_native = OPENVINO_TARGET
    artifact_names = {"model": "model.xml", "weights": "model.bin"}
    companion_artifacts = ("weights",)
    artifact_kinds = {
        "model": "an OpenVINO IR description (an XML document with a <net> root)",
        "weights": "the OpenVINO IR's weights (raw bytes, read with model.xml)",
    }

    options_type = OpenVINOOptions
    typed_options: OpenVINOOptions

    def __init__(self, precision: str = "fp32", inference_num_threads: int | None = None):
        super().__init__()
        given = OpenVINOOptions(precision, inference_num_threads)
        self.typed_options = given
        # The options as given: a clone measures again for its own graph spec.
        self._given = given
        self._compiled: Any = None
        self._request: Any = None
        self._present: set[str] = set()

    @classmethod
    def default_candidates(cls) -> list[Backend]:
        """fp32 with the thread count measured at build (numbers: see the README's benchmark table)."""
        return [cls()]

    def clone(self) -> "OpenVINOBackend":
        """A fresh, unbuilt backend with the options given to the constructor (measured ones are measured again)."""
        return type(self)(**self._given.to_dict())

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Needs the ``openvino`` package and a CPU device (only the CPU plugin is used)."""
        if importlib.util.find_spec("openvino") is None:
            return "the openvino package is not installed (pip install openvino)"
        if device.type != "cpu":
            return f"runs on OpenVINO's CPU plugin only, got device {str(device)!r}; tune on device='cpu'"
        return None

    def precision_unavailable_reason(self) -> str | None:
        """Why this backend's ``precision`` cannot be built here, or None when it can."""
        precision = self.typed_options.precision
        if precision == "bf16":
            return native_bf16_reason(self.name)
        if precision == "int8" and importlib.util.find_spec("nncf") is None:
            return "openvino: precision 'int8' needs the nncf package (pip install nncf)"
        return None

    def _restore(self, context: LoadContext) -> None:
        # Loading needs only openvino: an int8 IR carries its quantization (nncf is for building it),
        # and a bf16 model is the f32 IR with the bf16 hint, which a CPU without native bf16 runs in f32.
        if self.typed_options.precision == "bf16" and not native_bf16():
            _logger.warning(
                "openvino: this bf16 checkpoint runs in f32 here (%s); results stay correct, without bf16's speed-up",
                native_bf16_reason(self.name),
            )

    def _build(self, context: BuildContext) -> None:
        reason = self.precision_unavailable_reason()
        if reason:
            raise BackendUnavailableError(reason)
        import openvino

        with exported_at(context, "fp32", self.name) as program:
            self.input_axes = input_axes(program)
            self.index_ranges = index_ranges(program)
            try:
                model = openvino.convert_model(program)
            except Exception as error:
                raise BackendBuildError(f"openvino: convert_model failed: {type(error).__name__}: {error}") from error
        _name_ports(model, program, context.graph)
        _bound_dynamic_axes(model, context.graph)
        if self.typed_options.precision == "int8":
            feeds = [_feed(call) for call in (context.samples or [context.example])]
            model = quantize_int8(model, feeds, looks_like_transformer(model), context.log)
        try:
            openvino.save_model(model, str(self.artifacts["model"]), compress_to_fp16=False)
            compiled = load_compiled(str(self.artifacts["model"]), self.typed_options.replace(inference_num_threads=1).to_dict())
        except Exception as error:
            raise BackendBuildError(f"openvino: the CPU plugin failed to compile the model: {type(error).__name__}: {error}") from error
        del compiled
        if self.typed_options.inference_num_threads is None:
            threads = self._measure_threads(build_shapes(context), context.log)
            self.typed_options = self.typed_options.replace(inference_num_threads=threads)

    def _measure_threads(self, shapes: dict[str, CallStructure], log: Callable[[str], None]) -> int:
        """Time each candidate thread count on each of ``shapes`` (:mod:`aitune_triton.backends.build_timing`);
        the count with the lowest geometric mean over the shapes."""
        counts = sorted({1, os.cpu_count() or 1})
        if len(counts) == 1:
            return counts[0]
        feeds = [_feed(call) for call in shapes.values()]
        runners = []
        for count in counts:
            compiled = load_compiled(str(self.artifacts["model"]), self.typed_options.replace(inference_num_threads=count).to_dict())
            request = compiled.create_infer_request()
            present = _input_names(compiled)
            runners.append([functools.partial(request.infer, {k: v for k, v in feed.items() if k in present}) for feed in feeds])
        timed = time_settings(runners)
        del runners
        best = counts[timed.best]
        table = ", ".join(f"{count} threads {ms:.3f} ms" for count, ms in zip(counts, timed.scores_ms))
        log(
            f"openvino: measured INFERENCE_NUM_THREADS over the recorded shapes {', '.join(shapes)} (geometric mean of "
            f"the medians of {timed.runs} runs per shape, {MEASURE_ROUNDS} rotated rounds): {table}; chose {best}"
        )
        return best

    def _load(self) -> None:
        self._compiled = load_compiled(str(self.artifacts["model"]), self.options)
        self._request = self._compiled.create_infer_request()
        self._present = _input_names(self._compiled)

    def _unload(self) -> None:
        self._request = None
        self._compiled = None

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        feed = {name: array for name, array in _feed(call).items() if name in self._present}
        results = self._request.infer(feed)
        # The request reuses its output buffers on the next call: copy them out.
        return [torch.from_numpy(np.array(results[port], copy=True)) for port in self._compiled.outputs]

    @classmethod
    def artifact_problem(cls, role: str, path: Path) -> str | None:
        """``model.xml`` starts as an XML document with a ``<net`` element; ``model.bin`` is raw
        bytes and is accepted as it is. Nothing is parsed or run (see :meth:`Backend.artifact_problem`)."""
        if role == "weights":
            return None
        if role != "model":
            return super().artifact_problem(role, path)
        try:
            with open(path, "rb") as file:
                head = file.read(4096)
        except OSError as error:
            return f"{describe_file(path)}, which cannot be read ({type(error).__name__})"
        if not head.lstrip().startswith(b"<?xml") or b"<net" not in head:
            return f"{describe_file(path)}, which is not an XML document with a <net> root"
        return None


def _feed(call: CallStructure) -> dict[str, np.ndarray]:
    return {f"input_{i}": np.ascontiguousarray(t.detach().cpu().numpy()) for i, t in enumerate(call.flat.tensors)}


def _input_names(compiled: Any) -> set[str]:
    return {name for port in compiled.inputs for name in port.get_names()}


def _name_ports(model: Any, program: torch.export.ExportedProgram, graph: GraphSpec) -> None:
    """Name the model's inputs ``input_<i>`` after the program's user input they come from (an input
    the program never reads may be gone) and its outputs ``output_<i>`` in order.

    Raises:
        BackendBuildError: an input cannot be matched to a user input, or the output count differs.
    """
    positions = {name: index for index, name in enumerate(program.graph_signature.user_inputs)}
    for port in model.inputs:
        matched = [positions[name] for name in port.get_names() if name in positions]
        if not matched:
            raise BackendBuildError(f"openvino: converted input {sorted(port.get_names())} matches no input of the exported program")
        port.get_tensor().set_names({f"input_{matched[0]}"})
    if len(model.outputs) != len(graph.outputs):
        raise BackendBuildError(f"openvino: the converted model has {len(model.outputs)} outputs, the graph spec {len(graph.outputs)}")
    for index, port in enumerate(model.outputs):
        port.get_tensor().set_names({f"output_{index}"})


def _bound_dynamic_axes(model: Any, graph: GraphSpec) -> None:
    """Bound every dynamic axis of the model's inputs by the graph spec's range for it."""
    import openvino

    shapes = {}
    for port in model.inputs:
        spec = graph.inputs[int(next(iter(port.get_names())).rsplit("_", 1)[1])]
        shape = port.get_partial_shape()
        dims = []
        for axis, dim in enumerate(shape):
            if dim.is_static:
                dims.append(dim)
            else:
                low, high = graph.axis_range(spec, axis).bounds
                dims.append(openvino.Dimension(low, high))
        shapes[port] = openvino.PartialShape(dims)
    model.reshape(shapes)
