"""The eager backend: the original module, unchanged. The reference every other backend is checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.utils._pytree as pytree

from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.backends.options import BackendOptions
from aitune_triton.spec import CallStructure

__all__ = ["EagerBackend", "EagerOptions"]


@dataclass(frozen=True)
class EagerOptions(BackendOptions):
    """The eager backend has no options (stored as ``{}``)."""

    owner = "eager"


class EagerBackend(Backend):
    """Runs the original module's forward (without hooks: they run around the tuned call).

    Has no artifact, so it cannot be exported to Triton.
    """

    name = "eager"
    bakes_constants = False
    ahead_of_time = False

    options_type = EagerOptions

    def __init__(self) -> None:
        super().__init__()
        self.typed_options = EagerOptions()
        self._forward: Callable[..., Any] | None = None

    def _build(self, context: BuildContext) -> None:
        self._forward = context.run

    def _restore(self, context: LoadContext) -> None:
        self._forward = context.run

    def _load(self) -> None:
        pass

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        return self.reference(self._forward, call)  # type: ignore[arg-type]

    @staticmethod
    def reference(forward: Callable[..., Any], call: CallStructure) -> list[torch.Tensor]:
        """Run ``forward`` (a module or its forward) on ``call``; return tensor output leaves in flattening order."""
        output = forward(*call.args, **call.kwargs)
        if isinstance(output, torch.Tensor):  # a lone tensor: its own only leaf, without a pytree walk
            return [output]
        return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]
