"""The life cycle of a :class:`~aitune_triton.Module`: state transitions, tuning, offloading.

:class:`ModuleLifecycle` is a mixin of :class:`~aitune_triton.module.wrapper.Module` (the proxy
itself, its calls and properties live there): it switches between the states of
:class:`~aitune_triton.module.state.ModuleState` (``enable_recording``, ``enable_passthrough``,
``tune``, ``activate``/``deactivate``) and undoes a failed load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aitune_triton._progress import console, progress
from aitune_triton.errors import AlreadyTunedError, ModuleStateError, NoSamplesError, RecordingError
from aitune_triton.module.passthrough import PassthroughState
from aitune_triton.module.persistence import checked_device
from aitune_triton.module.recording import Recorder, RecordingState
from aitune_triton.module.registry import claim_name, release_name
from aitune_triton.module.routing import register_wrapper, unroute
from aitune_triton.module.state import ModuleState
from aitune_triton.module.tuned import TunedModule
from aitune_triton.module.tuning import StrategiesArg, plan_strategies, tune_graphs
from aitune_triton.spec import ForwardSignature, GraphSpec
from aitune_triton.strategies import TuneStrategy
from aitune_triton.strategies.report import report_table

__all__ = ["ModuleLifecycle", "default_cache_dir"]


def default_cache_dir() -> Path:
    """Where tuning writes artifacts and recorded calls: ``$AITUNE_TRITON_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/aitune_triton``, else ``~/.cache/aitune_triton``."""
    if os.environ.get("AITUNE_TRITON_CACHE_DIR"):
        return Path(os.environ["AITUNE_TRITON_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "aitune_triton"



class ModuleLifecycle:
    """State transitions and tuning of a :class:`~aitune_triton.Module` (a mixin of it)."""

    if TYPE_CHECKING:  # set by Module.__init__
        __wrapped__: torch.nn.Module
        _self_name: str
        _self_handler: Any
        _self_recorder: Recorder
        _self_strategy: TuneStrategy | None
        _self_strategies: StrategiesArg
        _self_strict: bool
        _self_fallback: str | None
        _self_offload: str | None
        _self_offloaded_from: torch.device | None
        _self_cache_dir: Path | None
        _self_pad_values: dict[str, int | float]
        _self_forward: Any
        _self_signature: ForwardSignature
        _self_tuning: bool
        _self_retired: bool

        @property
        def device(self) -> torch.device: ...

        @property
        def state(self) -> ModuleState: ...

        @property
        def graph_specs(self) -> list[GraphSpec]: ...

        def _cache_root(self) -> Path: ...

        def _new_recorder(self, max_samples: int, declared: Any) -> Recorder: ...

    # ----------------------------------------------------------------------------- transitions
    def enable_recording(self, force: bool = False) -> None:
        """Record calls from now on; continues an earlier recording after a passthrough interval.

        Args:
            force: From ``TUNED``, release the tuned backends and record from scratch.

        Raises:
            ModuleStateError: the module is tuned and ``force`` is False, or its weights were
                offloaded to ``meta`` and not restored.
        """
        self._reset_if_tuned(force)
        self._self_handler = RecordingState(self._self_recorder)

    def enable_passthrough(self, force: bool = False) -> None:
        """Run calls on the module's own forward and record nothing.

        Args:
            force: From ``TUNED``, release the tuned backends and the recorded calls.

        Raises:
            ModuleStateError: the module is tuned and ``force`` is False, or its weights were
                offloaded to ``meta`` and not restored.
        """
        self._reset_if_tuned(force)
        self._self_handler = PassthroughState()

    def _reset_if_tuned(self, force: bool) -> None:
        if not isinstance(self._self_handler, TunedModule):
            return
        if not force:
            raise ModuleStateError("Module is already tuned. Use force=True to reset tuned module.")
        self._restore_offloaded()
        self._self_handler.deactivate()
        self._self_handler = None
        recorder = self._self_recorder
        recorder.clear()
        self._self_recorder = self._new_recorder(recorder.max_samples, recorder.dynamic_shapes)

    def _restore_offloaded(self) -> None:
        if self._self_offloaded_from is None:
            return
        if self._self_offload == "meta":
            if any(t.is_meta for t in self.__wrapped__.parameters()):
                raise ModuleStateError(
                    f"Module '{self._self_name}': its weights were offloaded to 'meta' after tuning, so it cannot run "
                    "eagerly again. Load the weights back (module.load_state_dict(..., assign=True)) first."
                )
        else:
            self.__wrapped__.to(self._self_offloaded_from)
        self._self_offloaded_from = None

    def _restore_state(self, state: ModuleState) -> None:
        """Put back an untuned state changed on this Module's behalf (used by :func:`aitune_triton.tune`)."""
        if state is ModuleState.TUNED or isinstance(self._self_handler, TunedModule):
            return
        handlers = {ModuleState.INIT: None, ModuleState.PASSTHROUGH: PassthroughState()}
        self._self_handler = handlers.get(state, RecordingState(self._self_recorder))

    def _undo_load(self, state: ModuleState | None) -> None:
        """Undo :meth:`load_tuned` when it or another submodule's load failed: release the backends
        and put back the untuned ``state`` (recorded calls kept). With None, for a wrapper that the
        load created, also retire it, free its name and give the module its own class back, so the
        bare module is unwrapped at once, even while a kept traceback holds this wrapper."""
        if isinstance(self._self_handler, TunedModule):
            self._self_handler.deactivate()
            self._self_handler = None
        if state is None:
            self._self_retired = True
            release_name(self._self_name, self)
            unroute(weakref.ref(self.__wrapped__))
        else:
            self._restore_state(state)

    def _reinstate(self, successor: "ModuleLifecycle") -> None:
        """Take the module and the name back from ``successor``, which retired this wrapper when it
        wrapped the same module under the same name and is itself being retired (a failed load)."""
        self._self_retired = False
        claim_name(self._self_name, self, replacing=successor)
        register_wrapper(self.__wrapped__, self)

    def _recorded_calls(self) -> int:
        return self._self_recorder.num_calls

    def activate(self) -> None:
        """Load the tuned backends' runtimes; no-op in passthrough.

        Raises:
            ModuleStateError: the module is neither tuned nor in passthrough.
        """
        if isinstance(self._self_handler, PassthroughState):
            return
        if not isinstance(self._self_handler, TunedModule):
            raise ModuleStateError("Module is not tuned. Cannot activate backends.")
        self._self_handler.activate()

    def deactivate(self) -> None:
        """Release the tuned backends' runtimes (sessions, compiled packages); calls then raise
        until :meth:`activate`. No-op unless tuned."""
        if isinstance(self._self_handler, TunedModule):
            self._self_handler.deactivate()

    def _tuned(self) -> TunedModule:
        if not isinstance(self._self_handler, TunedModule):
            raise ModuleStateError(f"Module '{self._self_name}' is not tuned (state: {self.state.name}).")
        return self._self_handler

    # ---------------------------------------------------------------------------------- tuning
    def tune(self, device: str | torch.device | None = None, strategy: TuneStrategy | None = None, dry_run: bool = False) -> None:
        """Pick a backend for every recorded graph spec and switch to ``TUNED``.

        Each graph spec's strategy builds candidates on ``device``, checks them against the
        module's own forward on the recorded samples and keeps one (see
        :class:`~aitune_triton.strategies.TuneStrategy`). The module's own forward runs while
        tuning and nothing is recorded; the state is restored when a backend raises. Progress
        goes to stderr.

        Args:
            device: Device to tune for; default :attr:`device`.
            strategy: Strategy for graph specs the constructor gave none for.
            dry_run: Print per graph spec the strategy, candidate backends, input shapes and cache
                directory; change no state and write no artifact.

        Raises:
            NoSamplesError: (a ValueError) no call was recorded.
            AlreadyTunedError: (a ValueError) the module is already tuned.
            InvalidArgumentError: (a ValueError) ``strategies`` names unknown graph specs, or ``device``
                is invalid or holds no data (``meta``).
            RecordingError: (a ValueError) ``dynamic_shapes`` names an input path no graph spec has,
                or a graph spec's calls returned inconsistent outputs.
            StrategyCountError: (a RuntimeError) fewer ``strategies`` than graph specs.
            TuningError: no candidate passed for some graph spec; the module keeps its state.
        """
        if isinstance(self._self_handler, TunedModule):
            raise AlreadyTunedError(
                f"Module: '{self._self_name}' has already been tuned. Reset it to do it again "
                "(enable_recording(force=True) or enable_passthrough(force=True))."
            )
        if not len(self._self_recorder):
            raise NoSamplesError(f"Module: '{self._self_name}' has not recorded any samples. Cannot tune it.")
        unused = self._self_recorder.declared_paths_unused()
        if unused:
            known = sorted({t.path for g in self.graph_specs for t in g.inputs})
            raise RecordingError(f"dynamic_shapes: {unused} match no tensor input of any graph spec; tensor inputs: {known}")
        device = checked_device(device) or self.device
        plan = plan_strategies(self._self_recorder.graph_specs(), self._self_strategies, self._self_strategy, strategy)
        if strategy is not None and all(chosen is not strategy for _, chosen in plan):
            warnings.warn(
                f"Module '{self._self_name}': the strategy passed to tune() is not used; the constructor's strategy "
                "or strategies take precedence (AITune Module API).",
                stacklevel=2,
            )
        if dry_run:
            self._print_plan(plan, device)
            return
        if self.__wrapped__.training:
            warnings.warn(
                f"Module '{self._self_name}' is in training mode; backends are checked against eager in this mode. "
                "Call .eval() before tuning an inference module.",
                stacklevel=2,
            )
        workdir = Path(tempfile.mkdtemp(prefix=f"{self._self_name}-", dir=self._cache_root()))
        self._self_tuning = True
        try:
            with progress(f"Tuning '{self._self_name}'") as log:
                tuned = tune_graphs(
                    self.__wrapped__,
                    self._self_forward,
                    self._self_signature,
                    self._self_recorder,
                    plan,
                    device,
                    workdir,
                    log,
                    pad_values=self._self_pad_values,
                )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            self._self_tuning = False
        self._self_handler = TunedModule(self._self_name, self._self_signature, tuned, self._self_strict, self._self_fallback)
        self._offload_weights()
        for entry in tuned:  # the tuning report, as `aitune-triton describe` prints it again
            if entry.report is not None:
                console.print(report_table(entry.report, title=f"'{self._self_name}' {entry.report.graph}: {entry.report.strategy}"))

    def _offload_weights(self) -> None:
        tuned = self._self_handler
        if self._self_offload is None or self._self_fallback is not None or not self._self_strict:
            return
        if isinstance(tuned, TunedModule) and tuned.ahead_of_time:
            self._self_offloaded_from = self.device
            self.__wrapped__.to(self._self_offload)

    def _print_plan(self, plan: list[tuple[GraphSpec, TuneStrategy]], device: torch.device) -> None:
        cache = self._self_cache_dir or default_cache_dir()
        console.print(f"Dry run for '{self._self_name}' on {device} (cache: {cache})", markup=False)
        for graph, strategy in plan:
            shapes = ", ".join(f"{t.path}: {list(t.min_shape)}..{list(t.max_shape)}" for t in graph.inputs)
            console.print(f"  {graph.name}: {strategy.describe()}; inputs {shapes}", markup=False)
