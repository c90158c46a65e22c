"""Module: a transparent proxy of a torch module that records, tunes and dispatches its calls.

This module holds the proxy itself (construction, calls, copies, properties, ``from_dict``); its
state transitions and tuning are :mod:`aitune_triton.module.lifecycle`, its tuned description in
and out :mod:`aitune_triton.module.persistence` (mixins of :class:`Module`).
"""

from __future__ import annotations

import copy
import os
import shutil
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, SupportsIndex

import torch
import wrapt

from aitune_triton.errors import ArgumentTypeError, InvalidArgumentError, ModuleStateError, NoSamplesError
from aitune_triton.module.description import STATE_DICT_KEY, STATE_DICT_TYPE, TunedDescription
from aitune_triton.module.dims import DimDecl, check_declared_parameters, validate_dynamic_shapes
from aitune_triton.module.lifecycle import ModuleLifecycle, default_cache_dir
from aitune_triton.module.padding import validate_pad_values
from aitune_triton.module.persistence import ModulePersistence, described
from aitune_triton.module.recording import Recorder, RecordingState
from aitune_triton.module.samples import SampleStore
from aitune_triton.module.registry import claim_name, unique_default_name
from aitune_triton.module.routing import StateForward, live_wrapper_of, own_forward, register_wrapper, route, unroute
from aitune_triton.spec import ForwardSignature, GraphSpec
from aitune_triton.module.state import ModuleState
from aitune_triton.module.tuned import TunedGraph, TunedModule
from aitune_triton.module.tuning import StrategiesArg
from aitune_triton.names import sanitize_name
from aitune_triton.strategies import TuneStrategy
from aitune_triton.strategies.evaluation import described as described_backend
from aitune_triton.strategies.report import graph_summary

__all__ = ["Module", "STATE_DICT_KEY", "STATE_DICT_TYPE", "default_cache_dir"]

_OFFLOAD_TARGETS = (None, "cpu", "meta")


def _sanitized_with_warning(name: str) -> str:
    cleaned = sanitize_name(name)
    if cleaned != name:
        warnings.warn(f"name: {name!r} is used as {cleaned!r} (file and Triton model names allow [A-Za-z0-9_.-]).", stacklevel=3)
    return cleaned


def _remove_samples(samples_dir: Path) -> None:
    shutil.rmtree(samples_dir, ignore_errors=True)


class Module(ModuleLifecycle, ModulePersistence, wrapt.ObjectProxy):
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
        for buffer in self.__wrapped__.buffers():
            return buffer.device
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

    def summary(self) -> str:
        """A short text on what tuning kept, for people: a header line, then per graph spec the
        backend kept (with its options), its precision, its latency at the typical recorded shape
        as a ratio to eager's, and one phrase on why (the decision's rule), with how many other
        candidates were too slow, pruned, failed or unavailable. Prints nothing.

        Before tuning it says the state and how many graph specs were recorded. The full report
        per graph spec: ``tuned_graphs[i].report`` (or ``aitune-triton describe CHECKPOINT``).

        Returns:
            The text, lines separated by ``\\n`` (no trailing newline).
        """
        if not isinstance(self._self_handler, TunedModule):
            recorded = len(self._self_recorder.graph_specs()) if len(self._self_recorder) else 0
            return f"'{self._self_name}': {self.state.name}, {recorded} graph spec(s) recorded, not tuned"
        graphs = self._self_handler.graphs
        lines = [f"'{self._self_name}': TUNED, {len(graphs)} graph spec(s)"]
        for graph in graphs:
            shown = described_backend(graph.backend)
            lines.append("  " + (graph_summary(graph.report, shown) if graph.report else f"{graph.spec.name}: {shown} (no tuning report)"))
        return "\n".join(lines)

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
        description = described(state_dict)
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
