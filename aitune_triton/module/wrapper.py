"""Module: a transparent proxy of a torch module that records, tunes and dispatches its calls."""

from __future__ import annotations

import os
import tempfile
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.utils._pytree as pytree
import wrapt

from aitune_triton._progress import console, progress
from aitune_triton.errors import AlreadyTunedError, InvalidNameError, ModuleStateError, NoSamplesError
from aitune_triton.module.passthrough import PassthroughState
from aitune_triton.module.recording import Recorder, RecordingState
from aitune_triton.module.spec import ForwardSignature, GraphSpec, flatten_call
from aitune_triton.module.state import ModuleState
from aitune_triton.module.tuned import TunedGraph, TunedModule
from aitune_triton.names import sanitize_name
from aitune_triton.strategies import TuneContext, TuneStrategy, default_strategy

__all__ = ["Module", "STATE_DICT_TYPE", "default_cache_dir"]

STATE_DICT_TYPE = "aitune_triton.Module"
STATE_DICT_FORMAT_VERSION = 1

_LIVE: "weakref.WeakValueDictionary[str, Module]" = weakref.WeakValueDictionary()


def default_cache_dir() -> Path:
    """Where tuning writes artifacts: ``$AITUNE_TRITON_CACHE_DIR``, else ``$XDG_CACHE_HOME/aitune_triton``,
    else ``~/.cache/aitune_triton``."""
    if os.environ.get("AITUNE_TRITON_CACHE_DIR"):
        return Path(os.environ["AITUNE_TRITON_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "aitune_triton"


def _claim_name(name: str, module: "Module") -> None:
    holder = _LIVE.get(name)
    if holder is not None and holder is not module:
        raise InvalidNameError(
            f"name: a live Module is already named {name!r}; its tuned artifacts and exports would be overwritten. "
            "Give this one another name (Module(m, name='...')) or drop the other one first."
        )
    _LIVE[name] = module


class Module(wrapt.ObjectProxy):
    """Wraps a ``torch.nn.Module`` and behaves like it, while recording, tuning and dispatching calls.

    Attribute access, ``isinstance``, ``parameters()``, ``.to()``, ``[]``, ``len`` and iteration go
    to the wrapped module. Calls go through the current state (:class:`ModuleState`): ``INIT``
    (the first call starts recording), ``RECORDING`` (calls run eagerly and are recorded into graph
    specs), ``PASSTHROUGH`` (calls run eagerly, nothing recorded) or ``TUNED`` (each call runs on
    the backend chosen for its graph spec).

    Args:
        module: The module to wrap.
        name: Name of the tuned module, used for cache and Triton model names; sanitized
            (characters outside ``[A-Za-z0-9_.-]`` become ``_``). Defaults to the class name.
        strategy: Strategy for every graph spec without an entry in ``strategies``.
        strategies: Per graph spec strategies: a list in graph spec order, or a dict keyed by
            graph spec name (``"graph_0"``).
        max_samples: Recorded calls kept per graph spec.
        strict: Whether non-tensor argument values are part of the graph spec key.
        cache_dir: Where tuning writes artifacts (default :func:`default_cache_dir`).

    Raises:
        TypeError: ``module`` is not a ``torch.nn.Module``.
        InvalidNameError: ``name`` is empty, only dots, or used by another live Module.

    Strategy precedence for a graph spec: its entry in the constructor's ``strategies``, then the
    constructor's ``strategy``, then the ``strategy`` passed to :meth:`tune`, then
    :func:`~aitune_triton.strategies.default_strategy` (constructor choices beat ``tune()``'s, as
    the AITune Module API documents).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        name: str | None = None,
        strategy: TuneStrategy | None = None,
        strategies: Sequence[TuneStrategy] | Mapping[str, TuneStrategy] | None = None,
        *,
        max_samples: int = 32,
        strict: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ):
        if not isinstance(module, torch.nn.Module) or isinstance(module, Module):
            raise TypeError(
                f"module: expected a torch.nn.Module that is not already wrapped, got {type(module).__name__}"
            )
        super().__init__(module)
        self._self_name = sanitize_name(name if name is not None else type(module).__name__)
        _claim_name(self._self_name, self)
        self._self_strategy = strategy
        self._self_strategies = strategies
        self._self_strict = strict
        self._self_max_samples = max_samples
        self._self_cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._self_signature = ForwardSignature.from_callable(module.forward)
        self._self_recorder = Recorder(self._self_signature, max_samples, strict)
        self._self_handler: Any = None  # None means INIT
        self._self_tuning = False

    # ----------------------------------------------------------------------------------- calls
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.__wrapped__
        if self._self_tuning:
            return module(*args, **kwargs)
        if self._self_handler is None:
            self._self_handler = RecordingState(self._self_recorder)
        return self._self_handler(module, args, kwargs)

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
        """Graph specs in the order first seen (recorded ones; the tuned ones after loading).

        Raises:
            NoSamplesError: nothing was recorded and the module is not tuned.
        """
        if len(self._self_recorder):
            return self._self_recorder.graph_specs()
        if isinstance(self._self_handler, TunedModule):
            return [g.spec for g in self._self_handler.graphs]
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
            ModuleStateError: the module is tuned and ``force`` is False.
        """
        self._reset_if_tuned(force)
        self._self_handler = RecordingState(self._self_recorder)

    def enable_passthrough(self, force: bool = False) -> None:
        """Run calls on the original module and record nothing.

        Args:
            force: From ``TUNED``, release the tuned backends (and recorded calls).

        Raises:
            ModuleStateError: the module is tuned and ``force`` is False.
        """
        self._reset_if_tuned(force)
        self._self_handler = PassthroughState()

    def _reset_if_tuned(self, force: bool) -> None:
        if isinstance(self._self_handler, TunedModule):
            if not force:
                raise ModuleStateError("Module is already tuned. Use force=True to reset tuned module.")
            self._self_handler.deactivate()
            self._self_recorder = Recorder(self._self_signature, self._self_max_samples, self._self_strict)

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
    def _strategy_for(self, index: int, graph: GraphSpec, strategy: TuneStrategy | None) -> TuneStrategy:
        strategies = self._self_strategies
        if isinstance(strategies, Mapping):
            unknown = sorted(set(strategies) - {g.name for g in self.graph_specs})
            if unknown:
                known = ", ".join(f"{g.name} ({g.description})" for g in self.graph_specs)
                raise ValueError(f"strategies: unknown graph specs {unknown}; known graph specs: {known}")
            if graph.name in strategies:
                return strategies[graph.name]
        elif strategies is not None:
            if len(strategies) < len(self.graph_specs):
                described = "\n".join(f"  {g.name}: {g.description}" for g in self.graph_specs)
                raise ModuleStateError(
                    f"strategies: {len(strategies)} given for {len(self.graph_specs)} captured graph specs:\n{described}"
                )
            return strategies[index]
        return self._self_strategy or strategy or default_strategy()

    def tune(self, device: str | torch.device | None = None, strategy: TuneStrategy | None = None, dry_run: bool = False) -> None:
        """Pick a backend for every recorded graph spec and switch to ``TUNED``.

        Each graph spec's strategy builds candidates on ``device``, checks them against eager on
        the recorded samples and keeps one (see :class:`~aitune_triton.strategies.TuneStrategy`).
        The original module runs eagerly while tuning and nothing is recorded. Progress goes to
        stderr.

        Args:
            device: Device to tune for; default :attr:`device`.
            strategy: Strategy for graph specs the constructor gave none for.
            dry_run: Print what would be built per graph spec and change nothing.

        Raises:
            NoSamplesError: no call was recorded.
            AlreadyTunedError: (a ValueError) the module is already tuned.
            ValueError: ``strategies`` names unknown graph specs.
            TuningError: no candidate passed for some graph spec; the module keeps its state.
        """
        if isinstance(self._self_handler, TunedModule):
            raise AlreadyTunedError(f"Module: '{self._self_name}' has already been tuned. Reset it to do it again.")
        if not len(self._self_recorder):
            raise NoSamplesError(f"Module: '{self._self_name}' has not recorded any samples. Cannot tune it.")
        device = torch.device(device) if device is not None else self.device
        graphs = self._self_recorder.graph_specs()
        plan = [(g, self._strategy_for(i, g, strategy)) for i, g in enumerate(graphs)]
        if dry_run:
            self._print_plan(plan, device)
            return
        if self.__wrapped__.training:
            warnings.warn(
                f"Module '{self._self_name}' is in training mode; backends are checked against eager in this mode. "
                "Call .eval() before tuning an inference module.",
                stacklevel=2,
            )
        root = self._self_cache_dir or default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{self._self_name}-", dir=root))
        tuned: list[TunedGraph] = []
        self._self_tuning = True
        try:
            with progress(f"Tuning '{self._self_name}'") as log:
                for graph, graph_strategy in plan:
                    log(f"{graph.name} ({graph.num_calls} calls): {graph_strategy.describe()}")
                    context = self._tune_context(graph, device, workdir / graph.name, log)
                    backend, report = graph_strategy.tune(context)
                    log(f"{graph.name}: chose {backend.name}")
                    tuned.append(TunedGraph(graph, backend, report))
        except BaseException:
            for entry in tuned:
                entry.backend.deactivate()
            raise
        finally:
            self._self_tuning = False
        self._self_handler = TunedModule(self._self_name, self._self_signature, tuned, self._self_strict)

    def _tune_context(self, graph: GraphSpec, device: torch.device, workdir: Path, log) -> TuneContext:
        def on_device(sample):
            args, kwargs = pytree.tree_map(
                lambda leaf: leaf.to(device) if isinstance(leaf, torch.Tensor) else leaf, (sample.args, sample.kwargs)
            )
            return flatten_call(self._self_signature, args, kwargs, self._self_strict)

        samples = [on_device(s) for s in self._self_recorder.samples(graph)]
        example = on_device(self._self_recorder.largest_sample(graph))
        return TuneContext(self.__wrapped__, self._self_signature, graph, samples, example, workdir, device, log)

    def _print_plan(self, plan: list[tuple[GraphSpec, TuneStrategy]], device: torch.device) -> None:
        cache = self._self_cache_dir or default_cache_dir()
        console.print(f"Dry run for '{self._self_name}' on {device} (cache: {cache})", markup=False)
        for graph, strategy in plan:
            shapes = ", ".join(f"{t.path}: {list(t.min_shape)}..{list(t.max_shape)}" for t in graph.inputs)
            console.print(f"  {graph.name}: {strategy.describe()}; inputs {shapes}", markup=False)

    # ----------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """Describe the tuned module as JSON-compatible data (artifact paths are absolute).

        Returns:
            ``{"type": "aitune_triton.Module", "format_version", "name", "module_class",
            "signature", "strict", "graphs": [...]}`` with, per graph spec, the spec, the
            backend description and the tuning report.

        Raises:
            ModuleStateError: the module is not tuned.
        """
        tuned = self._tuned()
        wrapped = self.__wrapped__
        return {
            "type": STATE_DICT_TYPE,
            "format_version": STATE_DICT_FORMAT_VERSION,
            "name": self._self_name,
            "module_class": f"{type(wrapped).__module__}.{type(wrapped).__qualname__}",
            "signature": self._self_signature.to_dict(),
            "strict": self._self_strict,
            "graphs": tuned.to_dict(),
        }

    state_dict = to_dict

    @staticmethod
    def is_state_dict_valid(state_dict: Any) -> bool:
        """Whether ``state_dict`` looks like the output of :meth:`to_dict`."""
        return (
            isinstance(state_dict, Mapping)
            and state_dict.get("type") == STATE_DICT_TYPE
            and isinstance(state_dict.get("name"), str)
            and isinstance(state_dict.get("graphs"), list)
            and isinstance(state_dict.get("signature"), list)
        )

    @classmethod
    def from_dict(cls, module: torch.nn.Module, state_dict: Mapping[str, Any], device: str | torch.device | None = None) -> "Module":
        """Build a ``TUNED`` Module around ``module`` from :meth:`to_dict` output, without tuning.

        Raises:
            ValueError: ``state_dict`` is not in the format of :meth:`to_dict` ("Invalid dictionary format").
        """
        if not cls.is_state_dict_valid(state_dict):
            raise ValueError("Invalid dictionary format")
        wrapped = cls(module, name=state_dict["name"], strict=state_dict.get("strict", True))
        wrapped.load_tuned(state_dict, device)
        return wrapped

    def load_tuned(self, state_dict: Mapping[str, Any], device: str | torch.device | None = None) -> None:
        """Switch this Module to ``TUNED`` with the backends described by ``state_dict``.

        Raises:
            ValueError: invalid ``state_dict``.
            ModuleStateError: the module is already tuned.
        """
        if not self.is_state_dict_valid(state_dict):
            raise ValueError("Invalid dictionary format")
        if isinstance(self._self_handler, TunedModule):
            raise ModuleStateError("Module is already tuned. Use enable_recording(force=True) to reset it first.")
        signature = ForwardSignature.from_dict(state_dict["signature"])
        if signature != self._self_signature:
            raise ValueError(
                f"state_dict: recorded for forward{signature!r}, but this module's forward is {self._self_signature!r}"
            )
        self._self_handler = TunedModule.from_dict(
            self._self_name,
            signature,
            state_dict["graphs"],
            self.__wrapped__,
            torch.device(device) if device is not None else None,
            state_dict.get("strict", True),
        )

