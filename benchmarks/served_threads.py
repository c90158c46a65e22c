"""Benchmark: served requests/s of one graph model with 1 vs 2 intra-op threads per instance,
while another process keeps one core busy.

Tunes a small MLP (batch 8 x 256 features) with ONNX Runtime and with AOTInductor, exports each
twice (``intra_op_threads`` 1 and 2, one instance each) into one repository, serves it with the
embedded Triton server, starts a process that spins on one core, and measures each graph model with
``--clients`` concurrent gRPC clients for ``--seconds`` per round, all variants in every round
(side by side). Prints min/median/max requests/s over ``--rounds`` rounds and the per-round ratio
of 2 threads to 1 thread. This is the measurement behind ``DEFAULT_INTRA_OP_THREADS``
(aitune_triton/triton/options.py). Usage: ``.venv/bin/python benchmarks/served_threads.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import aitune_triton
from aitune_triton import OneBackendStrategy
from aitune_triton.backends import OnnxRuntimeBackend
from aitune_triton.triton import TritonServer
from aitune_triton.triton.config import TritonModelOptions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import throughput  # noqa: E402  (beside this file)


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(256, 1024)
        self.down = torch.nn.Linear(1024, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def tuned(name: str, strategy: OneBackendStrategy, cache: Path) -> aitune_triton.Module:
    torch.manual_seed(0)
    module = aitune_triton.Module(MLP().eval(), name=name, strategy=strategy, cache_dir=cache)
    with torch.no_grad():
        for batch in (1, 4, 8):
            module(torch.randn(batch, 256))
    module.tune()
    return module


def requests_per_s(url: str, model: str, clients: int, seconds: float, batch: int) -> float:
    import tritonclient.grpc as grpcclient

    data = np.random.default_rng(0).standard_normal((batch, 256), dtype=np.float32)

    def make_caller():
        client = grpcclient.InferenceServerClient(url)
        item = grpcclient.InferInput("x", list(data.shape), "FP32")
        item.set_data_from_numpy(data)
        return lambda: client.infer(model, [item])

    return throughput(make_caller, clients, seconds, [{}])


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="served_threads_"))
    try:
        return run(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backends", default="onnxruntime,aoti")
    parser.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    args = parser.parse_args()
    strategies = {
        "onnxruntime": OneBackendStrategy(OnnxRuntimeBackend(graph_optimization_level="all", intra_op_num_threads=1)),
        "aoti": OneBackendStrategy("aoti"),
    }
    repository = root / "repo"
    variants: list[tuple[str, int, str]] = []  # (backend, threads, graph model)
    for backend in args.backends.split(","):
        module = tuned(f"threads_{backend}", strategies[backend], root / "cache")
        for threads in (1, 2):
            name = f"threads_{backend}_t{threads}"
            result = aitune_triton.export(module, repository, name=name, options=TritonModelOptions(intra_op_threads=threads),
                                          show_progress=False)
            variants.append((backend, threads, result.graph_models[0]))  # the one graph model, called directly
        del module
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # keeps one core busy
    results: dict[str, list[float]] = {model: [] for _, _, model in variants}
    try:
        with TritonServer(repository, show_progress=False, timeout_s=300) as server:
            for round_index in range(args.rounds):
                for _, _, model in variants:
                    results[model].append(requests_per_s(server.grpc_url, model, args.clients, args.seconds, args.batch))
                print(f"round {round_index + 1}: " + ", ".join(f"{m} {results[m][-1]:.1f} req/s" for m in results), flush=True)
    finally:
        spinner.kill()
        spinner.wait()
    report: dict[str, dict] = {"cores": os.cpu_count(), "clients": args.clients, "batch": args.batch,
                               "seconds": args.seconds, "rounds": args.rounds, "backends": {}}
    print(f"\n{os.cpu_count()} cores, one kept busy; {args.clients} clients, batch {args.batch}, {args.seconds} s x {args.rounds} rounds")
    for backend in args.backends.split(","):
        one, two = (results[model] for b, _, model in sorted(variants, key=lambda v: v[1]) if b == backend)
        ratios = [b / a for a, b in zip(one, two)]
        entry = {
            "threads_1_req_s": {"min": min(one), "median": statistics.median(one), "max": max(one)},
            "threads_2_req_s": {"min": min(two), "median": statistics.median(two), "max": max(two)},
            "ratio_2_vs_1_per_round": ratios,
        }
        report["backends"][backend] = entry
        print(
            f"{backend}: 1 thread {min(one):.1f}/{statistics.median(one):.1f}/{max(one):.1f} req/s, "
            f"2 threads {min(two):.1f}/{statistics.median(two):.1f}/{max(two):.1f} req/s (min/median/max); "
            f"2 vs 1: {min(ratios):.2f}-{max(ratios):.2f}x"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
