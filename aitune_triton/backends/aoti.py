"""The AOTInductor backend: ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` into a ``.pt2``."""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch

from aitune_triton.backends.artifact_kinds import zip_problem
from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.backends.flat import index_ranges, input_axes, quiet_export
from aitune_triton.backends.options import BackendOptions, refuse_option
from aitune_triton.backends.precision import exported_at, half_precision_reason
from aitune_triton.backends.serving import TORCH_AOTI_TARGET
from aitune_triton.errors import BackendBuildError, BackendUnavailableError
from aitune_triton.served.runtimes.aoti import load_package
from aitune_triton.spec import CallStructure

__all__ = ["AOTInductorBackend", "AOTInductorOptions"]


@dataclass(frozen=True)
class AOTInductorOptions(BackendOptions):
    """The options of :class:`AOTInductorBackend` (see its arguments); stored as
    ``{"freezing": ...}`` plus ``precision`` when not ``"fp32"``.

    Raises:
        InvalidArgumentError: ``freezing`` is not a bool, or ``precision`` is not one of
            ``"fp32"``, ``"fp16"``, ``"bf16"``.
    """

    owner = "aoti"

    freezing: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.freezing, bool):
            refuse_option(self.owner, "freezing", "True or False", self.freezing)
        if self.precision not in ("fp32", "fp16", "bf16"):
            refuse_option(
                self.owner, "precision", "one of ['fp32', 'fp16', 'bf16']", self.precision,
                "int8: use OnnxRuntimeBackend(precision='int8')",
            )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """``{"freezing": ...}``, with ``precision`` only when not ``"fp32"`` (as stored before it existed)."""
        return {"freezing": self.freezing, **({} if self.precision == "fp32" else {"precision": self.precision})}


class AOTInductorBackend(Backend):
    """Compiles the graph spec ahead of time with AOTInductor.

    The package holds compiled C++/CUDA code for the exported graph. The package itself does not
    check input shapes on CPU, so the tuned module and the generated Triton model check every call
    against the graph spec's ranges first; inputs are made contiguous before the call. On
    MiniLM-L6 (2 CPU cores) compilation took about 45 s and a 92 MB package (measured once on
    this project's 2-core machines).

    Args:
        freezing: Compile with Inductor freezing (``torch._inductor.config.freezing`` patched
            around ``aoti_compile_and_package``): weights become constants of the compiled graph
            and are folded and prepacked for the CPU kernels. On a 3-layer MLP (Linear
            256-1024-1024-256 with GELU, batch 32, one CPU thread, 7 interleaved rounds, two runs)
            the package ran in 2.53 / 2.74 ms with freezing and 2.85 / 3.04 ms without (eager
            3.14 / 3.55 ms): about 10% faster on CPU.
        precision: ``"fp32"`` (default); ``"fp16"`` or ``"bf16"``: weights and floating inputs
            cast inside the program, outputs cast back to the recorded dtypes (the package's inputs
            and outputs keep them). fp16 builds on CUDA only; bf16 on CUDA and on a CPU with
            AVX512-BF16 or AMX (:func:`aitune_triton._cpu.native_bf16`); elsewhere the candidate is
            unavailable (``BackendUnavailableError`` at build, with the reason). Opt-in: not among
            :meth:`default_candidates`. Stored only when not ``"fp32"``.

    Raises:
        InvalidArgumentError: ``freezing`` is not a bool, or ``precision`` is not one of
            ``"fp32"``, ``"fp16"``, ``"bf16"``.
    """

    name = "aoti"
    triton_runtime = "aoti"
    triton_native = TORCH_AOTI_TARGET
    gpu_architecture_bound = True  # compiled C++/CUDA kernels
    torch_version_bound = True  # the package is loaded by the torch ABI that built it
    compiler_family = "inductor"  # AOTInductor runs the kernels Inductor generates
    artifact_names = {"model": "model.pt2"}

    options_type = AOTInductorOptions
    typed_options: AOTInductorOptions

    def __init__(self, freezing: bool = False, precision: str = "fp32") -> None:
        super().__init__()
        self.typed_options = AOTInductorOptions(freezing=freezing, precision=precision)
        self._runner: Any = None

    @classmethod
    def default_candidates(cls) -> list[Backend]:
        """With freezing only: each AOTInductor candidate is a full compile (20-28 s for MiniLM-L6
        on 2 CPU cores), and freezing was the faster variant where both were measured: about 10%
        on a CPU MLP here, and in ``make demo``'s tune of MiniLM-L6 (ratios to eager at its
        smallest / typical / largest recorded shape, one run) 0.44 / 0.49 / 0.92x with freezing
        against 0.55 / 0.62 / 0.89x without. ``AOTInductorBackend()`` (no freezing) stays a
        candidate to name explicitly."""
        return [cls(freezing=True)]

    def build(self, context: BuildContext) -> None:
        """Export and compile (see :meth:`Backend.build`).

        Raises:
            BackendUnavailableError: the device or the precision cannot be built here (bf16 on a
                CPU without native bf16: :func:`aitune_triton._cpu.native_bf16_reason`).
            BackendBuildError: ``torch.export`` or the compilation failed.
        """
        reason = half_precision_reason("aoti", self.typed_options.precision, context.device)
        if reason:
            raise BackendUnavailableError(reason)
        super().build(context)

    def _restore(self, context: LoadContext) -> None:
        reason = half_precision_reason("aoti", self.typed_options.precision, context.device, loading=True)
        if reason:
            raise BackendUnavailableError(reason)

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Unavailable only on a CUDA device without CUDA in this torch."""
        if device.type == "cuda" and not torch.cuda.is_available():
            return "device is CUDA but torch.cuda.is_available() is False"
        return None

    def _build(self, context: BuildContext) -> None:
        with exported_at(context, self.typed_options.precision, "aoti") as exported:
            self.input_axes = input_axes(exported)
            self.index_ranges = index_ranges(exported)
            context.log("aoti: compiling with AOTInductor")
            try:
                with quiet_export(), torch._inductor.config.patch(freezing=self.typed_options.freezing):
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

    artifact_kinds = {
        "model": "an AOTInductor package (a zip archive with archive_format and data/aotinductor/ entries, as "
        "torch._inductor.aoti_compile_and_package writes)"
    }

    @classmethod
    def artifact_problem(cls, role: str, path: Path) -> str | None:
        """The package is a zip archive holding ``archive_format`` and the compiled model under
        ``data/aotinductor/``; judged from its entry names, nothing is loaded (see :meth:`Backend.artifact_problem`)."""
        if role != "model":
            return super().artifact_problem(role, path)
        return zip_problem(path, {"/archive_format": "an archive_format entry", "/data/aotinductor/": "data/aotinductor/ entries"})
