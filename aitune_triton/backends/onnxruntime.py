"""The ONNX Runtime backend: ``torch.onnx.export`` (dynamo or TorchScript exporter) + an ``onnxruntime.InferenceSession``.

The session options (graph optimization level, intra-op threads) are measured at build when not
given, stored in the backend's options and applied the same way by the served model
(:mod:`aitune_triton.served.runtimes.onnxruntime`: :func:`session_options` and
:func:`load_session` are that module's, shared by both).

:func:`session_options` (``inter_op_num_threads=1``, ``session.intra_op.allow_spinning="0"``):
measured on MiniLM-L6 (dynamo export, every optimization; 2 shared, busy cores; per variant the
median of 40 runs at 8 x 128 tokens and 400 at 1 x 16, 4 rotated rounds; two runs), spinning on /
off: with 2 threads off was faster in both runs (938 / 438 and 635 / 419 ms at 8 x 128, 37.7 /
11.8 and 26.1 / 8.5 ms at 1 x 16); with 1 thread (no worker threads) the differences were noise
(396 / 511 and 300 / 314 ms, 16.2 / 13.6 and 15.5 / 14.6 ms). A third run on a quieter machine
(TorchScript export, 8 x 128, median of 20) showed no cost either: 150 / 148 ms with 2 threads,
276 / 260 ms with 1.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from aitune_triton.backends.artifact_kinds import describe_file
from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.backends.build_timing import MEASURE_ROUNDS, build_shapes, time_settings
from aitune_triton.backends.onnxruntime_fusion import fuse_transformer
from aitune_triton.backends.onnxruntime_options import EXPORTERS, PRECISIONS, QUANTIZATIONS, OnnxRuntimeOptions
from aitune_triton.backends.onnxruntime_quantize import quantize_int8
from aitune_triton.backends.flat import FlatModule, export_dynamic_shapes, export_example, index_ranges, input_axes, quiet_export
from aitune_triton.backends.serving import ONNX_RUNTIME_TARGET
from aitune_triton.errors import BackendBuildError, BackendUnavailableError
from aitune_triton.served.runtimes.onnxruntime import GRAPH_OPTIMIZATION_LEVELS, load_session, session_options
from aitune_triton.spec import CallStructure, GraphSpec

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeOptions", "GRAPH_OPTIMIZATION_LEVELS", "EXPORTERS", "PRECISIONS", "QUANTIZATIONS", "session_options"]

#: Levels tried when ``graph_optimization_level`` is not given ("disable" is never faster).
MEASURED_LEVELS = ("basic", "extended", "all")


class OnnxRuntimeBackend(Backend):
    """Exports the graph spec to ONNX with dynamic axes over the recorded range and runs it with ONNX Runtime.

    Inputs are named ``input_0..N`` and outputs ``output_0..M`` in flattening order; the graph
    spec maps them back to leaf paths. The model is written as one file (weights inline), so
    modules above 2 GB of weights are out of reach of this backend (ONNX protobuf limit).

    Session options left as None are measured at build over the recorded range (the smallest,
    typical and largest recorded calls, see :mod:`aitune_triton.backends.build_timing`): every
    combination of ``graph_optimization_level`` in ``basic``/``extended``/``all`` and
    ``intra_op_num_threads`` in ``1``/``os.cpu_count()`` gets a session; the settings are timed back
    to back in rounds whose order rotates (ONNX Runtime's worker threads slow the session that runs
    right after them), and the lowest geometric mean over the shapes of the median latencies wins. The chosen values are stored in :attr:`options` (so in
    ``to_dict()``, checkpoints and the served model) and logged. Given values are used as they are.

    Args:
        opset_version: ONNX opset (an int >= 7); None lets the exporter pick.
        providers: ONNX Runtime execution providers; default CPU, or CUDA then CPU on a CUDA device.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``) or ``"torchscript"``
            (``dynamo=False``; each dynamic axis is named after its graph-spec dimension, so axes
            that share a dimension share a name). Measured on MiniLM-L6 at 8 x 128 tokens (2 shared
            cores, every optimization, 2 threads, median of 15 runs in 3 rotated rounds): 151 ms
            with the TorchScript export, 163 ms with the dynamo export, eager 121 ms; int8: 82 ms
            and 98 ms. The input contract (tied axes, index ranges) of a
            TorchScript export comes from a ``torch.export.export`` of the same module; when that
            export fails the contract holds the graph spec's ranges only (logged).
        graph_optimization_level: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``; None:
            measured at build.
        intra_op_num_threads: Threads of the session's intra-op pool (an int >= 1); None: measured
            at build.
        precision: ``"fp32"``; ``"int8"`` (CPU): weights quantized per output channel with
            ``onnxruntime.quantization.quantize_dynamic`` (on MiniLM-L6's real sentences,
            per-tensor quantization gave a minimum per-sentence embedding cosine of 0.94 against
            eager, per-channel 0.99), activations quantized at run time; ``"fp16"`` (CUDA):
            ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs and
            outputs kept. The check against eager uses the strategy's tolerance, which a
            quantized model may need loosened for.
        transformer_fusion: Whether to run ONNX Runtime's transformer optimizer (attention,
            LayerNorm, GELU fusions; :mod:`~aitune_triton.backends.onnxruntime_fusion`) on the
            exported graph before any quantization. None: tried; where the graph is a recognised
            transformer the fused graph joins the session-option measurement (same rotated
            rounds) and the faster graph is kept; where it is not, the exported graph is used
            (logged). True: required; a graph it does not recognise fails the build
            (``BackendBuildError`` with the reason). False: never. Stored as True/False once
            built, so the served model and a checkpoint load the graph that was measured.
        quantization: How ``precision="int8"`` quantizes: ``"dynamic"`` (above) or ``"static"``:
            ``quantize_static`` in QDQ format, activations with MinMax scales calibrated on the
            recorded samples (``BuildContext.samples``), weights per channel, and the
            accuracy-sensitive operators kept in float32
            (:mod:`~aitune_triton.backends.onnxruntime_quantize` says which, and what was measured).
            ``"static"`` with another precision is refused.

    Raises:
        InvalidArgumentError: an option has a value outside the ones listed above (the message
            names the option, the allowed values and the value given).
    """

    name = "onnxruntime"
    triton_runtime = "onnxruntime"
    triton_native = ONNX_RUNTIME_TARGET
    artifact_names = {"model": "model.onnx"}

    options_type = OnnxRuntimeOptions
    typed_options: OnnxRuntimeOptions

    def __init__(
        self,
        opset_version: int | None = None,
        providers: list[str] | None = None,
        exporter: str = "dynamo",
        graph_optimization_level: str | None = None,
        intra_op_num_threads: int | None = None,
        precision: str = "fp32",
        transformer_fusion: bool | None = None,
        quantization: str = "dynamic",
    ):
        super().__init__()
        given = OnnxRuntimeOptions(
            opset_version, providers, exporter, graph_optimization_level,
            intra_op_num_threads, precision, transformer_fusion, quantization,
        )  # fmt: skip
        self.typed_options = given
        # The options as given: a clone measures again for its own graph spec.
        self._given = given
        self._session: Any = None
        self._present: set[str] = set()

    @classmethod
    def default_candidates(cls) -> list[Backend]:
        """The TorchScript export, then the dynamo export (session options measured at build).
        Measured on MiniLM-L6 at 8 x 128 tokens fp32 (2 CPU cores, ratios in one run): ONNX
        Runtime on a TorchScript-exported graph 0.54-0.60x eager, dynamo-exported 0.63-0.72x; at
        1 x 16, 0.34-0.49x."""
        return [cls(exporter="torchscript"), cls()]

    def clone(self) -> "OnnxRuntimeBackend":
        """A fresh, unbuilt backend with the options given to the constructor (measured ones are measured again)."""
        return type(self)(**self._given.to_dict())

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

    def precision_unavailable_reason(self, device: torch.device) -> str | None:
        """Why this backend's ``precision`` cannot be built or run on ``device``, or None when it can."""
        precision = self.typed_options.precision
        if precision == "fp16" and device.type != "cuda":
            return (
                f"precision 'fp16' needs a CUDA device, got {str(device)!r} (ONNX Runtime's CPU provider lacks float16 "
                "kernels for most operators); use precision='int8' or 'fp32' on CPU"
            )
        if precision == "int8" and device.type != "cpu":
            return (
                f"precision 'int8' (ONNX Runtime's CPU int8 kernels, dynamic or static quantization) runs on CPU, got "
                f"{str(device)!r}; use precision='fp16' or 'fp32' on CUDA"
            )
        return None

    def _restore(self, context: LoadContext) -> None:
        reason = self.precision_unavailable_reason(context.device)
        if reason:
            raise BackendUnavailableError(f"{self.name}: {reason}")

    def _build(self, context: BuildContext) -> None:
        reason = self.precision_unavailable_reason(context.device)
        if reason:
            raise BackendUnavailableError(f"{self.name}: {reason}")
        path = self.artifacts["model"]
        tensors = export_example(context.graph, context.example, context.device)
        flat = FlatModule(context.module, context.signature, context.example, context.forward)
        if self.typed_options.exporter == "torchscript":
            self._export_torchscript(flat, tensors, context, path)
        else:
            self._export_dynamo(flat, tensors, context.graph, path)
        staging = path.parent / f".{path.stem}-fused"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            variants = self._fusion_variants(path, staging, context)
            precision = self.typed_options.precision
            for _, variant in variants:
                if precision == "int8":
                    feeds = [_feed([t.detach().cpu().numpy() for t in call.flat.tensors]) for call in context.samples or [context.example]]
                    quantize_int8(variant, self.typed_options.quantization, feeds, context.log)
                elif precision == "fp16":
                    _convert_fp16(variant, context.log)
            given = self.typed_options
            chosen: dict[str, Any] = {"transformer_fusion": variants[0][0]}
            if given.graph_optimization_level is None or given.intra_op_num_threads is None or len(variants) > 1:
                chosen = self._measure(variants, build_shapes(context), context.log)
            fastest = next(variant for fused, variant in variants if fused == chosen["transformer_fusion"])
            if fastest != path:
                os.replace(fastest, path)
            self.typed_options = given.replace(**chosen)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _fusion_variants(self, path: Path, staging: Path, context: BuildContext) -> list[tuple[bool, Path]]:
        """The graphs to build on, ``(fused, file)``: the exported one at ``path`` and/or its fused
        version (in ``staging``, or at ``path`` when fusion is required), per ``transformer_fusion``."""
        required = self.typed_options.transformer_fusion
        if required is False:
            return [(False, path)]
        staging.mkdir()
        fused = staging / path.name
        fusion = fuse_transformer(path, fused, context.module)
        if not fusion.recognised:
            if required:
                raise BackendBuildError(
                    f"onnxruntime: transformer_fusion=True but {fusion.reason}; use transformer_fusion=None (fused where "
                    "recognised) or False"
                )
            context.log(f"onnxruntime: transformer fusion not applied ({fusion.reason}); building on the exported graph")
            return [(False, path)]
        context.log(f"onnxruntime: the transformer optimizer fused {fusion.describe()}")
        if required:
            os.replace(fused, path)
            return [(True, path)]
        return [(False, path), (True, fused)]

    def _export_dynamo(self, flat: FlatModule, tensors: tuple[torch.Tensor, ...], graph: GraphSpec, path: Path) -> None:
        try:
            with quiet_export(), torch.no_grad():
                program = torch.onnx.export(
                    flat,
                    tensors,
                    str(path),
                    input_names=[f"input_{i}" for i in range(len(graph.inputs))],
                    output_names=[f"output_{i}" for i in range(len(graph.outputs))],
                    dynamic_shapes=export_dynamic_shapes(graph),
                    opset_version=self.typed_options.opset_version,
                    dynamo=True,
                    external_data=False,
                )
        except Exception as error:
            raise BackendBuildError(f"onnxruntime: torch.onnx.export failed: {type(error).__name__}: {error}") from error
        if program is None or program.exported_program is None:
            raise BackendBuildError("onnxruntime: torch.onnx.export returned no exported program")
        self.input_axes = input_axes(program.exported_program)
        self.index_ranges = index_ranges(program.exported_program)

    def _export_torchscript(self, flat: FlatModule, tensors: tuple[torch.Tensor, ...], context: BuildContext, path: Path) -> None:
        graph = context.graph
        names = {f"input_{i}": spec for i, spec in enumerate(graph.inputs)}
        names.update({f"output_{i}": spec for i, spec in enumerate(graph.outputs)})
        dynamic_axes = {
            name: {axis: dim for axis, dim in enumerate(spec.dim_names) if dim is not None}
            for name, spec in names.items()
            if any(dim is not None for dim in spec.dim_names)
        }
        # The TorchScript exporter runs in eval mode and then calls ``train(previous)`` on the module
        # it was given: on a fresh FlatModule (training=True) that would switch the user's module,
        # dropout included, to training mode. Every module's own flag is put back instead.
        modes = [(module, module.training) for module in flat.modules()]
        try:
            with quiet_export(), torch.no_grad():
                torch.onnx.export(
                    flat,
                    tensors,
                    str(path),
                    input_names=[f"input_{i}" for i in range(len(graph.inputs))],
                    output_names=[f"output_{i}" for i in range(len(graph.outputs))],
                    dynamic_axes=dynamic_axes or None,
                    opset_version=self.typed_options.opset_version,
                    dynamo=False,
                )
        except Exception as error:
            raise BackendBuildError(
                f"onnxruntime: torch.onnx.export(dynamo=False) failed: {type(error).__name__}: {error}; "
                "try exporter='dynamo'"
            ) from error
        finally:
            for module, training in modes:
                module.training = training
        # The input contract (tied and fixed axes, index ranges) is read from an exported program.
        try:
            with quiet_export(), torch.no_grad():
                exported = torch.export.export(flat, tensors, dynamic_shapes=export_dynamic_shapes(graph), strict=False)
        except Exception as error:
            context.log(
                f"onnxruntime: torch.export.export failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "the TorchScript export's input contract holds the graph spec's ranges only"
            )
        else:
            self.input_axes = input_axes(exported)
            self.index_ranges = index_ranges(exported)

    def _measure(self, variants: list[tuple[bool, Path]], shapes: dict[str, CallStructure], log: Callable[[str], None]) -> dict[str, Any]:
        """Time every graph variant (plain / fused) with every session setting not given, on each of
        ``shapes`` (:mod:`aitune_triton.backends.build_timing`); return the options (``transformer_fusion``
        included) with the lowest geometric mean over the shapes."""
        given = self.typed_options
        levels = [given.graph_optimization_level] if given.graph_optimization_level is not None else list(MEASURED_LEVELS)
        if given.intra_op_num_threads is not None:
            threads = [given.intra_op_num_threads]
        else:
            threads = sorted({1, os.cpu_count() or 1})
        settings = [
            ({"graph_optimization_level": level, "intra_op_num_threads": count, "transformer_fusion": fused}, path)
            for fused, path in variants
            for level in levels
            for count in threads
        ]
        feeds = [_feed([t.detach().cpu().numpy() for t in call.flat.tensors]) for call in shapes.values()]
        runners = []
        for setting, path in settings:
            session = load_session(str(path), given.replace(**setting).to_dict(), self._providers())
            present = {i.name for i in session.get_inputs()}
            runners.append(
                [functools.partial(session.run, None, {name: array for name, array in feed.items() if name in present}) for feed in feeds]
            )
        timed = time_settings(runners)
        del runners
        chosen = settings[timed.best][0]
        if len(settings) > 1:
            table = ", ".join(
                f"{'fused/' if s['transformer_fusion'] else ''}{s['graph_optimization_level']}/{s['intra_op_num_threads']}t {m:.3f} ms"
                for (s, _), m in zip(settings, timed.scores_ms)
            )
            fusion = f", transformer_fusion={chosen['transformer_fusion']}" if len(variants) > 1 else ""
            log(
                f"onnxruntime: measured session options over the recorded shapes {', '.join(shapes)} (geometric mean of "
                f"the medians of {timed.runs} runs per shape, {MEASURE_ROUNDS} rotated rounds): {table}; chose "
                f"graph_optimization_level={chosen['graph_optimization_level']!r}, "
                f"intra_op_num_threads={chosen['intra_op_num_threads']}{fusion}"
            )
        return chosen

    def _providers(self) -> list[str]:
        if self.typed_options.providers is not None:
            return list(self.typed_options.providers)
        if self.device.type == "cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _load(self) -> None:
        self._session = load_session(str(self.artifacts["model"]), self.options, self._providers())
        # An exporter may drop an input the graph never reads; the others keep their input_<i> names.
        self._present = {node.name for node in self._session.get_inputs()}

    def _unload(self) -> None:
        self._session = None

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        feed = {name: array for name, array in _feed([t.detach().cpu().numpy() for t in call.flat.tensors]).items() if name in self._present}
        outputs = self._session.run(None, feed)
        return [torch.from_numpy(np.asarray(o)).to(self.device) for o in outputs]

    artifact_kinds = {"model": "an ONNX model (a serialized onnx.ModelProto with a graph and an opset)"}

    @classmethod
    def artifact_problem(cls, role: str, path: Path) -> str | None:
        """The model parses as an ``onnx.ModelProto`` (external data not loaded) with an IR
        version, an opset and graph nodes; nothing runs (see :meth:`Backend.artifact_problem`)."""
        if role != "model":
            return super().artifact_problem(role, path)
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf's DecodeError, or an unreadable file
            return f"{describe_file(path)}, which does not parse as an ONNX model ({type(error).__name__})"
        if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
            return f"{describe_file(path)}, which parses as an ONNX message without an IR version, opset or graph nodes"
        return None


def _feed(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"input_{i}": np.ascontiguousarray(array) for i, array in enumerate(arrays)}


def _convert_fp16(path: Path, log: Callable[[str], None]) -> None:
    """Convert the float32 model at ``path`` to float16 in place, keeping float32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        with quiet_export():
            converted = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    except Exception as error:
        raise BackendBuildError(f"onnxruntime: fp16 conversion failed: {type(error).__name__}: {error}") from error
    onnx.save(converted, str(path))
    log("onnxruntime: converted to float16 (float32 inputs and outputs kept)")
