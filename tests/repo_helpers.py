"""Small tuned modules and repository helpers for the repository tools' tests (check, dry run, analyze-config)."""

from __future__ import annotations

from pathlib import Path

import torch
from nets import TwoInputNet, record_two_specs

import aitune_triton
from aitune_triton.backends import OnnxRuntimeBackend


def fast_onnxruntime() -> aitune_triton.OneBackendStrategy:
    """ONNX Runtime with its session options given, so the build does not measure them (seconds, not tens),
    and without the batch size sweep: the repository tools' tests check shapes at the recorded range."""
    return aitune_triton.OneBackendStrategy(
        OnnxRuntimeBackend(graph_optimization_level="basic", intra_op_num_threads=1), find_max_batch_size=False
    )


def tuned_two_spec_net(name: str, root: Path) -> aitune_triton.Module:
    """A TwoInputNet (seed 0) named ``name`` with graph specs ``(x, y)`` and ``(x,)`` at batches 1, 3, 5,
    tuned with ONNX Runtime (tuning cache under ``root``)."""
    torch.manual_seed(0)
    module = aitune_triton.Module(TwoInputNet().eval(), name=name, strategy=fast_onnxruntime(), cache_dir=root / "cache")
    record_two_specs(module)
    module.tune()
    return module


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
