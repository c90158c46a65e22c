"""A flat view of a module for exporters: tensors in, tensors out."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Iterator

import torch
import torch.utils._pytree as pytree

from aitune_triton.module.spec import CallStructure, ForwardSignature, GraphSpec

__all__ = ["FlatModule", "export_dynamic_shapes", "quiet_export"]


class FlatModule(torch.nn.Module):
    """Calls ``module`` with one recorded input structure, taking and returning flat tensors.

    ``forward(*tensors)`` takes the tensor leaves of a call in flattening order, puts them back
    into the recorded structure (constants included), calls the module and returns its tensor
    output leaves as a tuple. ``torch.export`` and ``torch.onnx.export`` see only tensors.

    Args:
        module: The original module.
        signature: Its forward signature.
        example: A recorded call of the graph spec; only its structure and constants are kept.
    """

    def __init__(self, module: torch.nn.Module, signature: ForwardSignature, example: CallStructure):
        super().__init__()
        self.module = module
        self._signature = signature
        self._treespec = example.flat.treespec
        self._template = example.flat.template

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        iterator = iter(tensors)
        leaves = [next(iterator) if leaf is None else leaf for leaf in self._template]
        args, kwargs = self._signature.unbind(pytree.tree_unflatten(leaves, self._treespec))
        output = self.module(*args, **kwargs)
        return tuple(leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor))


def export_dynamic_shapes(graph: GraphSpec) -> tuple[tuple[dict[int, Any], ...]] | None:
    """``dynamic_shapes`` for exporting a :class:`FlatModule` of ``graph``.

    Axes that share a dimension name get one ``torch.export.Dim`` bounded by the recorded range.
    The result is wrapped in a 1-tuple because ``FlatModule.forward`` takes ``*tensors``.
    Returns None when every axis is static.
    """
    dims = {
        name: torch.export.Dim(name, min=low, max=max(high, low + 1))
        for name, (low, high) in graph.dims.items()
    }
    per_input = tuple(
        {axis: dims[name] for axis, name in enumerate(spec.dim_names) if name is not None} for spec in graph.inputs
    )
    if not any(per_input):
        return None
    return (per_input,)


@contextlib.contextmanager
def quiet_export() -> Iterator[io.StringIO]:
    """Keep exporter chatter (stdout prints, warnings, torch.onnx log lines) off the console.

    Yields a buffer with what was printed and warned, for error messages when the export fails.
    """
    buffer = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buffer):
            warnings.simplefilter("always")
            yield buffer
        for warning in caught:
            buffer.write(f"{warning.category.__name__}: {warning.message}\n")
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
