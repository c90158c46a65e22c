"""``model_warmup`` of graph models, built from the recorded calls kept with each tuned backend.

Tuning keeps the tensor inputs of the recorded calls with the fewest and the most elements as
artifacts ``warmup_min`` / ``warmup_max`` of the chosen backend (so a checkpoint carries them,
hashed like the other artifacts). Exporting (``TritonModelOptions(warmup=True)``, the default) writes each
input of those calls as a raw file under the model directory's ``warmup/`` folder and lists them
in ``model_warmup``: Triton runs them on every instance before the model is READY (Triton model
configuration docs, "Model Warmup": ``input_data_file`` is read from ``<model>/warmup/`` as raw
row-major bytes, with ``dims`` leaving the batch axis out; a sample of ``batch_size`` B is run as
B requests of one sample each, so the file holds one sample, the first of the recorded batch).
A batching model with a preferred batch size (the batch dim's ``opt``: measured by the batch size
sweep or declared) is also warmed at that size, from the smallest call's files: the size the
dynamic batcher aims for is the one most requests run at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from aitune_triton._warnings import warn
from aitune_triton.errors import ExportError
from aitune_triton.module.description import BackendDescription
from aitune_triton.module.tuning import WARMUP_ROLES
from aitune_triton.triton.io import ModelIO

__all__ = ["WARMUP_DIR", "WARMUP_ROLES", "add_warmup", "export_warmup"]

#: Folder of warmup input files in a model directory (fixed by Triton).
WARMUP_DIR = "warmup"


def _raw(tensor: torch.Tensor) -> bytes:
    """Little-endian, row-major bytes of a tensor (as Triton reads ``input_data_file``).

    bfloat16 has no numpy dtype: its 2-byte bit patterns are written as int16 (TYPE_BF16 is those
    bits, as the KServe protocol's binary data carries them).
    """
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    array = np.ascontiguousarray(tensor.numpy())
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def add_warmup(config: mc.ModelConfig, io: ModelIO, backend: BackendDescription, version: int) -> dict[str, bytes]:
    """Add ``model_warmup`` entries to a graph model's ``config``; return the files they read.

    Args:
        config: The graph model's configuration (Python-backend or native; its inputs are in
            ``io.inputs`` order).
        io: The graph model's IO mapping.
        backend: The tuned backend, with its ``warmup_min`` / ``warmup_max`` artifacts.
        version: The version exported; it prefixes the file names, so that the files of older
            versions stay as they were.

    Returns:
        File name under ``warmup/`` -> raw bytes.

    Raises:
        ExportError: the backend has no recorded warmup inputs (tuned by an older aitune_triton),
            or they do not fit the graph model's inputs.
    """
    missing = [role for role in WARMUP_ROLES if role not in backend.artifacts]
    if missing:
        raise ExportError(
            f"warmup: {io.model_name} has no recorded warmup inputs ({', '.join(missing)} missing from its backend's "
            "artifacts; it was tuned by an older aitune_triton). Tune and save it again, or export without warmup."
        )
    files: dict[str, bytes] = {}
    seen: set[tuple[tuple[int, ...], ...]] = set()
    for role in WARMUP_ROLES:
        path = Path(backend.artifacts[role])
        if not path.is_file():
            raise ExportError(f"warmup: {io.model_name}: {path} does not exist (was the tuning cache cleared?).")
        tensors: list[Any] = torch.load(path, weights_only=True)["tensors"]  # tensors only: no code runs
        if len(tensors) != len(io.inputs):
            raise ExportError(f"warmup: {path} holds {len(tensors)} tensors, {io.model_name} takes {len(io.inputs)} inputs.")
        shapes = tuple(tuple(t.shape) for t in tensors)
        if shapes in seen:  # the smallest call is the largest: one entry
            continue
        seen.add(shapes)
        batching = io.max_batch_size > 0
        batch_size = int(tensors[0].shape[0]) if batching else 1
        warmup = config.model_warmup.add(name=f"{role}_{'x'.join(map(str, shapes[0])) or 'scalar'}", batch_size=batch_size, count=1)
        for message, tensor_io, tensor in zip(config.input, io.inputs, tensors):
            sample = tensor[0] if batching else tensor
            dims = list(sample.shape) or [1]  # a tensor without dims of its own is declared as dims [1]
            file_name = f"{version}_{role}_{message.name}"
            files[file_name] = _raw(sample.to(getattr(torch, tensor_io.dtype)))
            warmup.inputs[message.name].CopyFrom(
                mc.ModelWarmup.Input(data_type=message.data_type, dims=dims, input_data_file=file_name)
            )
    _add_preferred_size(config, io)
    return files


def _add_preferred_size(config: mc.ModelConfig, io: ModelIO) -> None:
    """Warm a batching model at its preferred batch size too, with the first entry's sample files,
    unless an entry already runs that size."""
    preferred = io.preferred_batch_size
    if not (io.max_batch_size > 0 and preferred and preferred <= io.max_batch_size and config.model_warmup):
        return
    if any(entry.batch_size == preferred for entry in config.model_warmup):
        return
    first = config.model_warmup[0]
    warmup = config.model_warmup.add(name=f"warmup_opt_batch_{preferred}", batch_size=preferred, count=1)
    for name, tensor_input in first.inputs.items():
        warmup.inputs[name].CopyFrom(tensor_input)


def export_warmup(config: mc.ModelConfig, io: ModelIO, backend: BackendDescription, version: int, enabled: bool) -> dict[str, bytes]:
    """:func:`add_warmup` as the exporter applies it: nothing when ``enabled`` is False, and for a
    backend without recorded warmup inputs (tuned by an older aitune_triton) a warning and no
    ``model_warmup`` (warmup is on by default, so such a checkpoint still exports).

    Raises:
        ExportError: the recorded warmup files are gone or do not fit (see :func:`add_warmup`).
    """
    if not enabled:
        return {}
    missing = [role for role in WARMUP_ROLES if role not in backend.artifacts]
    if missing:
        warn(
            f"warmup: {io.model_name} has no recorded warmup inputs ({', '.join(missing)} missing; it was tuned by an "
            "older aitune_triton): exported without model_warmup, so it compiles or warms up on its first requests. "
            "Tune and save it again to warm it up at load, or pass warmup=False (--no-warmup) to silence this."
        )
        return {}
    return add_warmup(config, io, backend, version)
