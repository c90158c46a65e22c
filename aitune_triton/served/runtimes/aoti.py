"""AOTInductor: the compiled package ``model.pt2``, loaded the same way in process and served."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..tensors import to_host, to_torch

__all__ = ["Runtime", "load_package"]


def load_package(path: str, device_index: int = -1) -> Any:
    """The callable AOTInductor package at ``path`` (``torch._inductor.aoti_load_package``).

    Args:
        path: The ``.pt2`` package.
        device_index: The CUDA device to load on; -1 for the package's own device (CPU here).
    """
    return torch._inductor.aoti_load_package(str(path), device_index=device_index)


class Runtime:
    """The AOTInductor package loaded on the instance's device; ``options`` are the backend's stored options."""

    def __init__(self, path: str, gpu: bool, device_id: int, options: dict[str, Any]) -> None:
        self.device = torch.device("cuda", device_id) if gpu else torch.device("cpu")
        self.runner: Any = load_package(path, device_id if gpu else -1)

    def run(self, values: Sequence[Any]) -> list[Any]:
        """Outputs (host values) of the package on ``values`` (host values in input order)."""
        with torch.inference_mode():
            outputs = self.runner(*[to_torch(value, self.device) for value in values])
        return [to_host(output) for output in outputs]

    def close(self) -> None:
        """Drop the package."""
        self.runner = None
