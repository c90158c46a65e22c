"""The options of the ONNX Runtime backend (:class:`OnnxRuntimeOptions`), apart from the backend so
that what reads a stored ONNX Runtime options dict (the native target's settings) needs no export code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from aitune_triton.backends.options import BackendOptions, refuse_option
from aitune_triton.served.runtimes.onnxruntime import GRAPH_OPTIMIZATION_LEVELS

__all__ = ["EXPORTERS", "PRECISIONS", "QUANTIZATIONS", "OnnxRuntimeOptions"]

#: Exporter option value -> what it runs.
EXPORTERS = {"dynamo": "torch.onnx.export(dynamo=True)", "torchscript": "torch.onnx.export(dynamo=False)"}
#: Precisions this backend builds: fp32 anywhere, fp16 on CUDA, int8 (dynamic quantization) on CPU.
PRECISIONS = ("fp32", "fp16", "int8")
#: How ``precision="int8"`` quantizes: weights ahead of time and activations per call (dynamic), or
#: activations with scales calibrated on the recorded samples (static, QDQ).
QUANTIZATIONS = ("dynamic", "static")


@dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    """The options of :class:`~aitune_triton.backends.onnxruntime.OnnxRuntimeBackend` (see its
    arguments). Stored without the defaults (a description written before an option existed reads
    the same); ``providers`` as a list.

    Raises:
        InvalidArgumentError: an option has a value outside the ones the backend
            lists (the message names the option, the allowed values and the value given).
    """

    owner = "OnnxRuntimeBackend"

    opset_version: int | None = None
    providers: Sequence[str] | None = None  # a tuple once built
    exporter: str = "dynamo"
    graph_optimization_level: str | None = None
    intra_op_num_threads: int | None = None
    precision: str = "fp32"
    transformer_fusion: bool | None = None
    quantization: str = "dynamic"

    def __post_init__(self) -> None:
        _check_options(self)
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))

    def to_dict(self) -> dict[str, Any]:
        """Only the options that differ from their defaults, in the order stored before."""
        options: dict[str, Any] = {}
        if self.exporter != "dynamo":
            options["exporter"] = self.exporter
        if self.precision != "fp32":
            options["precision"] = self.precision
        if self.opset_version is not None:
            options["opset_version"] = self.opset_version
        if self.providers is not None:
            options["providers"] = list(self.providers)
        if self.graph_optimization_level is not None:
            options["graph_optimization_level"] = self.graph_optimization_level
        if self.intra_op_num_threads is not None:
            options["intra_op_num_threads"] = self.intra_op_num_threads
        if self.transformer_fusion is not None:
            options["transformer_fusion"] = self.transformer_fusion
        if self.quantization != "dynamic":
            options["quantization"] = self.quantization
        return options


def _check_options(options: OnnxRuntimeOptions) -> None:
    """Raise :class:`InvalidArgumentError` for the first option outside its allowed values."""
    opset_version, providers, exporter = options.opset_version, options.providers, options.exporter
    graph_optimization_level, intra_op_num_threads, precision = options.graph_optimization_level, options.intra_op_num_threads, options.precision

    def refuse(option: str, expected: str, given: Any, hint: str) -> None:
        refuse_option(OnnxRuntimeOptions.owner, option, expected, given, hint)

    if opset_version is not None and (isinstance(opset_version, bool) or not isinstance(opset_version, int) or opset_version < 7):
        refuse("opset_version", "None or an int >= 7 (an ONNX opset)", opset_version, "pass e.g. opset_version=18, or None for the exporter's default")
    if providers is not None and (
        isinstance(providers, str)
        or not isinstance(providers, (list, tuple))
        or not providers
        or not all(isinstance(p, str) and p for p in providers)
    ):
        refuse("providers", "None or a non-empty list of execution provider names", providers, "pass e.g. providers=['CPUExecutionProvider']")
    if exporter not in EXPORTERS:
        refuse("exporter", f"one of {sorted(EXPORTERS)}", exporter, "'dynamo' is torch.onnx.export(dynamo=True), 'torchscript' is dynamo=False")
    if graph_optimization_level is not None and graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
        refuse(
            "graph_optimization_level", f"None or one of {list(GRAPH_OPTIMIZATION_LEVELS)}", graph_optimization_level,
            "pass None to measure it at build",
        )  # fmt: skip
    if intra_op_num_threads is not None and (
        isinstance(intra_op_num_threads, bool) or not isinstance(intra_op_num_threads, int) or intra_op_num_threads < 1
    ):
        refuse("intra_op_num_threads", "None or an int >= 1", intra_op_num_threads, "pass None to measure it at build")
    if precision not in PRECISIONS:
        refuse(
            "precision", f"one of {list(PRECISIONS)}", precision,
            "'fp16' builds on CUDA, 'int8' (dynamic quantization) on CPU; ONNX Runtime's converters here do not build bf16",
        )  # fmt: skip
    if options.transformer_fusion is not None and not isinstance(options.transformer_fusion, bool):
        refuse(
            "transformer_fusion", "None, True or False", options.transformer_fusion,
            "None tries the transformer optimizer's fusions and keeps them where measured faster, True requires them, False never runs them",
        )  # fmt: skip
    if options.quantization not in QUANTIZATIONS:
        refuse(
            "quantization", f"one of {list(QUANTIZATIONS)}", options.quantization,
            "'dynamic' quantizes activations per call, 'static' calibrates their scales on the recorded samples",
        )  # fmt: skip
    if options.quantization == "static" and precision != "int8":
        refuse(
            "quantization", "'dynamic' (the default) unless precision='int8'", options.quantization,
            f"precision is {precision!r}: pass precision='int8' with quantization='static', or leave quantization out",
        )  # fmt: skip
