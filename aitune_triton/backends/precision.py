"""Lower precision for the backends built from a ``torch.export`` program (inductor, aoti)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from aitune_triton import _cpu
from aitune_triton.backends.base import BuildContext
from aitune_triton.backends.flat import FlatModule, export_dynamic_shapes, export_example, quiet_export
from aitune_triton.errors import BackendBuildError

__all__ = ["HALF_PRECISIONS", "CastTo", "exported_at", "half_precision_reason", "weights_in"]

#: Precision option -> the floating dtype the program computes in (int8: no path through torch.export here).
HALF_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": None,
}


def half_precision_reason(backend: str, precision: str, device: torch.device, *, loading: bool = False) -> str | None:
    """Why ``backend`` cannot build (or, with ``loading``, load) ``precision`` on ``device``, or None
    when it can. The message starts with ``"<backend>: "``.

    fp16 and bf16 build on CUDA; bf16 also on a CPU that computes it natively
    (:func:`aitune_triton._cpu.native_bf16`; elsewhere :func:`aitune_triton._cpu.native_bf16_reason`:
    emulated bf16 is slower than fp32, so the candidate is unavailable rather than built). A bf16
    artifact built elsewhere still loads on any CPU (``loading``): it runs correctly there, only
    without the native speed-up. fp16 is refused on the CPU; int8 has no path through these
    backends (ONNX Runtime's quantization is the int8 path).
    """
    if precision == "int8":
        return f"{backend}: precision 'int8' has no {backend} path here; use the onnxruntime backend for int8"
    if device.type == "cuda" or precision not in ("fp16", "bf16"):
        return None
    if precision == "bf16" and device.type == "cpu":
        return None if loading else _cpu.native_bf16_reason(backend)
    return (
        f"{backend}: precision {precision!r} is built for CUDA devices only (bf16 also on CPUs with AVX512-BF16 or AMX), "
        f"got device {str(device)!r}; use precision='fp32'"
    )


class CastTo(torch.nn.Module):
    """Runs ``flat`` (a module converted to ``dtype``) on floating inputs cast to ``dtype``, and
    casts floating outputs back to the dtypes the graph spec recorded, so the program's inputs and
    outputs keep the graph spec's dtypes.

    Args:
        flat: The flat module (tensors in, tensors out) to run.
        dtype: The dtype it computes in (``torch.float16`` or ``torch.bfloat16``).
        output_dtypes: Per output, the dtype the graph spec recorded.
    """

    def __init__(self, flat: torch.nn.Module, dtype: torch.dtype, output_dtypes: list[torch.dtype]):
        super().__init__()
        self.flat = flat
        self.dtype = dtype
        self.output_dtypes = output_dtypes

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Floating inputs cast to :attr:`dtype` in, floating outputs cast back out."""
        cast = [t.to(self.dtype) if t.is_floating_point() else t for t in tensors]
        outputs = self.flat(*cast)
        return tuple(o.to(d) if o.is_floating_point() else o for o, d in zip(outputs, self.output_dtypes))


@contextlib.contextmanager
def weights_in(module: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """``module``'s floating weights in ``dtype`` while a program is exported, then their original
    values back (kept as copies, since a round trip through fp16 would lose bits)."""
    if dtype is None or dtype == torch.float32:
        yield
        return
    saved = {name: tensor.detach().clone() for name, tensor in module.state_dict(keep_vars=True).items()}
    module.to(dtype)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, tensor in module.state_dict(keep_vars=True).items():
                tensor.data = saved[name]


@contextlib.contextmanager
def exported_at(context: BuildContext, precision: str, backend: str) -> Iterator[torch.export.ExportedProgram]:
    """``torch.export`` of ``context``'s graph spec (its flat module, dynamic over the recorded
    ranges) computing in ``precision``; inside the block the module's weights are in that
    precision (the program shares them, so save or compile it there), then given back.

    Raises:
        BackendBuildError: ``torch.export.export`` failed (the message names ``backend``).
    """
    tensors = export_example(context.graph, context.example, context.device)
    flat: torch.nn.Module = FlatModule(context.module, context.signature, context.example, context.forward)
    dtype = HALF_PRECISIONS[precision]
    with weights_in(context.module, dtype):
        if dtype is not None and dtype != torch.float32:
            flat = CastTo(flat, dtype, [getattr(torch, spec.dtype) for spec in context.graph.outputs])
        try:
            with quiet_export():
                exported = torch.export.export(flat, tensors, dynamic_shapes=export_dynamic_shapes(context.graph), strict=False)
        except Exception as error:
            raise BackendBuildError(f"{backend}: torch.export.export failed: {type(error).__name__}: {error}") from error
        yield exported
