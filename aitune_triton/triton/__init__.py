"""The Triton layer: IO mapping, model configurations, repository export, server and client.

``TritonServer`` is importable from here (``aitune_triton.triton.TritonServer``); ``export`` and
``RemoteModule`` and ``AsyncRemoteModule`` too, and from the package root; the repository tools ``check_repository`` and
``analyze_config`` from here; the deployment options (``TritonModelOptions`` and the typed
parts it composes: ``DynamicBatching``, ``InstanceGroup``, ``VersionPolicy``...) too, and the step
declarations (``Step``, ``StepTensor``, ``step``, ``resolve_step``) for
``export(..., preprocess=..., postprocess=...)``.
"""

from aitune_triton.triton.analyze import AnalyzerConfig, analyze_config
from aitune_triton.triton.check import CheckReport, check_repository
from aitune_triton.triton.aio_client import AsyncRemoteModule
from aitune_triton.triton.client import RemoteModule
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.dry_run import ExportPlan
from aitune_triton.triton.exporter import ExportResult, export
from aitune_triton.triton.manifest import ModelManifest
from aitune_triton.triton.native import ExportTarget
from aitune_triton.triton.options import (
    DynamicBatching,
    InstanceGroup,
    InstanceKind,
    QueuePolicy,
    TimeoutAction,
    VersionPolicy,
)
from aitune_triton.triton.server import TritonServer
from aitune_triton.triton.steps import Step, StepTensor, resolve_step, step

__all__ = [
    "AnalyzerConfig",
    "CheckReport",
    "DynamicBatching",
    "ExportPlan",
    "ExportResult",
    "ExportTarget",
    "InstanceGroup",
    "InstanceKind",
    "ModelManifest",
    "QueuePolicy",
    "RemoteModule",
    "AsyncRemoteModule",
    "Step",
    "StepTensor",
    "TimeoutAction",
    "TritonModelOptions",
    "TritonServer",
    "VersionPolicy",
    "analyze_config",
    "check_repository",
    "export",
    "resolve_step",
    "step",
]
