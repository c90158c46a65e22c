"""The variants ``benchmarks/tuning.py`` times: which this installation can build, and why the others are skipped.

A variant names a strategy (None: eager itself). Backends and options that other parts of the
project add are looked up by their agreed names (``openvino``; ``OnnxRuntimeBackend``'s
``transformer_fusion`` and ``quantization``; ``precision="bf16"`` on the CPU), so a variant whose
backend is not registered, or whose options its backend refuses, is skipped with the reason.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

import aitune_triton
from aitune_triton import _cpu
from aitune_triton.backends import OnnxRuntimeBackend, backend_names, get_backend_class
from aitune_triton.errors import AITuneTritonError
from aitune_triton.strategies import OneBackendStrategy, TuneStrategy, default_strategy

__all__ = ["MIN_COSINE", "Variant", "available_variants", "embedding_cosine", "select_variants"]

#: The per-sentence cosine a lower-precision variant must reach on the recorded calls to be kept
#: (the strategy's accuracy gate); the demo's real sentences' cosines are reported on top.
MIN_COSINE = 0.98


@dataclass
class Variant:
    """One thing to time: eager (``strategy`` None) or a module tuned with ``strategy``.

    Attributes:
        name: The variant's name in tables and ``--variants``.
        strategy: The strategy it is tuned with; None for eager.
        note: What it is (options, gate).
        over_range: Tuned once on the recorded calls of every shape (else once per shape, on that
            shape's calls alone).
        lower_precision: Judged by the accuracy gate (a candidate for the lower-precision goal).
    """

    name: str
    strategy: TuneStrategy | None
    note: str = ""
    over_range: bool = False
    lower_precision: bool = False


def embedding_cosine(eager: Any, tuned: Any) -> float:
    """The accuracy gate of the lower precisions: the lowest cosine, over the samples of a call,
    between eager's and the candidate's mean-pooled token states (the recorded rows are unpadded,
    so this is the sentence embedding of ``examples/minilm.py: embed`` before normalization)."""
    return float(
        torch.nn.functional.cosine_similarity(eager.last_hidden_state.mean(1), tuned.last_hidden_state.mean(1), dim=-1).min()
    )


def _backend(name: str, **options: Any) -> aitune_triton.Backend | str:
    """The registered backend ``name`` built with ``options``, or why it cannot be."""
    if name not in backend_names():
        return f"no backend registered as {name!r} (registered: {backend_names()})"
    shown = ", ".join(f"{key}={value!r}" for key, value in options.items())
    try:
        return get_backend_class(name)(**options)
    except (TypeError, ValueError, AITuneTritonError) as error:
        return f"{get_backend_class(name).__name__}({shown}) refused: {type(error).__name__}: {error}"


def _strict(backend: aitune_triton.Backend | str) -> TuneStrategy:
    return OneBackendStrategy(backend)


def _gated(backend: aitune_triton.Backend) -> TuneStrategy:
    """A strategy that judges a lower-precision backend by the embedding cosine on the recorded
    calls (>= MIN_COSINE) instead of fp32's elementwise tolerance."""
    return OneBackendStrategy(backend, accuracy=embedding_cosine, min_accuracy=MIN_COSINE)


def _add(variants: list[Variant], skipped: dict[str, str], name: str, backend: aitune_triton.Backend | str, note: str,
         strategy: Callable[[aitune_triton.Backend], TuneStrategy] = _strict, lower_precision: bool = False) -> None:  # fmt: skip
    if isinstance(backend, str):
        skipped[name] = backend
    else:
        variants.append(Variant(name, strategy(backend), note, lower_precision=lower_precision))


def _bf16_reason(name: str) -> str | None:
    """Why a bf16 variant of backend ``name`` is not built on this CPU (it would be unavailable)."""
    return _cpu.native_bf16_reason(name)


def available_variants() -> tuple[list[Variant], dict[str, str]]:
    """Every variant this installation can build, and why the others are skipped."""
    variants = [Variant("eager", None, "copy of the model, not wrapped")]
    skipped: dict[str, str] = {}
    gate = f"embedding cosine >= {MIN_COSINE}"
    _add(variants, skipped, "aoti", _backend("aoti"), "AOTInductorBackend()")
    _add(variants, skipped, "aoti-freezing", _backend("aoti", freezing=True), "freezing=True")
    _add(variants, skipped, "onnxruntime", _backend("onnxruntime"), "OnnxRuntimeBackend()")
    exporter_option = inspect.signature(OnnxRuntimeBackend).parameters.get("exporter")
    for exporter in ("dynamo", "torchscript"):
        same = exporter_option is not None and exporter_option.default == exporter
        backend = f"the same as 'onnxruntime': {exporter!r} is OnnxRuntimeBackend's default exporter" if same else _backend(
            "onnxruntime", exporter=exporter
        )
        _add(variants, skipped, f"onnxruntime-{exporter}", backend, f"exporter={exporter!r}")
    _add(variants, skipped, "onnxruntime-fused", _backend("onnxruntime", transformer_fusion=True), "transformer_fusion=True")
    _add(variants, skipped, "inductor", _backend("inductor"), "InductorBackend()")
    _add(variants, skipped, "openvino", _backend("openvino", precision="fp32"), "precision='fp32'")
    lower: list[tuple[str, aitune_triton.Backend | str, str]] = [
        ("onnxruntime-int8", _backend("onnxruntime", precision="int8"), "precision='int8' (dynamic)"),
        ("onnxruntime-int8-static", _backend("onnxruntime", precision="int8", quantization="static"), "precision='int8', quantization='static'"),
        ("openvino-int8", _backend("openvino", precision="int8"), "precision='int8'"),
    ]
    for name, backend_name in (("openvino-bf16", "openvino"), ("aoti-bf16", "aoti"), ("inductor-bf16", "inductor")):
        reason = _bf16_reason(backend_name)
        lower.append((name, reason or _backend(backend_name, precision="bf16"), "precision='bf16'"))
    for name, backend, note in lower:
        _add(variants, skipped, name, backend, f"{note}, {gate}", _gated, lower_precision=True)
    strategy = default_strategy()
    variants.append(Variant("default", strategy, f"{strategy.describe()}, tuned on the calls of every shape", over_range=True))
    return variants, skipped


def select_variants(
    variants: list[Variant], skipped: dict[str, str], wanted: str | None, error: Callable[[str], Any]
) -> tuple[list[Variant], dict[str, str]]:
    """The variants ``--variants`` names (eager always first) and the skipped ones among them;
    ``error`` (argparse's) is called for a name that is neither."""
    if wanted is None:
        return variants, skipped
    names = ["eager", *(name.strip() for name in wanted.split(",") if name.strip() and name.strip() != "eager")]
    known = {variant.name: variant for variant in variants}
    unknown = [name for name in names if name not in known and name not in skipped]
    if unknown:
        error(f"--variants: unknown {unknown}; expected names among {[*known, *skipped]}")
    return [known[name] for name in names if name in known], {name: reason for name, reason in skipped.items() if name in names}
