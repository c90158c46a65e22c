"""Benchmark: where the time of one served call at concurrency 1 goes, stage by stage.

A small token model with MiniLM's request shape (``input_ids`` and ``attention_mask``, 1 x 16
int64; ``Embedding(1000, 32)`` + masked mean + ``Linear(32, 32)``, so the artifact itself costs
little) is tuned with ONNX Runtime and exported as one direct graph model; one embedded
tritonserver serves it. One client calls it one request at a time. Each round measures, in
alternating blocks:

* ``in_process``: the tuned module called in this process (the baseline);
* ``remote``: ``RemoteModule`` (what a user calls);
* ``raw``: ``tritonclient`` ``infer()`` with inputs built once (the wire and the server only).

and per call, inside those:

* client: ``RemoteModule``'s own work before and after ``infer()`` (``remote - raw``);
* server: Triton's statistics for the model (``queue``, ``compute_input``, ``compute_infer``,
  ``compute_output``; for a Python-backend model ``compute_infer`` holds the hop to the stub
  process and ``execute()``);
* ``execute()``: stages timed inside the served graph model (``AITUNE_TRITON_STAGE_LOG``: read
  and check the inputs, plan the batches, run the artifact, build the responses);
* the rest of ``raw`` (gRPC / HTTP, tritonclient, Triton's front end): ``raw - server``.

Three rounds give min / median / max of each round's median. Absolute numbers on these 2-core,
shared machines are noisy: compare numbers from the same run.

``--model minilm`` runs the same breakdown on all-MiniLM-L6-v2 (one sentence padded to 16 tokens),
tuned with AOTInductor (freezing, as the demo's default strategy keeps it), served with one
intra-op thread per instance and called in process with one torch thread too.

Usage: ``.venv/bin/python benchmarks/served_breakdown.py [--model small|minilm] [--rounds 3]
[--requests 400] [--blocks 4] [--protocol grpc|http] [--max-queue-delay-us 100] [--no-stage-log]
[--json PATH]``.
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
from typing import Any, Callable

import numpy as np
import torch

import aitune_triton
from aitune_triton.backends.aoti import AOTInductorBackend
from aitune_triton.served.graph_model import STAGE_LOG_ENV
from aitune_triton.triton.config import TritonModelOptions
from aitune_triton.triton.server import TritonServer

NAME = "breakdown_net"
SEQUENCE = 16


class _TokenNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(1000, 32)
        self.linear = torch.nn.Linear(32, 32)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.linear(pooled)


def _tuned(cache: Path) -> tuple[aitune_triton.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    module = aitune_triton.Module(_TokenNet().eval(), name=NAME, strategy=aitune_triton.OneBackendStrategy("onnxruntime"),
                                  cache_dir=cache)
    with torch.no_grad():
        for batch, length in ((1, 8), (4, 16), (8, 32)):
            module(torch.randint(0, 1000, (batch, length)), torch.ones(batch, length, dtype=torch.int64))
    module.tune()
    generator = torch.Generator().manual_seed(1)
    call = {"input_ids": torch.randint(0, 1000, (1, SEQUENCE), generator=generator),
            "attention_mask": torch.ones(1, SEQUENCE, dtype=torch.int64)}
    return module, call


def _tuned_minilm(cache: Path) -> tuple[aitune_triton.Module, dict[str, torch.Tensor]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from minilm import SENTENCES, load_model

    model, tokenizer = load_model()
    module = aitune_triton.Module(model, name=NAME, strategy=aitune_triton.OneBackendStrategy(AOTInductorBackend(freezing=True)), cache_dir=cache)
    with torch.no_grad():
        for batch in (1, 4, 8):
            module(**dict(tokenizer(SENTENCES[:batch], padding="max_length", max_length=32, return_tensors="pt")))
            module(**dict(tokenizer(SENTENCES[:batch], padding=True, return_tensors="pt")))
    module.tune()
    call = dict(tokenizer([SENTENCES[0]], padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="pt"))
    return module, call


def _raw_caller(server: TritonServer, protocol: str, call: dict[str, torch.Tensor]) -> tuple[Any, Callable[[], Any]]:
    if protocol == "grpc":
        import tritonclient.grpc as module

        client = module.InferenceServerClient(server.grpc_url)
    else:
        import tritonclient.http as module  # type: ignore[no-redef]

        client = module.InferenceServerClient(server.http_url)
    inputs = []
    for name, tensor in call.items():
        infer_input = module.InferInput(name, list(tensor.shape), "INT64")
        infer_input.set_data_from_numpy(tensor.numpy())
        inputs.append(infer_input)
    return client, lambda: client.infer(NAME, inputs)


def _block_ms(call: Callable[[], Any], requests: int) -> list[float]:
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1e3)
    return latencies


def _server_ms(client: Any, protocol: str) -> dict[str, float]:
    """Cumulative per-stage time (ms) and count of the model's successful requests (Triton statistics)."""
    if protocol == "grpc":
        stats = client.get_inference_statistics(NAME, as_json=True)["model_stats"][0]["inference_stats"]
    else:
        stats = client.get_inference_statistics(NAME)["model_stats"][0]["inference_stats"]
    result = {stage: int(stats.get(stage, {}).get("ns", 0)) / 1e6 for stage in ("queue", "compute_input", "compute_infer", "compute_output")}
    result["count"] = int(stats.get("success", {}).get("count", 0))
    return result


def _stage_lines(path: Path, skip: int) -> list[dict[str, float]]:
    lines = path.read_text().splitlines()[skip:] if path.exists() else []
    return [json.loads(line) for line in lines]


def measure(
    rounds: int, requests: int, blocks: int, protocol: str, model: str = "small", queue_delay_us: int = 100, stage_log_on: bool = True
) -> dict[str, Any]:
    """See the module docstring."""
    with tempfile.TemporaryDirectory(prefix="served_breakdown-") as tmp:
        root = Path(tmp)
        module, call = (_tuned_minilm if model == "minilm" else _tuned)(root / "cache")
        options = TritonModelOptions(intra_op_threads=1, max_queue_delay_microseconds=queue_delay_us)
        aitune_triton.export(module, root / "repository", options=options, show_progress=False)
        if model == "minilm":
            torch.set_num_threads(1)  # in process with the served instance's one intra-op thread
        stage_log = root / "stages.jsonl"
        if stage_log_on:
            os.environ[STAGE_LOG_ENV] = str(stage_log)  # the server's stub processes inherit it
        try:
            with TritonServer(root / "repository", log_path=root / "tritonserver.log", show_progress=False, timeout_s=180) as server:
                remote = aitune_triton.RemoteModule(server.grpc_url if protocol == "grpc" else server.http_url, NAME, protocol=protocol)
                client, raw = _raw_caller(server, protocol, call)
                callers: dict[str, Callable[[], Any]] = {
                    "in_process": lambda: module(**call),
                    "remote": lambda: remote(**call),
                    "raw": raw,
                }
                with torch.no_grad():
                    for caller in callers.values():  # warm up
                        _block_ms(caller, 30)
                    reference = torch.utils._pytree.tree_leaves(module(**call))
                    torch.testing.assert_close(torch.utils._pytree.tree_leaves(remote(**call)), reference, rtol=1e-4, atol=1e-4)
                    per_round: dict[str, list[float]] = {}
                    for index in range(rounds):
                        order = list(callers) if index % 2 == 0 else list(reversed(callers))
                        samples: dict[str, list[float]] = {name: [] for name in callers}
                        server_sums: dict[str, list[float]] = {}
                        stage_rows: list[dict[str, float]] = []
                        for _ in range(blocks):
                            for name in order:
                                before = _server_ms(client, protocol) if name != "in_process" else None
                                skip = len(stage_log.read_text().splitlines()) if stage_log.exists() else 0
                                samples[name] += _block_ms(callers[name], requests // blocks)
                                if before is not None:
                                    after = _server_ms(client, protocol)
                                    count = after["count"] - before["count"]
                                    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
                                        server_sums.setdefault(stage, []).append((after[stage] - before[stage]) / max(count, 1))
                                    stage_rows += _stage_lines(stage_log, skip)
                        for name, values in samples.items():
                            per_round.setdefault(f"{name}_ms", []).append(statistics.median(values))
                        for stage, values in server_sums.items():
                            per_round.setdefault(f"server_{stage}_ms", []).append(statistics.mean(values))
                        for stage in stage_rows[0] if stage_rows else []:
                            per_round.setdefault(f"execute_{stage}_ms", []).append(statistics.median(row[stage] for row in stage_rows))
                remote.close()
                client.close()
        finally:
            os.environ.pop(STAGE_LOG_ENV, None)

    def spread(values: list[float]) -> dict[str, float]:
        return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "max": round(max(values), 4)}

    derived = {
        "served_overhead_ms": [r - i for r, i in zip(per_round["remote_ms"], per_round["in_process_ms"])],
        "remote_client_work_ms": [r - w for r, w in zip(per_round["remote_ms"], per_round["raw_ms"])],
    }
    server_total = [sum(per_round[f"server_{stage}_ms"][i] for stage in ("queue", "compute_input", "compute_infer", "compute_output"))
                    for i in range(rounds)]
    derived["wire_and_frontend_ms"] = [raw - server for raw, server in zip(per_round["raw_ms"], server_total)]
    if "execute_total_ms" in per_round:
        derived["stub_hop_ms"] = [infer - execute for infer, execute in zip(per_round["server_compute_infer_ms"], per_round["execute_total_ms"])]
    return {
        "model": model,
        "max_queue_delay_microseconds": queue_delay_us,
        "torch_threads_in_process": torch.get_num_threads(),
        "protocol": protocol,
        "rounds": rounds,
        "requests_per_round_per_caller": (requests // blocks) * blocks,
        "stages": {name: spread(values) for name, values in {**per_round, **derived}.items()},
        "per_round": per_round,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help="requests per caller per round")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per round")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--model", choices=["small", "minilm"], default="small")
    parser.add_argument("--max-queue-delay-us", type=int, default=100, help="the dynamic batcher's max_queue_delay_microseconds")
    parser.add_argument("--no-stage-log", action="store_true", help="leave execute() untimed (its log costs a file write per call)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.requests < args.blocks or args.blocks < 1:
        parser.error("--rounds and --blocks must be >= 1 and --requests >= --blocks")
    report = measure(args.rounds, args.requests, args.blocks, args.protocol, args.model, args.max_queue_delay_us, not args.no_stage_log)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for name, spread in report["stages"].items():
        print(f"{name:32s} min {spread['min']:8.3f}  median {spread['median']:8.3f}  max {spread['max']:8.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
