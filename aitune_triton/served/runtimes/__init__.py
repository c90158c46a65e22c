"""One module per backend whose artifact a served graph model runs, each defining ``Runtime``.

``Runtime(path, gpu, device_id, options)`` loads the artifact at ``path`` on the instance's device
(``gpu``: the instance kind is GPU, ``device_id`` its device) with the backend's stored
``options``; ``run(values)`` takes host values (:mod:`..tensors`) in the artifact's input order and
returns its outputs as host values; ``close()`` releases the artifact. The in-process backends
(``aitune_triton.backends``) load their artifact through the same functions of these modules.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["RUNTIMES", "runtime_module"]

#: Runtime module names (a backend's ``triton_runtime``).
RUNTIMES = ("aoti", "inductor", "onnxruntime", "openvino")


def runtime_module(name: str) -> ModuleType:
    """The runtime module ``name`` of this package (imported on first use: it imports torch or onnxruntime).

    Raises:
        ValueError: ``name`` is not one of :data:`RUNTIMES`.
    """
    if name not in RUNTIMES:
        raise ValueError(f"runtime {name!r}: expected one of {list(RUNTIMES)}")
    return importlib.import_module(f"{__name__}.{name}")
