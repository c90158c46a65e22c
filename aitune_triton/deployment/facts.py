"""What a deployment is sized from: :func:`repository_facts` reads a model repository (its configs,
its files, and what ``aitune-triton check --load`` measured) into a :class:`RepositoryFacts`.

The Triton image tag follows the server version the repository was validated with
(:mod:`aitune_triton.deployment.images`). Without a validation record the measured facts are None; the targets
then use their documented defaults, say so in the files they write, and warn.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from aitune_triton._warnings import warn
from aitune_triton.deployment.images import ngc_image
from aitune_triton.errors import InvalidArgumentError

__all__ = ["RepositoryFacts", "image_for_server_version", "repository_facts", "unreadable_by_others", "warn_if_unreadable"]



def image_for_server_version(server_version: str) -> str | None:
    """The NGC image ``nvcr.io/nvidia/tritonserver:<YY.MM>-py3`` that ships Triton ``server_version``
    (:func:`aitune_triton.deployment.images.ngc_image`).

    Returns:
        The image, or None (with a ``UserWarning`` naming the known versions) for a version without
        a known NGC release; pass the image explicitly then (``--image``).
    """
    try:
        return ngc_image(server_version)
    except InvalidArgumentError as error:
        warnings.warn(str(error), UserWarning, stacklevel=2)
        return None


@dataclasses.dataclass(frozen=True)
class RepositoryFacts:
    """A model repository as a deployment sees it.

    Attributes:
        repository: The repository directory (absolute).
        models: Model names (directory names), sorted.
        artifact_bytes: Bytes of every file under the model directories.
        uses_python_backend: Whether any model runs on Triton's Python backend (its image needs the
            Python packages the served ``model.py`` imports).
        gpu: Whether any model has a ``KIND_GPU`` instance group.
        server_version: The Triton server version ``check --load`` loaded it with; None: not validated.
        image: The NGC image of that server version; None: not validated, or an unknown version.
        load_time_s: Measured seconds from the server start until every model was ready; None: not validated.
        peak_memory_bytes: Measured peak resident memory of the server and its stubs, in bytes;
            None: not validated (or not measurable there).
    """

    repository: Path
    models: tuple[str, ...]
    artifact_bytes: int
    uses_python_backend: bool
    gpu: bool
    server_version: str | None = None
    image: str | None = None
    load_time_s: float | None = None
    peak_memory_bytes: int | None = None

    @property
    def validated(self) -> bool:
        """Whether the measured facts come from a ``check --load`` of this repository."""
        return self.server_version is not None


def repository_facts(repository: str | Path) -> RepositoryFacts:
    """Read the facts of the model repository ``repository``.

    Args:
        repository: An exported model repository directory.

    Returns:
        The :class:`RepositoryFacts`; the measured ones are None (with a ``UserWarning`` saying to run
        ``aitune-triton check --load``) when the repository holds no current validation record.

    Raises:
        InvalidArgumentError: ``repository`` is not a directory, holds no ``*/config.pbtxt``, or a
            ``config.pbtxt`` does not parse.
    """
    # The Triton layer (tritonclient) loads when facts are read, not when aitune_triton is imported.
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from aitune_triton.triton.config import read_model_config
    from aitune_triton.triton.validation import read_validation

    root = Path(repository).absolute()
    if not root.is_dir():
        raise InvalidArgumentError(f"repository: {root} is not a directory; pass an exported model repository.")
    model_dirs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file())
    if not model_dirs:
        raise InvalidArgumentError(f"repository: {root} holds no model (no */config.pbtxt); export a model into it.")
    python_backend = gpu = False
    artifact_bytes = 0
    for model_dir in model_dirs:
        try:
            config = read_model_config(model_dir / "config.pbtxt")
        except text_format.ParseError as error:
            raise InvalidArgumentError(f"repository: {model_dir / 'config.pbtxt'} does not parse ({error}); "
                                       "run aitune-triton check on it.") from error
        python_backend |= config.backend == "python"
        gpu |= any(group.kind == mc.ModelInstanceGroup.KIND_GPU for group in config.instance_group)
        artifact_bytes += sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    facts = RepositoryFacts(root, tuple(p.name for p in model_dirs), artifact_bytes, python_backend, gpu)
    validation = read_validation(root)
    if validation is None:
        warnings.warn(f"repository: {root} has no current validation record; probes and memory use the documented "
                      f"defaults. Run aitune-triton check --load {root} first to size them from measurements.",
                      UserWarning, stacklevel=2)
        return facts
    return dataclasses.replace(
        facts, server_version=validation.server_version, image=image_for_server_version(validation.server_version),
        load_time_s=validation.load_time_s, peak_memory_bytes=validation.peak_memory_bytes)


def unreadable_by_others(repository: Path) -> list[Path]:
    """Files (not readable) and directories (not readable and searchable) of ``repository`` that a user
    other than their owner and group cannot read, as the replicas' user 1000 must."""
    found = []
    for path in [repository, *sorted(repository.rglob("*"))]:
        need = 0o005 if path.is_dir() else 0o004
        if path.lstat().st_mode & need != need:
            found.append(path)
    return found


def warn_if_unreadable(repository: Path) -> None:
    """Warn, naming the first files, when the replicas' user (uid 1000, as Triton's Helm chart and
    KServe run it) may not read part of ``repository``: Triton would then fail to load a model."""
    hidden = unreadable_by_others(repository)
    if hidden:
        shown = ", ".join(str(path) for path in hidden[:3]) + (f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        warn(
            f"repository: the replicas run as user 1000 and may not read {shown} (no read permission for "
            f"others). Run chmod -R a+rX {repository}, or give the files to uid 1000."
        )
