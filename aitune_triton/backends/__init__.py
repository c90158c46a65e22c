"""Backends: one file per backend, registered here explicitly."""

from aitune_triton.backends.aoti import AOTInductorBackend
from aitune_triton.backends.base import (
    Backend,
    BuildContext,
    LoadContext,
    backend_names,
    get_backend_class,
    register_backend,
    registered_backends,
)
from aitune_triton.backends.eager import EagerBackend
from aitune_triton.backends.inductor import InductorBackend
from aitune_triton.backends.onnxruntime import OnnxRuntimeBackend
from aitune_triton.backends.openvino import OpenVINOBackend
from aitune_triton.backends.serving import NativeTarget

for _backend in (EagerBackend, OnnxRuntimeBackend, AOTInductorBackend, InductorBackend, OpenVINOBackend):
    register_backend(_backend)

__all__ = [
    "AOTInductorBackend",
    "Backend",
    "BuildContext",
    "EagerBackend",
    "InductorBackend",
    "LoadContext",
    "NativeTarget",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "backend_names",
    "get_backend_class",
    "register_backend",
    "registered_backends",
]
