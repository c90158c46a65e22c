"""What a strategy tunes: one graph spec, its module and recorded calls (:class:`TuneContext`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from aitune_triton.backends import BuildContext
from aitune_triton.spec import CallStructure, ForwardSignature, GraphSpec

__all__ = ["TuneContext"]


@dataclass
class TuneContext:
    """Everything a strategy needs to tune one graph spec.

    Attributes:
        module: The original module (not the wrapper).
        signature: Its forward signature.
        graph: The graph spec.
        samples: Recorded calls of the graph spec, flattened, on ``device``.
        example: The call used for export and compilation (the largest recorded one).
        workdir: Directory for artifacts; each candidate gets a subdirectory.
        device: Device to tune for.
        log: Receives one-line progress messages.
        forward: The module's own forward without hooks (default ``module.forward``); candidates
            capture it and eager references run it.
        batch_declared: Whether the batch axis was declared with ``BatchDim`` (its max then caps
            the batch size sweep).
    """

    module: torch.nn.Module
    signature: ForwardSignature
    graph: GraphSpec
    samples: list[CallStructure]
    example: CallStructure
    workdir: Path
    device: torch.device
    log: Callable[[str], None] = field(default=lambda message: None)
    forward: Callable[..., Any] | None = None
    batch_declared: bool = False

    @property
    def run(self) -> Callable[..., Any]:
        """The forward eager references run (:attr:`forward`, else ``module.forward``)."""
        return self.forward or self.module.forward

    def build_context(self, workdir: Path) -> BuildContext:
        """What a candidate backend needs to build for this graph spec, its artifacts in ``workdir``."""
        return BuildContext(
            self.module, self.signature, self.graph, self.example, workdir, self.device, self.log, self.forward, self.samples,
        )  # fmt: skip

    def with_dims(self, dims: dict[str, Any]) -> "TuneContext":
        """A copy whose graph spec is a copy of :attr:`graph` with ``dims`` (this one's is not changed):
        the candidates are built for a widened batch range on it."""
        return dataclasses.replace(self, graph=dataclasses.replace(self.graph, dims=dims))
