"""Benchmark: what the entry (router) model's BLS hop costs per request.

One small module with one graph spec (``Linear(8, 16)`` + ReLU, tuned with ONNX Runtime) is
exported twice into one repository: ``entry_direct`` (the default for one graph spec: one model,
no router) and ``entry_routed`` (``router=True``: a BLS router in front of
``entry_routed.graph_0``). One embedded tritonserver serves both. Each round sends the same raw
tritonclient request (batch 1, one client, one request at a time) to each model in alternating
blocks, order rotated between rounds, and keeps each model's median per-request latency of the
round; three rounds give min / median / max, and the ratio router / direct is taken per round
(side by side, in the same round).

Usage: ``.venv/bin/python benchmarks/entry_overhead.py [--rounds 3] [--requests 200] [--blocks 4]
[--protocol grpc|http] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import aitune_triton
from aitune_triton.triton.server import TritonServer

DIRECT, ROUTED = "entry_direct", "entry_routed"


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def _export(repository: Path, cache: Path) -> None:
    torch.manual_seed(0)
    module = aitune_triton.Module(_Net().eval(), name=DIRECT, strategy=aitune_triton.OneBackendStrategy("onnxruntime"),
                                  cache_dir=cache)
    with torch.no_grad():
        for batch in (1, 4, 8):
            module(torch.randn(batch, 8))
    module.tune()
    aitune_triton.export(module, repository, show_progress=False)  # one graph spec: no router
    aitune_triton.export(module, repository, name=ROUTED, router=True, show_progress=False)


def _client_and_request(server: TritonServer, protocol: str) -> tuple[Any, list[Any]]:
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.grpc_url)
    else:
        import tritonclient.http as module  # type: ignore[no-redef]

        client = module.InferenceServerClient(server.http_url)
    tensor = module.InferInput("x", [1, 8], "FP32")
    tensor.set_data_from_numpy(np.random.default_rng(0).standard_normal((1, 8), dtype=np.float32))
    return client, [tensor]


def _block_ms(client: Any, model: str, inputs: list[Any], requests: int) -> list[float]:
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        client.infer(model, inputs)
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def measure(rounds: int, requests: int, blocks: int, protocol: str) -> dict[str, Any]:
    """Per-request latency of the direct and the routed model; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="entry_overhead-") as tmp:
        root = Path(tmp)
        _export(root / "repository", root / "cache")
        with TritonServer(root / "repository", log_path=root / "tritonserver.log", show_progress=False, timeout_s=180) as server:
            client, inputs = _client_and_request(server, protocol)
            for model in (DIRECT, ROUTED):  # warm up: first requests load code paths
                _block_ms(client, model, inputs, 20)
            per_round: dict[str, list[float]] = {DIRECT: [], ROUTED: []}
            for index in range(rounds):
                order = [DIRECT, ROUTED] if index % 2 == 0 else [ROUTED, DIRECT]
                samples: dict[str, list[float]] = {DIRECT: [], ROUTED: []}
                for _ in range(blocks):
                    for model in order:
                        samples[model] += _block_ms(client, model, inputs, requests // blocks)
                for model in samples:
                    per_round[model].append(statistics.median(samples[model]))
            client.close()

    def spread(values: list[float]) -> dict[str, float]:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    ratios = [routed / direct for routed, direct in zip(per_round[ROUTED], per_round[DIRECT])]
    return {
        "protocol": protocol,
        "rounds": rounds,
        "requests_per_round_per_model": (requests // blocks) * blocks,
        "median_latency_ms_per_round": per_round,
        "direct_ms": spread(per_round[DIRECT]),
        "router_ms": spread(per_round[ROUTED]),
        "ratio_router_over_direct": spread(ratios),
        "overhead_ms": spread([r - d for r, d in zip(per_round[ROUTED], per_round[DIRECT])]),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per model per round")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per round")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < args.blocks or args.blocks < 1:
        parser.error("--rounds and --blocks must be >= 1 and --requests >= --blocks")
    report = measure(args.rounds, args.requests, args.blocks, args.protocol)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    d, r, q = report["direct_ms"], report["router_ms"], report["ratio_router_over_direct"]
    print(f"direct {d['median']:.2f} ms (min {d['min']:.2f}, max {d['max']:.2f}); router {r['median']:.2f} ms "
          f"(min {r['min']:.2f}, max {r['max']:.2f}); router/direct {q['median']:.2f}x (min {q['min']:.2f}, max {q['max']:.2f})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
