"""The Triton layer: IO mapping, model configurations, repository export, server and client.

``TritonServer`` is importable from here (``aitune_triton.triton.TritonServer``); ``export`` and
``RemoteModule`` too, and from the package root.
"""

from aitune_triton.triton.client import RemoteModule
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.exporter import ExportResult, export
from aitune_triton.triton.native import ExportTarget
from aitune_triton.triton.server import TritonServer

__all__ = ["ExportResult", "ExportTarget", "RemoteModule", "TritonModelOptions", "TritonServer", "export"]
