"""The AOTInductor backend: ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` into a ``.pt2``."""

from __future__ import annotations

from typing import Any

import torch

from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.backends.flat import index_ranges, input_axes, quiet_export
from aitune_triton.backends.precision import exported_at, half_precision_reason
from aitune_triton.backends.serving import TORCH_AOTI_TARGET
from aitune_triton.errors import BackendBuildError, BackendUnavailableError, InvalidArgumentError
from aitune_triton.served.runtimes.aoti import load_package
from aitune_triton.spec import CallStructure

__all__ = ["AOTInductorBackend"]


class AOTInductorBackend(Backend):
    """Compiles the graph spec ahead of time with AOTInductor.

    The package holds compiled C++/CUDA code for the exported graph. The package itself does not
    check input shapes on CPU, so the tuned module and the generated Triton model check every call
    against the graph spec's ranges first; inputs are made contiguous before the call. On
    MiniLM-L6 (2 CPU cores) compilation took about 45 s and a 92 MB package (design notes).

    Args:
        freezing: Compile with Inductor freezing (``torch._inductor.config.freezing`` patched
            around ``aoti_compile_and_package``): weights become constants of the compiled graph
            and are folded and prepacked for the CPU kernels. On a 3-layer MLP (Linear
            256-1024-1024-256 with GELU, batch 32, one CPU thread, 7 interleaved rounds, two runs)
            the package ran in 2.53 / 2.74 ms with freezing and 2.85 / 3.04 ms without (eager
            3.14 / 3.55 ms): about 10% faster on CPU.
        precision: ``"fp32"`` (default); ``"fp16"`` or ``"bf16"`` (CUDA only: weights and
            floating inputs cast inside the program, outputs cast back to the recorded dtypes).
            Stored only when not ``"fp32"``.

    Raises:
        InvalidArgumentError: ``freezing`` is not a bool, or ``precision`` is not one of
            ``"fp32"``, ``"fp16"``, ``"bf16"``.
    """

    name = "aoti"
    triton_runtime = "aoti"
    triton_native = TORCH_AOTI_TARGET
    gpu_architecture_bound = True  # compiled C++/CUDA kernels
    torch_version_bound = True  # the package is loaded by the torch ABI that built it
    artifact_names = {"model": "model.pt2"}

    def __init__(self, freezing: bool = False, precision: str = "fp32") -> None:
        if not isinstance(freezing, bool):
            raise InvalidArgumentError(f"aoti: option 'freezing' must be True or False, got {freezing!r}")
        if precision not in ("fp32", "fp16", "bf16"):
            raise InvalidArgumentError(
                f"aoti: option 'precision' must be one of ['fp32', 'fp16', 'bf16'], got {precision!r} "
                "(int8: use OnnxRuntimeBackend(precision='int8'))"
            )
        super().__init__(freezing=freezing, **({} if precision == "fp32" else {"precision": precision}))
        self._runner: Any = None

    @classmethod
    def default_candidates(cls) -> list[Backend]:
        """Without and with freezing (about 10% faster on a CPU MLP here, not on every model).
        Measured on MiniLM-L6 at 8 x 128 tokens fp32 (2 CPU cores, ratios in one run): 0.89-0.95x
        eager; at 1 x 16, 0.53-0.84x."""
        return [cls(), cls(freezing=True)]

    def build(self, context: BuildContext) -> None:
        """Export and compile (see :meth:`Backend.build`).

        Raises:
            BackendUnavailableError: the device or the precision cannot be built here.
            BackendBuildError: ``torch.export`` or the compilation failed.
        """
        reason = half_precision_reason("aoti", self.options.get("precision", "fp32"), context.device)
        if reason:
            raise BackendUnavailableError(f"{self.name}: {reason}")
        super().build(context)

    def _restore(self, context: LoadContext) -> None:
        reason = half_precision_reason("aoti", self.options.get("precision", "fp32"), context.device)
        if reason:
            raise BackendUnavailableError(f"{self.name}: {reason}")

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Unavailable only on a CUDA device without CUDA in this torch."""
        if device.type == "cuda" and not torch.cuda.is_available():
            return "device is CUDA but torch.cuda.is_available() is False"
        return None

    def _build(self, context: BuildContext) -> None:
        with exported_at(context, self.options.get("precision", "fp32"), "aoti") as exported:
            self.input_axes = input_axes(exported)
            self.index_ranges = index_ranges(exported)
            context.log("aoti: compiling with AOTInductor")
            try:
                with quiet_export(), torch._inductor.config.patch(freezing=bool(self.options.get("freezing"))):
                    torch._inductor.aoti_compile_and_package(exported, package_path=str(self.artifacts["model"]))
            except Exception as error:
                raise BackendBuildError(f"aoti: AOTInductor compilation failed: {type(error).__name__}: {error}") from error

    def _load(self) -> None:
        self._runner = load_package(str(self.artifacts["model"]))

    def _unload(self) -> None:
        self._runner = None

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        # The compiled code assumes the dense row-major layout it was traced with: a channels_last
        # or permuted tensor would be read with the wrong strides.
        outputs = self._runner(*[t.to(self.device).contiguous() for t in call.flat.tensors])
        return list(outputs)
