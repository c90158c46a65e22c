"""The eager backend: the original module, unchanged. The reference every other backend is checked against."""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from aitune_triton.backends.base import Backend, BuildContext, LoadContext
from aitune_triton.module.spec import CallStructure

__all__ = ["EagerBackend"]


class EagerBackend(Backend):
    """Runs the original module's forward. Has no artifact, so it cannot be exported to Triton."""

    name = "eager"
    bakes_constants = False

    def __init__(self) -> None:
        super().__init__()
        self._module: torch.nn.Module | None = None

    def _build(self, context: BuildContext) -> None:
        self._module = context.module

    def _restore(self, context: LoadContext) -> None:
        self._module = context.module

    def _load(self) -> None:
        pass

    def _infer(self, call: CallStructure) -> list[torch.Tensor]:
        return self.reference(self._module, call)  # type: ignore[arg-type]

    @staticmethod
    def reference(module: torch.nn.Module, call: CallStructure) -> list[torch.Tensor]:
        """Run ``module`` on ``call`` and return its tensor output leaves in flattening order."""
        output = module(*call.args, **call.kwargs)
        return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]
