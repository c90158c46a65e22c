"""aitune_triton: wrap a PyTorch module, record its calls, tune a backend per graph spec, export it
to a Triton model repository and serve it, with the same results at every step."""

from __future__ import annotations

from typing import Any

from aitune_triton.backends import AOTInductorBackend, Backend, EagerBackend, InductorBackend, OnnxRuntimeBackend, OpenVINOBackend, register_backend
from aitune_triton.checkpoint import load, save
from aitune_triton.deployment import deploy
from aitune_triton.errors import AITuneTritonError
from aitune_triton.module.dims import BatchDim, DynamicDim
from aitune_triton.module.padded_calls import padded_calls
from aitune_triton.spec import DimRange, GraphSpec
from aitune_triton.module.state import ModuleState
from aitune_triton.module.wrapper import Module
from aitune_triton.pipeline import tune
from aitune_triton.strategies import (
    FirstWinsStrategy,
    LatencyBudgetStrategy,
    MaxThroughputStrategy,
    MinLatencyStrategy,
    OneBackendStrategy,
    Profiler,
    TuneStrategy,
)

__version__ = "0.1.0"

__all__ = [
    "AITuneTritonError",
    "AOTInductorBackend",
    "Backend",
    "BatchDim",
    "DimRange",
    "DynamicDim",
    "EagerBackend",
    "FirstWinsStrategy",
    "GraphSpec",
    "InductorBackend",
    "LatencyBudgetStrategy",
    "MaxThroughputStrategy",
    "MinLatencyStrategy",
    "Module",
    "ModuleState",
    "OneBackendStrategy",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "Profiler",
    "RemoteModule",
    "AsyncRemoteModule",
    "TuneStrategy",
    "deploy",
    "export",
    "load",
    "padded_calls",
    "register_backend",
    "save",
    "tune",
]


def __getattr__(name: str) -> Any:
    # The Triton layer imports tritonclient; load it only when it is used.
    if name == "export":
        from aitune_triton.triton.exporter import export

        return export
    if name == "RemoteModule":
        from aitune_triton.triton.client import RemoteModule

        return RemoteModule
    if name == "AsyncRemoteModule":
        from aitune_triton.triton.aio_client import AsyncRemoteModule

        return AsyncRemoteModule
    raise AttributeError(f"module 'aitune_triton' has no attribute {name!r}")
