"""Benchmark: MiniLM-L6 served by Triton vs in process, on real sentence traffic, in one run.

Loads (or, when missing, records and tunes as ``make demo`` does) the MiniLM checkpoint, exports it
into a temporary model repository, serves it with the embedded Triton server and measures, in the
same run, with the same tuned module in process:

* a concurrency sweep (1..32 gRPC clients, closed loop, ``RemoteModule`` per client thread) over
  variable-length traffic (single real sentences of 6..51 tokens, unpadded) and fixed-length traffic
  (the same sentences padded or cut to 16 tokens): sentences/s and client-observed p50/p99 latency;
* the goals, side by side in each of ``--rounds`` rounds (order rotated): served c16 over one
  in-process caller (batch 1, the faster of 1 and 2 torch threads) and over the in-process ceiling
  on the same traffic (sorted by length, batches of 8 each padded to its longest, faster of 1 and 2
  threads); a 32 x 101 batch served / in process; served c1 overhead over in process at 1 x 16 (ms);
  fixed-length served c16 / in-process b1; reported as min/median/max;
* a bounded load: ``--load-requests`` requests (default 10,000) at concurrency 32 of 1..8 sentences
  of up to ``--load-max-tokens`` (21) tokens each, padded to their longest (mixed shapes): lost,
  errors, wrong (each answer against its own eager result, 1e-4), p50, p99, p99/p50;
* perf_analyzer's numbers on the same traffic where its binary is found, else "not run: <reason>".

Writes ``--json`` (default ``benchmarks/results/serving.json``) and ``--png`` (a latency-throughput
plot). ``--quick`` is a short run that only shows the benchmark works. Usage:
``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serving.py [--quick] [--checkpoint checkpoints/minilm]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import aitune_triton  # noqa: E402
from aitune_triton.triton import TritonServer  # noqa: E402
from _load import closed_loop  # noqa: E402
import _traffic as traffic  # noqa: E402
from _serving_report import perf_analyzer, plot, spread  # noqa: E402
import minilm  # noqa: E402  (examples/minilm.py: the model, the demo's sentences and recording ranges)

ENTRY = "minilm"
FIXED_TOKENS = 16
TOLERANCE = 1e-4
THREADS = (1, 2)


def tuned_module(checkpoint: Path) -> tuple[Any, Any, Any]:
    """(tuned module, eager copy, tokenizer): the checkpoint loaded, or when it is missing, MiniLM
    recorded and tuned as the demo does (its sentences at batch 1, 4, 8, its long texts, its declared
    ranges) and saved there."""
    model, tokenizer = minilm.load_model()
    eager = copy.deepcopy(model)  # once wrapped, calls of `model` itself run tuned
    if checkpoint.is_dir():
        return aitune_triton.load(model, checkpoint), eager, tokenizer
    print(f"{checkpoint} is missing: recording and tuning MiniLM as the demo does (1-2 min)", flush=True)
    module = aitune_triton.Module(model, name=ENTRY, dynamic_shapes=minilm.DYNAMIC_SHAPES)
    with torch.inference_mode():
        for size in (1, 4, 8):
            for start in range(0, len(minilm.SENTENCES), size):
                module(**traffic.tokens(tokenizer, minilm.SENTENCES[start : start + size]))
        for text in minilm.LONG_TEXTS:
            module(**dict(tokenizer([text], truncation=True, max_length=minilm.MAX_TOKENS, return_tensors="pt")))
    module.tune()
    aitune_triton.save(module, checkpoint, overwrite=True)
    return module, eager, tokenizer


def best_in_process(measure: Callable[[int], float], higher_is_better: bool) -> dict[str, Any]:
    """``measure(threads)`` for 1 and 2 torch threads; the better value and every value."""
    values = {threads: measure(threads) for threads in THREADS}
    best = (max if higher_is_better else min)(values, key=lambda t: values[t])
    return {"value": values[best], "threads": best, "per_threads": values}


def served_load(url: str, requests: list, clients: int, seconds: float) -> Any:
    return closed_loop(lambda: aitune_triton.RemoteModule(url, ENTRY), requests, clients, seconds=seconds, close_callers=True)


def sweep(url: str, kinds: dict[str, list], concurrency: list[int], seconds: float) -> dict[str, list[dict]]:
    """Served sentences/s and p50/p99 per concurrency, for each kind of single-sentence traffic."""
    points: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for clients in concurrency:
        for kind, requests in kinds.items():
            points[kind].append(traffic.summary(served_load(url, requests, clients, seconds), [1]))
            print(f"sweep {kind} c{clients}: {points[kind][-1]['sentences_per_s']:.1f} sentences/s, "
                  f"p50 {points[kind][-1]['p50_ms']:.1f} ms, p99 {points[kind][-1]['p99_ms']:.1f} ms", flush=True)
    return points


def one_round(index: int, url: str, module: Any, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One round of every goal's numerator and denominator, served and in-process back to back
    (which goes first alternates between rounds)."""
    remote = aitune_triton.RemoteModule(url, ENTRY)
    local = traffic.in_process_caller(module)
    variable, fixed, sentences = data["variable"], data["fixed"], len(data["variable"])
    served: dict[str, Callable[[], float]] = {
        "served_c16_variable": lambda: served_load(url, variable, 16, args.seconds).per_s(),
        "served_c16_fixed": lambda: served_load(url, fixed, 16, args.seconds).per_s(),
        "served_batch_32x101_ms": lambda: traffic.latency_ms(remote, data["batch_32"], args.repeats),
        "served_c1_1x16_ms": lambda: traffic.latency_ms(remote, fixed[0], args.calls),
    }
    in_process: dict[str, Callable[[], dict]] = {
        "in_process_b1_variable": lambda: best_in_process(lambda t: traffic.in_process_load(module, variable, args.seconds, t).per_s(), True),
        "in_process_ceiling_variable": lambda: best_in_process(lambda t: sentences / traffic.in_process_pass_s(module, data["sorted_b8"], t), True),
        "in_process_b1_fixed": lambda: best_in_process(lambda t: traffic.in_process_load(module, fixed, args.seconds, t).per_s(), True),
        "in_process_batch_32x101_ms": lambda: best_in_process(
            lambda t: _with_threads(t, lambda: traffic.latency_ms(local, data["batch_32"], args.repeats)), False),
        "in_process_1x16_ms": lambda: best_in_process(lambda t: _with_threads(t, lambda: traffic.latency_ms(local, fixed[0], args.calls)), False),
    }
    values: dict[str, Any] = {}
    groups: list[dict[str, Callable[[], Any]]] = [served, in_process] if index % 2 == 0 else [in_process, served]
    for group in groups:
        for name, measure in group.items():
            values[name] = measure()
    remote.close()
    inp = {name: values[name]["value"] for name in in_process}
    result = {
        "variable_served_c16_over_in_process_b1": values["served_c16_variable"] / inp["in_process_b1_variable"],
        "variable_served_c16_over_in_process_ceiling": values["served_c16_variable"] / inp["in_process_ceiling_variable"],
        "batch_32x101_served_over_in_process": values["served_batch_32x101_ms"] / inp["in_process_batch_32x101_ms"],
        "served_c1_overhead_ms": values["served_c1_1x16_ms"] - inp["in_process_1x16_ms"],
        "fixed_served_c16_over_in_process_b1": values["served_c16_fixed"] / inp["in_process_b1_fixed"],
    }
    print(f"round {index + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    return {"ratios": result, "measured": values}


def _with_threads(threads: int, measure: Callable[[], float]) -> float:
    with traffic.torch_threads(threads):
        return measure()


def bounded_load(url: str, requests: list, expected: list, total: int, clients: int) -> dict[str, Any]:
    """``total`` requests at ``clients`` concurrency cycling through ``requests``; each answer is
    compared with its own eager result (``expected``) at ``TOLERANCE``."""

    def right(index: int, answer: Any) -> bool:
        return traffic.max_abs_diff(answer, expected[index % len(expected)]) <= TOLERANCE

    load = closed_loop(lambda: aitune_triton.RemoteModule(url, ENTRY), requests, clients, requests=total, check=right, close_callers=True)
    report = traffic.summary(load, traffic.batch_sizes(requests))
    report.update(requests=total, sent=load.sent, wrong=len(load.wrong), p99_over_p50=report["p99_ms"] / report["p50_ms"],
                  batch_sizes=f"{min(traffic.batch_sizes(requests))}..{max(traffic.batch_sizes(requests))}", tokens=f"{min(int(r['input_ids'].shape[1]) for r in requests)}.."
                  f"{max(int(r['input_ids'].shape[1]) for r in requests)}", tolerance=TOLERANCE)
    return report


class Phases:
    """Prints each phase as it starts (seconds since the start) and keeps how long each took."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        print(f"[{begin - self.start:5.0f} s] {name}", flush=True)
        yield
        self.seconds[name] = time.perf_counter() - begin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/minilm"),
                        help="tuned MiniLM checkpoint (from `make demo`); recorded, tuned and saved there when missing")
    parser.add_argument("--quick", action="store_true",
                        help="a short run that only shows it works: concurrency 1, 4, 16, 1 s per point, 1 round, 300-request load")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="sweep concurrencies, comma separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each throughput measurement, s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the 32 x 101 batch per round and variant")
    parser.add_argument("--calls", type=int, default=50, help="timed 1 x 16 calls per round (c1 overhead)")
    parser.add_argument("--load-requests", type=int, default=10_000, help="requests of the bounded load")
    parser.add_argument("--load-clients", type=int, default=32, help="concurrency of the bounded load")
    parser.add_argument("--load-distinct", type=int, default=256, help="distinct requests the bounded load cycles through")
    parser.add_argument("--load-max-tokens", type=int, default=21,
                        help="the bounded load's sentences have at most this many tokens (21: the demo's range; keeps 10k requests to minutes)")
    parser.add_argument("--perf-analyzer-window-ms", type=int, default=1000, help="perf_analyzer's measurement window (where it is found)")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "serving.json")
    parser.add_argument("--png", type=Path, default=HERE / "results" / "serving.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.rounds, args.repeats, args.calls = "1,4,16", 1.0, 1, 1, 10
        args.load_requests, args.load_distinct = 300, 64
    try:
        concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency: expected positive integers separated by commas, got {args.concurrency!r}")
    if min(concurrency) < 1 or args.rounds < 1 or args.seconds <= 0 or min(args.repeats, args.calls, args.load_requests, args.load_clients) < 1:
        parser.error("--concurrency, --rounds, --repeats, --calls and --load-* must be >= 1 and --seconds > 0")
    phase = Phases()
    with phase("load or tune the checkpoint"):
        module, eager, tokenizer = tuned_module(args.checkpoint)
    sentences = traffic.sentence_set(tokenizer, [*minilm.SENTENCES, *(s for b in minilm.UNSEEN_BATCHES[:-1] for s in b)])
    data: dict[str, Any] = {
        "variable": traffic.singles(tokenizer, sentences),
        "fixed": traffic.singles(tokenizer, sentences, FIXED_TOKENS),
        "sorted_b8": traffic.sorted_batches(tokenizer, sentences, 8),
        "batch_32": traffic.tokens(tokenizer, minilm.UNSEEN_BATCHES[-1]),
    }
    short = [s for s in sentences if len(tokenizer(s)["input_ids"]) <= args.load_max_tokens]
    if len(short) < 8:
        parser.error(f"--load-max-tokens: {args.load_max_tokens} leaves {len(short)} sentences, expected at least 8; raise it")
    mixed = traffic.mixed_requests(tokenizer, short, args.load_distinct)
    lengths = [int(r["input_ids"].shape[1]) for r in data["variable"]]
    # One torch thread: with two, eager MiniLM ran up to 100x slower while other jobs kept the 2 cores busy.
    with phase(f"eager results of the bounded load's {len(mixed)} distinct requests"), torch.inference_mode(), traffic.torch_threads(1):
        expected = [eager(**request) for request in mixed]
    report: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2", "backends": [g.backend.name for g in module.tuned_graphs],
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "quick": args.quick, "seconds_per_point": args.seconds, "rounds": args.rounds,
        "traffic": {"sentences": len(sentences), "tokens": f"{min(lengths)}..{max(lengths)}", "fixed_tokens": FIXED_TOKENS,
                    "batch_32_shape": list(data["batch_32"]["input_ids"].shape), "load_distinct_requests": len(mixed)},
    }
    with tempfile.TemporaryDirectory(prefix="aitune_triton-serving-") as tmp:
        repository = Path(tmp) / "model_repository"
        with phase("export and start the server"):
            exported = aitune_triton.export(args.checkpoint, repository, show_progress=False)
            server = TritonServer(repository, show_progress=False, timeout_s=300).start()
        with server:
            url = server.grpc_url
            with phase("concurrency sweep"):
                report["sweep"] = sweep(url, {"variable": data["variable"], "fixed": data["fixed"]}, concurrency, args.seconds)
            with phase(f"{args.rounds} round(s) of served vs in process"):
                rounds = [one_round(index, url, module, data, args) for index in range(args.rounds)]
            report["rounds_measured"] = [r["measured"] for r in rounds]
            report["goals"] = {name: {**spread([r["ratios"][name] for r in rounds]), "per_round": [r["ratios"][name] for r in rounds]}
                               for name in rounds[0]["ratios"]}
            with phase(f"bounded load: {args.load_requests} requests at c{args.load_clients}"):
                report["bounded_load"] = bounded_load(url, mixed, expected, args.load_requests, args.load_clients)
            with phase("perf_analyzer"):
                report["perf_analyzer"] = perf_analyzer(url, ENTRY, exported.graph_models, {"variable": data["variable"], "fixed": data["fixed"]},
                                                        concurrency, args.perf_analyzer_window_ms, Path(tmp))
    report["phase_s"] = phase.seconds
    report["load_average_at_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    plot(report, args.png)
    for name, goal in report["goals"].items():
        print(f"{name}: {goal['min']:.2f} / {goal['median']:.2f} / {goal['max']:.2f} (min / median / max)")
    load = report["bounded_load"]
    print(f"{load['requests']} requests at c{load['clients']}: lost {load['lost']}, errors {load['errors']}, wrong {load['wrong']}, "
          f"p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms, p99/p50 {load['p99_over_p50']:.2f}")
    print(f"wrote {args.json} and {args.png}")
    return 0 if load["lost"] == load["errors"] == load["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
