"""Module: a transparent proxy of a torch module that records, tunes and dispatches its calls."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, SupportsIndex

import torch
import wrapt

from aitune_triton._progress import console, progress
from aitune_triton.errors import (
    AITuneTritonError,
    AlreadyTunedError,
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidStateDictError,
    ModuleStateError,
    NoSamplesError,
    RecordingError,
)
from aitune_triton.module.description import (
    INVALID_STATE_DICT,
    STATE_DICT_FORMAT_VERSION,
    STATE_DICT_KEY,
    STATE_DICT_TYPE,
    TunedDescription,
    state_dict_problem,
)
from aitune_triton.module.dims import DimDecl, check_declared_parameters, validate_dynamic_shapes
from aitune_triton.module.padding import validate_pad_values
from aitune_triton.module.passthrough import PassthroughState
from aitune_triton.module.recording import Recorder, RecordingState
from aitune_triton.module.samples import SampleStore
from aitune_triton.module.registry import claim_name, release_name, unique_default_name
from aitune_triton.module.routing import StateForward, live_wrapper_of, original_type, own_forward, register_wrapper, route, unroute
from aitune_triton.spec import ForwardSignature, GraphSpec
from aitune_triton.module.state import ModuleState
from aitune_triton.module.tuned import TunedGraph, TunedModule
from aitune_triton.module.tuning import StrategiesArg, plan_strategies, tune_graphs
from aitune_triton.strategies.report import report_table
from aitune_triton.names import sanitize_name
from aitune_triton.strategies import TuneStrategy

__all__ = ["Module", "STATE_DICT_KEY", "STATE_DICT_TYPE", "default_cache_dir"]

_OFFLOAD_TARGETS = (None, "cpu", "meta")


def default_cache_dir() -> Path:
    """Where tuning writes artifacts and recorded calls: ``$AITUNE_TRITON_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/aitune_triton``, else ``~/.cache/aitune_triton``."""
    if os.environ.get("AITUNE_TRITON_CACHE_DIR"):
        return Path(os.environ["AITUNE_TRITON_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "aitune_triton"


def _sanitized_with_warning(name: str) -> str:
    cleaned = sanitize_name(name)
    if cleaned != name:
        warnings.warn(f"name: {name!r} is used as {cleaned!r} (file and Triton model names allow [A-Za-z0-9_.-]).", stacklevel=3)
    return cleaned


def _remove_samples(samples_dir: Path) -> None:
    shutil.rmtree(samples_dir, ignore_errors=True)


class Module(wrapt.ObjectProxy):
    """Wraps a ``torch.nn.Module`` and behaves like it, while recording, tuning and dispatching calls.

    Attribute access, ``isinstance``, ``parameters()``, ``named_modules()``, ``[]``, ``len`` and
    iteration go to the wrapped module; ``.to()``, ``.eval()``, ``.train()``, ``.cuda()``... return
    this wrapper. As in AITune, which patches ``module.forward``, every call of the module's
    forward goes through the current state (:class:`ModuleState`): calls of the wrapper, of the
    bare module object, and ``self(...)`` / ``self.forward(...)`` inside the model's own methods
    (``generate()``, a prefill/decode loop). ``nn.Module.__call__`` runs the forward pre-hooks and
    hooks once around each call; ``forward(...)`` called directly skips the hooks, as in torch:

    * ``INIT``: the first call starts recording (``Module(m)(x)`` then ``tune()`` works);
    * ``RECORDING``: the forward runs and the call is recorded into its graph spec;
    * ``PASSTHROUGH``: the forward runs, nothing is recorded;
    * ``TUNED``: the call runs on the backend chosen for its graph spec.

    A ``self(...)`` made inside a call that the state is running (the module's forward calling
    itself) is part of that call and runs the module's own forward. Backends capture the module's
    own forward, without hooks. The routing is a subclass of the module's class swapped in while
    the wrapper lives (same name; ``isinstance`` holds, ``type(m) is Cls`` does not); nothing is
    added to the module's ``__dict__``. The forward is read once, when wrapping: set
    ``model.forward = f`` (a ``functools.partial``, an accelerate hook) before wrapping; replacing
    it on a wrapped module raises :class:`~aitune_triton.errors.ModuleStateError`.

    Copying or pickling the wrapper, or the bare module, gives a copy of the module of its
    original class, which runs eagerly; the tuned state travels with :func:`aitune_triton.save` / :func:`aitune_triton.load` or
    :meth:`to_dict` / :meth:`from_dict`.

    Args:
        module: The module to wrap.
        name: Name of the tuned module, used for cache and Triton model names; sanitized
            (characters outside ``[A-Za-z0-9_.-]`` become ``_``). A name given here must not be
            held by another live Module. Default: the class name, with ``_2``, ``_3``... appended
            when another live Module holds it.
        strategy: Strategy for every graph spec without an entry in ``strategies``.
        strategies: Per graph spec strategies: a list in graph spec order, or a dict keyed by
            graph spec name (``"graph_0"``), :class:`GraphSpec` or its input structure key.
        max_samples: Recorded calls kept per graph spec (on disk, under the cache directory).
        strict: Whether non-tensor argument values are part of the graph spec key. With
            ``strict=False`` a tuned call whose constants differ from the recorded ones runs on the
            module's own forward (with a warning), since exported backends hold the recorded values.
        fallback: ``"eager"``: a tuned call matching no graph spec runs on the module's own forward
            with one warning per new input structure. None (default): it raises
            :class:`~aitune_triton.errors.GraphSpecMismatchError`.
        dynamic_shapes: Declared dims per tensor input, overriding inference. Per axis:
            ``{"input_ids": {0: BatchDim(1, 32), 1: DynamicDim("seq", 1, 512)}}`` (axes not listed
            are inferred); or full rank, one entry per axis as NVIDIA AITune writes it:
            ``{"x": (BatchDim("batch", min=1, max=32), 3, DynamicDim("side", 224, 256), None)}``,
            a dim for a dynamic axis, an int for a fixed size, None for an axis left to inference.
            An input is named by its leaf path, dotted (``"inputs.pixels"``) or as a tuple
            (``("inputs", "pixels")``). Axes declared with one name must have equal sizes. A
            declared range is what the backends accept, even where the recorded calls cover less.
            A recorded call that breaks a declared rank, fixed size or range raises
            :class:`~aitune_triton.errors.RecordingError` and is not run.
        offload: After tuning, when every chosen backend is ahead of time (its artifact holds its
            own weights), move the module's weights to ``"meta"`` (frees their memory) or
            ``"cpu"``; None (default) leaves them. Not done with ``fallback="eager"`` or
            ``strict=False``, which may run the module's own forward.
        cache_dir: Where tuning writes artifacts and recorded calls (default :func:`default_cache_dir`).
        pad_values: Pad value per tensor input on a dynamic axis besides the batch, by leaf path
            as in ``dynamic_shapes``: ``{"input_ids": tokenizer.pad_token_id, "attention_mask": 0}``.
            Tuning pads recorded calls with them and keeps padded batching (several requests of
            different lengths served as one batch) only where no output changed; 0/1 masks, and
            integer inputs beside a mask, get 0 proposed (see :mod:`aitune_triton.module.padding`).

    Raises:
        ArgumentTypeError: (a TypeError) ``module`` is not a ``torch.nn.Module`` (or is a wrapper).
        InvalidNameError: (a ValueError) ``name`` is empty, only dots, or used by another live Module.
        InvalidArgumentError: (a ValueError) ``fallback``, ``offload``, ``pad_values`` or ``dynamic_shapes`` is
            invalid (also a path whose first part is no parameter of the forward), or ``module``
            is wrapped by a live Module of another name. Wrapping it again
            under the same name (re-running a notebook cell) retires the older wrapper instead.

    Strategy precedence for a graph spec: its entry in the constructor's ``strategies``, then the
    constructor's ``strategy``, then the ``strategy`` passed to :meth:`tune`, then
    :func:`~aitune_triton.strategies.default_strategy`. The AITune Module API documents that
    constructor strategies take precedence over ``tune()``'s; this follows the documentation.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        name: str | None = None,
        strategy: TuneStrategy | None = None,
        strategies: StrategiesArg = None,
        *,
        max_samples: int = 32,
        strict: bool = True,
        fallback: str | None = None,
        dynamic_shapes: Mapping[Any, Any] | None = None,
        offload: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        pad_values: Mapping[Any, Any] | None = None,
    ):
        if not isinstance(module, torch.nn.Module) or isinstance(module, Module):
            raise ArgumentTypeError(
                f"module: expected a torch.nn.Module that is not already wrapped, got {type(module).__name__}"
            )
        if fallback not in (None, "eager"):
            raise InvalidArgumentError(f"fallback: expected None or 'eager', got {fallback!r}")
        if offload not in _OFFLOAD_TARGETS:
            raise InvalidArgumentError(f"offload: expected one of {list(_OFFLOAD_TARGETS)}, got {offload!r}")
        declared = validate_dynamic_shapes(dynamic_shapes)
        forward = own_forward(module)
        signature = ForwardSignature.from_callable(forward)
        check_declared_parameters(
            declared,
            [p.name for p in signature.parameters],
            next((p.name for p in signature.parameters if p.kind == "VAR_KEYWORD"), None),
            signature.describe(),
        )
        pad_values = validate_pad_values(pad_values, [p.name for p in signature.parameters])
        SampleStore(max_samples)  # validates max_samples now, not at the first call
        previous = live_wrapper_of(module)
        if name is None:
            name = previous.name if previous is not None else unique_default_name(sanitize_name(type(module).__name__))
        else:
            name = _sanitized_with_warning(name)
        if previous is not None and previous.name != name:
            raise InvalidArgumentError(
                f"module: this {type(module).__name__} is already wrapped by the live Module '{previous.name}'. Use that "
                "wrapper, or delete it first; a torch module can have one wrapper at a time."
            )
        super().__init__(module)
        claim_name(name, self, replacing=previous)
        if previous is not None:  # the same cell run again in a notebook, say: this wrapper takes over
            previous._self_retired = True
            warnings.warn(
                f"Module '{name}' wraps a torch module that an older Module '{name}' wrapped; the older one is retired "
                "and raises if called.",
                stacklevel=2,
            )
        self._self_name = name
        self._self_strategy = strategy
        self._self_strategies = strategies
        self._self_strict = strict
        self._self_fallback = fallback
        self._self_offload = offload
        self._self_offloaded_from: torch.device | None = None
        self._self_cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._self_pad_values = pad_values
        self._self_forward = forward
        self._self_signature = signature
        # Created on the first recorded call; removed with the wrapper.
        self._self_samples_dir = (self._self_cache_dir or default_cache_dir()) / f"{name}-samples-{uuid.uuid4().hex[:12]}"
        self._self_recorder = self._new_recorder(max_samples, declared)
        self._self_handler: Any = None  # None means INIT
        self._self_tuning = False
        self._self_retired = False
        self._self_router = StateForward(self, module)
        register_wrapper(module, self)
        route(module)
        weakref.finalize(self, _remove_samples, self._self_samples_dir)
        weakref.finalize(self, unroute, weakref.ref(module))

    def _cache_root(self) -> Path:
        root = self._self_cache_dir or default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _new_recorder(self, max_samples: int, declared: Mapping[str, Mapping[int, DimDecl]]) -> Recorder:
        return Recorder(self._self_signature, max_samples, self._self_strict, self._self_samples_dir, declared)

    # ----------------------------------------------------------------------------------- calls
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._self_retired:
            raise ModuleStateError(
                f"Module '{self._self_name}' was replaced by a newer Module wrapping the same torch module; call that one."
            )
        return self.__wrapped__(*args, **kwargs)  # nn.Module.__call__: hooks around the routed forward

    def __copy__(self) -> torch.nn.Module:
        """A shallow copy of the wrapped module: copies are eager (tuned state travels by save/load)."""
        return copy.copy(self.__wrapped__)

    def __deepcopy__(self, memo: dict) -> torch.nn.Module:
        """A deep copy of the wrapped module, eager (so ``copy.deepcopy(parent)`` works too)."""
        return copy.deepcopy(self.__wrapped__, memo)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        """Pickles as the wrapped module (``torch.save(parent)`` works); tuned state travels by save/load."""
        return self.__wrapped__.__reduce_ex__(protocol)

    def _dispatch(self, args: tuple, kwargs: dict) -> Any:
        """Route one forward call (hooks already applied) to the current state."""
        if self._self_tuning:
            return self._self_forward(*args, **kwargs)
        if self._self_handler is None:
            self._self_handler = RecordingState(self._self_recorder)
        return self._self_handler(self._self_forward, args, kwargs)

    # ------------------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """Sanitized name of the tuned module."""
        return self._self_name

    @property
    def state(self) -> ModuleState:
        """Current life-cycle state."""
        return ModuleState.INIT if self._self_handler is None else self._self_handler.state

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped ``torch.nn.Module``."""
        return self.__wrapped__

    @property
    def signature(self) -> ForwardSignature:
        """The wrapped module's forward signature."""
        return self._self_signature

    @property
    def device(self) -> torch.device:
        """Device of the module's first parameter (or buffer); CPU when it has neither."""
        for tensor in self.__wrapped__.parameters():
            return tensor.device
        for tensor in self.__wrapped__.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def graph_specs(self) -> list[GraphSpec]:
        """Graph specs in the order first seen: the tuned ones while ``TUNED`` (also after loading),
        else the recorded ones (also while passthrough).

        Raises:
            NoSamplesError: nothing was recorded and the module is not tuned.
        """
        if isinstance(self._self_handler, TunedModule):
            return [g.spec for g in self._self_handler.graphs]
        if len(self._self_recorder):
            return self._self_recorder.graph_specs()
        raise NoSamplesError("Module has not recorded any samples. Cannot collect graph specs.")

    @property
    def tuned_graphs(self) -> list[TunedGraph]:
        """Graph specs with their chosen backends and tuning reports.

        Raises:
            ModuleStateError: the module is not tuned.
        """
        return self._tuned().graphs

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

    def _reinstate(self, successor: "Module") -> None:
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
            InvalidArgumentError: (a ValueError) ``strategies`` names unknown graph specs.
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
        device = torch.device(device) if device is not None else self.device
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

    # ----------------------------------------------------------------------------- persistence
    def _description(self) -> dict[str, Any]:
        tuned = self._self_handler
        if not isinstance(tuned, TunedModule):
            raise ModuleStateError(
                f"Module '{self._self_name}' is not tuned (state: {self.state.name}). Cannot create its state dict; "
                "record calls and call tune() first."
            )
        wrapped = self.__wrapped__
        return {
            "type": STATE_DICT_TYPE,
            "format_version": STATE_DICT_FORMAT_VERSION,
            "name": self._self_name,
            "module_class": f"{original_type(wrapped).__module__}.{original_type(wrapped).__qualname__}",
            "signature": self._self_signature.to_dict(),
            "strict": self._self_strict,
            "graphs": tuned.to_dict(),
        }

    def to_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """Describe the tuned module; nests in a parent's ``state_dict()`` like any submodule.

        Called directly (no destination, no prefix) it returns the tuned description:
        ``{"type": "aitune_triton.Module", "format_version", "name", "module_class", "signature",
        "strict", "graphs": [...]}`` with, per graph spec, the spec, the backend description
        (absolute artifact paths) and the tuning report. ``TunedDescription.from_dict`` (in
        :mod:`aitune_triton.module.description`) checks it and reads it as typed fields.

        Called by a parent's ``state_dict()`` (``torch.nn.Module.state_dict(destination, prefix,
        keep_vars)`` convention) it adds the wrapped module's own entries under ``prefix`` as usual
        and, when tuned, the description under ``prefix + "_aitune_triton"``; a parent's
        ``load_state_dict`` reads it back (see :meth:`_load_from_state_dict`).

        Raises:
            ModuleStateError: called directly on a module that is not tuned.
        """
        if args:  # torch's deprecated positional form: (destination, prefix, keep_vars)
            destination, prefix, keep_vars = (tuple(args) + (destination, prefix, keep_vars)[len(args) :])[:3]
        if destination is None and not prefix:
            return self._description()
        destination = self.__wrapped__.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if isinstance(self._self_handler, TunedModule):
            destination[prefix + STATE_DICT_KEY] = self._description()
        return destination

    state_dict = to_dict

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """``torch.nn.Module.load_state_dict`` hook: takes this Module's tuned description out of a
        parent's state dict (and loads it when not tuned yet), then loads the wrapped module's own
        entries as usual."""
        description = state_dict.pop(prefix + STATE_DICT_KEY, None)
        self.__wrapped__._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if description is not None and not isinstance(self._self_handler, TunedModule):
            self.load_tuned(description)

    @staticmethod
    def is_state_dict_valid(state_dict: Any) -> bool:
        """Whether ``state_dict`` has the structure of :meth:`to_dict` output, checked down to each
        graph spec's tensors and backend (artifact files are checked when loading)."""
        return state_dict_problem(state_dict) is None

    @classmethod
    def from_dict(
        cls,
        module: torch.nn.Module,
        state_dict: Mapping[str, Any] | TunedDescription,
        device: str | torch.device | None = None,
        name: str | None = None,
    ) -> "Module":
        """Build a ``TUNED`` Module around ``module`` from :meth:`to_dict` output, without tuning.

        Args:
            module: The original ``torch.nn.Module``.
            state_dict: Output of :meth:`to_dict`, or it read as a :class:`TunedDescription`
                (artifact paths must still exist).
            device: Device to run on; default the device each backend was tuned for.
            name: Name of the new Module; default the stored name, with ``_2``, ``_3``...
                appended (and a warning) when another live Module holds it.

        Returns:
            A new ``TUNED`` Module.

        Raises:
            InvalidStateDictError: (a ValueError) ``state_dict`` is not in the format of
                :meth:`to_dict`; the message starts with "Invalid dictionary format" and says what
                is wrong.
            UnknownBackendError: (a ValueError) a stored backend is not registered here.
            BackendUnavailableError: a stored backend cannot run on the device here.

        After a failed load ``module`` is as it was: no wrapper made here routes or records its
        calls, and a live Module that wrapped it before still does.
        """
        description = _described(state_dict)
        previous = live_wrapper_of(module)
        if name is None:
            stored = sanitize_name(description.name)
            name = stored if previous is not None and previous.name == stored else unique_default_name(stored)
            if name != stored:
                warnings.warn(f"Module '{stored}' is alive, so this one is named '{name}'.", stacklevel=2)
        wrapped = cls(module, name=name, strict=description.strict)
        try:
            wrapped.load_tuned(description, device)
        except BaseException:
            # A failed load changes nothing: the new wrapper must not keep routing the module (a kept
            # traceback holds it), and an older wrapper of the same name that it retired is put back.
            if previous is not None:
                previous._reinstate(wrapped)
            wrapped._undo_load(None)
            raise
        return wrapped

    def load_tuned(self, state_dict: Mapping[str, Any] | TunedDescription, device: str | torch.device | None = None) -> None:
        """Switch this Module to ``TUNED`` with the backends described by ``state_dict``.

        Raises:
            InvalidStateDictError: (a ValueError) invalid ``state_dict``, or one recorded for another
                forward signature.
            ModuleStateError: the module is already tuned.
        """
        description = _described(state_dict)
        if isinstance(self._self_handler, TunedModule):
            raise ModuleStateError("Module is already tuned. Use enable_recording(force=True) to reset it first.")
        signature = description.forward_signature
        if signature != self._self_signature:
            raise InvalidStateDictError(
                f"state_dict: recorded for a module whose forward takes {signature.describe()}, but this module's "
                f"forward takes {self._self_signature.describe()}. Load it into the module it was tuned from."
            )
        try:
            tuned = TunedModule.from_dict(
                self._self_name,
                signature,
                description.graphs,
                self.__wrapped__,
                torch.device(device) if device is not None else None,
                description.strict,
                self._self_fallback,
                self._self_forward,
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, AITuneTritonError):
                raise
            raise InvalidStateDictError(f"{INVALID_STATE_DICT} ({type(error).__name__}: {error})") from error
        self._self_handler = tuned


def _described(state_dict: Mapping[str, Any] | TunedDescription) -> TunedDescription:
    """``state_dict`` checked and read (:meth:`TunedDescription.from_dict`); a description already read passes.

    Raises:
        InvalidStateDictError: not the output of :meth:`Module.to_dict`.
    """
    return state_dict if isinstance(state_dict, TunedDescription) else TunedDescription.from_dict(state_dict)


def _returning_wrapper(method_name: str) -> Callable[..., Any]:
    def method(self: Module, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.__wrapped__, method_name)(*args, **kwargs)
        return self if result is self.__wrapped__ else result

    method.__name__ = method_name
    method.__doc__ = f"``torch.nn.Module.{method_name}``, returning this wrapper where the module returns itself."
    return method


# torch.nn.Module methods that return ``self``: keep ``m = m.to(device)`` and friends on the wrapper.
for _method in ("to", "cuda", "cpu", "xpu", "type", "float", "double", "half", "bfloat16", "train", "eval",
                "requires_grad_", "apply", "to_empty", "share_memory"):
    setattr(Module, _method, _returning_wrapper(_method))
