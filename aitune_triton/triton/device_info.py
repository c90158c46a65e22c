"""Where an exported artifact was built (``manifest.json``'s ``device``): :class:`DeviceInfo`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aitune_triton._versions import build_environment

__all__ = ["DeviceInfo", "device_info"]


@dataclass(frozen=True)
class DeviceInfo:
    """Where an artifact was built: what its backend recorded at build time, or, for descriptions
    tuned before backends recorded it, as far as the exporting machine could tell.

    Attributes:
        device: The backend's device (``"cpu"``, ``"cuda:0"``).
        gpu_name: GPU name (``torch.cuda.get_device_name``); None for CPU or when CUDA was not
            available at export.
        compute_capability: ``"major.minor"`` of that GPU (``"9.0"``), or None.
        cuda_version: CUDA version torch was built with (``torch.version.cuda``), or None.
        tensorrt_version: Installed ``tensorrt`` package version, or None.
        torch_version: The torch version that built the artifact, or None (not recorded).
    """

    device: str = "cpu"
    gpu_name: str | None = None
    compute_capability: str | None = None
    cuda_version: str | None = None
    tensorrt_version: str | None = None
    torch_version: str | None = None

    @property
    def is_cuda(self) -> bool:
        """Whether the artifact was tuned on a CUDA device."""
        return self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str | None) -> "DeviceInfo":
        """Rebuild from :meth:`to_dict` (a plain device string or None is accepted too)."""
        if data is None or isinstance(data, str):
            return cls(device=data or "cpu")
        return cls(**{key: data.get(key) for key in ("gpu_name", "compute_capability", "cuda_version", "tensorrt_version",
                                                     "torch_version")},
                   device=str(data.get("device", "cpu")))


def device_info(device: str = "cpu", built_on: dict[str, Any] | None = None) -> DeviceInfo:
    """Describe where an artifact was built: from ``built_on`` (what its backend recorded when it
    was built, :func:`aitune_triton._versions.build_environment`), else from this machine's CUDA
    facts for ``device`` (descriptions tuned before backends recorded it).
    """
    facts = dict(built_on) if built_on else build_environment(device)
    return DeviceInfo(str(facts.get("device") or device), facts.get("gpu_name"), facts.get("compute_capability"),
                      facts.get("cuda_version"), facts.get("tensorrt_version"), facts.get("torch"))
