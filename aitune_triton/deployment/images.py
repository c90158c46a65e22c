"""Which NGC ``tritonserver`` image runs a given Triton server version.

NVIDIA publishes the server as monthly NGC containers ``nvcr.io/nvidia/tritonserver:<YY.MM>-py3``;
each release's notes and its GitHub release title ("Release 2.59.0 corresponding to NGC container
25.06") name the server version inside. :data:`NGC_RELEASES` holds that mapping for the releases
around the one this project serves with; :data:`EMBEDDED_SERVER_VERSIONS` the server version that
a ``nvidia-pytriton`` wheel embeds (its binary prints ``server_version`` at start: 2.51.0 for
0.7.0, read on this project's machines).
"""

from __future__ import annotations

from aitune_triton.errors import InvalidArgumentError

__all__ = ["EMBEDDED_SERVER_VERSIONS", "NGC_RELEASES", "embedded_server_version", "ngc_image", "ngc_release"]

#: Triton server version -> NGC container release (Triton release notes, docs.nvidia.com/deeplearning/
#: triton-inference-server/release-notes: one server minor version per monthly release).
NGC_RELEASES: dict[str, str] = {
    "2.40.0": "23.11", "2.41.0": "23.12",
    "2.42.0": "24.01", "2.43.0": "24.02", "2.44.0": "24.03", "2.45.0": "24.04", "2.46.0": "24.05",
    "2.47.0": "24.06", "2.48.0": "24.07", "2.49.0": "24.08", "2.50.0": "24.09", "2.51.0": "24.10",
    "2.52.0": "24.11", "2.53.0": "24.12",
    "2.54.0": "25.01", "2.55.0": "25.02", "2.56.0": "25.03", "2.57.0": "25.04", "2.58.0": "25.05",
    "2.59.0": "25.06",
}

#: ``nvidia-pytriton`` version -> the Triton server version its wheel embeds.
EMBEDDED_SERVER_VERSIONS: dict[str, str] = {"0.7.0": "2.51.0"}

#: The NGC repository of the server images.
NGC_REPOSITORY = "nvcr.io/nvidia/tritonserver"


def ngc_release(server_version: str) -> str:
    """The NGC release (``"24.10"``) whose container holds Triton ``server_version`` (``"2.51.0"``).

    Raises:
        InvalidArgumentError: ``server_version`` is not in :data:`NGC_RELEASES`; the message lists them.
    """
    version = str(server_version).strip()
    if version.count(".") == 1:  # "2.51" -> "2.51.0"
        version += ".0"
    try:
        return NGC_RELEASES[version]
    except KeyError:
        raise InvalidArgumentError(
            f"server_version: expected a Triton server version with a known NGC release "
            f"({', '.join(NGC_RELEASES)}), got {server_version!r}. Pass the image yourself (--image)."
        ) from None


def ngc_image(server_version: str) -> str:
    """The NGC image running Triton ``server_version``: ``nvcr.io/nvidia/tritonserver:24.10-py3`` for 2.51.0.

    Raises:
        InvalidArgumentError: ``server_version`` has no known NGC release.
    """
    return f"{NGC_REPOSITORY}:{ngc_release(server_version)}-py3"


def embedded_server_version(pytriton_version: str | None) -> str | None:
    """The Triton server version the ``nvidia-pytriton`` wheel ``pytriton_version`` embeds; None when unknown."""
    return EMBEDDED_SERVER_VERSIONS.get(str(pytriton_version)) if pytriton_version else None
