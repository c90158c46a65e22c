"""The Inductor backend: a ``torch.export`` program saved as ``program.pt2``, run with ``torch.compile``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aitune_triton.backends.artifact_kinds import zip_problem
from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.backends.flat import index_ranges, input_axes, quiet_export
from aitune_triton.backends.options import BackendOptions, refuse_option
from aitune_triton.backends.precision import HALF_PRECISIONS, exported_at, half_precision_reason
from aitune_triton.errors import BackendBuildError, BackendUnavailableError, CheckpointError
from aitune_triton.served.runtimes import inductor as runtime
from aitune_triton.served.runtimes.inductor import compile_options, warmup_inputs
from aitune_triton.spec import CallStructure

__all__ = ["InductorBackend", "InductorOptions", "MODES", "PRECISIONS", "check_program_archive", "compile_options", "warmup_inputs"]

#: ``torch.compile`` modes this backend accepts (None is torch's default).
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Precision option -> the floating dtype the program computes in (int8: no Inductor path here).
PRECISIONS = HALF_PRECISIONS


@dataclass(frozen=True)
class InductorOptions(BackendOptions):
    """The options of :class:`InductorBackend` (see its arguments); every one is stored.

    Raises:
        InvalidArgumentError: an option has a value outside the ones :class:`InductorBackend` lists.
    """

    owner = "inductor"

    mode: str | None = None
    dynamic: bool | None = None
    fullgraph: bool = True
    freezing: bool | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            refuse_option(self.owner, "mode", f"None or one of {list(MODES)}", self.mode)
        for option, value in (("dynamic", self.dynamic), ("freezing", self.freezing)):
            if value is not None and not isinstance(value, bool):
                refuse_option(self.owner, option, "None, True or False", value)
        if not isinstance(self.fullgraph, bool):
            refuse_option(self.owner, "fullgraph", "True or False", self.fullgraph)
        if self.precision not in PRECISIONS:
            refuse_option(self.owner, "precision", f"one of {list(PRECISIONS)}", self.precision)


def check_program_archive(path: str | Path) -> None:
    """Refuse a ``torch.export.save`` archive whose loading would unpickle anything but tensors
    (:func:`aitune_triton.served.runtimes.inductor.check_program_archive`, the check the served
    model runs).

    Args:
        path: The ``.pt2`` archive.

    Raises:
        CheckpointError: the file is not a zip archive, or holds a payload that needs pickle.
    """
    try:
        runtime.check_program_archive(str(path))
    except runtime.ProgramArchiveError as error:
        raise CheckpointError(str(error)) from None


class InductorBackend(Backend):
    """Runs the graph spec with ``torch.compile(backend="inductor")`` of its exported program.

    The artifact is a ``torch.export`` program (``torch.export.save`` of the graph spec's flat
    module, dynamic over the recorded ranges as for ``aoti``), holding the weights and no code:
    loading it reads tensors only (see :func:`check_program_archive`), and it is compiled again
    with ``torch.compile(program.module(), ...)`` where it is loaded (in process or in a served
    model). Compiling happens at build and load with zero inputs (warm-up); dynamic axes are marked
    with ``torch._dynamo.mark_dynamic`` and compiled with
    ``torch.fx.experimental._config.backed_size_oblivious`` so that one graph serves every size in
    the range, size 1 included (without it each dynamic axis seen at size 1 compiles again).
    Inductor's FX graph and AOTAutograd caches (on by default, under ``TORCHINDUCTOR_CACHE_DIR``,
    default ``/tmp/torchinductor_<user>``) make a reload skip most of the compile. Measured on an
    Embedding(30, 8) + Linear(8, 8) net with batch and sequence axes (2 CPU cores shared with
    other jobs, load average 5-6): build (export, save, first compile) 46 s; ``aitune_triton.load``
    in a fresh process 7.5-8 s with that cache, 38.5 s with an empty one. A served model compiles
    when Triton loads it (the same cache, when the server runs as the same user). The artifact
    holds the weights, so the backend is ahead of time: ``offload="meta"`` may free the module's
    weights, and calls are checked against the exported input contract before they run.

    Args:
        mode: ``torch.compile`` mode: one of :data:`MODES`, or None (torch's default).
        dynamic: ``torch.compile``'s ``dynamic``: None (the graph spec's dynamic axes are compiled
            dynamic, others static), True (every axis dynamic) or False (static: each new size
            compiles again, within torch's ``recompile_limit``).
        fullgraph: Refuse graph breaks (``torch.compile(fullgraph=True)``); an exported program
            has none, so this only matters for ops Dynamo cannot trace again.
        freezing: Inductor freezing (weights folded into the graph as constants, CPU weight
            prepacking). None (the default) leaves it off on every device: on a 3-layer MLP
            (Linear 256-1024-1024-256 with GELU, batch 32, one CPU thread, 7 interleaved rounds,
            two runs) ``torch.compile`` took 3.55 / 3.97 ms without freezing and 3.63 / 4.05 ms
            with it (eager 3.14 / 3.55 ms), so it did not pay on CPU here. Pass True to try it.
        precision: ``"fp32"`` (default); ``"fp16"`` or ``"bf16"``: weights and floating inputs
            cast inside the program, outputs cast back to the recorded dtypes. fp16 builds on CUDA
            only; bf16 on CUDA and on a CPU with AVX512-BF16 or AMX
            (:func:`aitune_triton._cpu.native_bf16`); elsewhere the candidate is unavailable
            (``BackendUnavailableError`` at build, with the reason). ``"int8"`` has no Inductor path
            here (use ONNX Runtime's). Opt-in: not among :meth:`default_candidates`.

    Raises:
        InvalidArgumentError: an option has a value outside the ones listed above.
    """

    name = "inductor"
    triton_runtime = "inductor"
    gpu_architecture_bound = True  # Triton/C++ kernels compiled for the build machine
    compiler_family = "inductor"
    artifact_names = {"model": "program.pt2"}
    ahead_of_time = True

    options_type = InductorOptions
    typed_options: InductorOptions

    def __init__(
        self,
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = True,
        freezing: bool | None = None,
        precision: str = "fp32",
    ):
        super().__init__()
        self.typed_options = InductorOptions(mode=mode, dynamic=dynamic, fullgraph=fullgraph, freezing=freezing, precision=precision)
        self._compiled: Any = None
        self._program: torch.export.ExportedProgram | None = None

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        """Unavailable only on a CUDA device without CUDA in this torch."""
        if device.type == "cuda" and not torch.cuda.is_available():
            return "device is CUDA but torch.cuda.is_available() is False"
        return None

    @classmethod
    def default_candidates(cls) -> list[Backend]:
        """None: Inductor is the compiler AOTInductor runs too, it was the slower of the two in
        every measurement here (MiniLM-L6 at 8 x 128 tokens fp32, 2 CPU cores: torch.compile
        0.93-0.98x eager against aoti's 0.89-0.95x; ``make demo``'s tune: 0.76 / 0.77 / 0.95x at the
        smallest / typical / largest recorded shape against aoti with freezing 0.44 / 0.49 / 0.92x),
        its build costs a compile (13-19 s for MiniLM-L6), and a served ``inductor`` model compiles
        again at every load. Name ``"inductor"`` in a strategy's candidates to measure it."""
        return []

    def precision_reason(self, device: torch.device, loading: bool = False) -> str | None:
        """Why this backend's ``precision`` cannot be built (``loading``: loaded) on ``device``, or
        None when it can (:func:`~aitune_triton.backends.precision.half_precision_reason`)."""
        return half_precision_reason("inductor", self.typed_options.precision, device, loading=loading)

    def build(self, context: BuildContext) -> None:
        """Export, save and compile (see :meth:`Backend.build`).

        Raises:
            BackendUnavailableError: the device or the precision cannot be built here.
            BackendBuildError: ``torch.export`` or the first compile failed.
        """
        reason = self.precision_reason(context.device)
        if reason:
            raise BackendUnavailableError(reason)
        super().build(context)

    def _restore(self, context: LoadContext) -> None:
        reason = self.precision_reason(context.device, loading=True)
        if reason:
            raise BackendUnavailableError(reason)

    def _build(self, context: BuildContext) -> None:
        with exported_at(context, self.typed_options.precision, "inductor") as exported:
            self.input_axes = input_axes(exported)
            self.index_ranges = index_ranges(exported)
            exported.example_inputs = None  # recorded data stays out of the artifact
            torch.export.save(exported, str(self.artifacts["model"]))
        context.log("inductor: compiling with torch.compile (warm-up)")

    def _load(self) -> None:
        path = self.artifacts["model"]
        check_program_archive(path)
        program = runtime.load_program(str(path), self.device)
        try:
            with quiet_export():
                compiled = runtime.compile_program(program, self.device, self.options)
        except Exception as error:
            raise BackendBuildError(f"inductor: torch.compile of the exported program failed: {type(error).__name__}: {error}") from error
        self._program, self._compiled = program, compiled

    def _unload(self) -> None:
        self._compiled = None
        self._program = None

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        # Dense, detached inputs under no_grad: the layout, requires_grad and grad mode the
        # warm-up compiled for, so no call triggers a recompile.
        with torch.no_grad():
            outputs = self._compiled(*[t.detach().to(self.device).contiguous() for t in call.flat.tensors])
        return list(outputs)

    artifact_kinds = {
        "model": "a torch.export archive (a zip archive with archive_format and models/*.json entries, as "
        "torch.export.save writes)"
    }

    @classmethod
    def artifact_problem(cls, role: str, path: Path) -> str | None:
        """The program is a zip archive holding ``archive_format`` and the serialized program under
        ``models/``; judged from its entry names, nothing is loaded (the pickle payload check runs
        when it is loaded: :func:`check_program_archive`)."""
        if role != "model":
            return super().artifact_problem(role, path)
        return zip_problem(path, {"/archive_format": "an archive_format entry", "/models/": "a serialized program (models/)"})
