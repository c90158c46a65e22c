"""Benchmark: MiniLM-L6 eager vs tuned in-process vs served by Triton, side by side in one run.

Needs the checkpoint written by ``make demo`` (``checkpoints/minilm``). Exports it into a temporary
model repository, starts the embedded Triton server and measures, on the same machine and in the
same run:

* latency of one batch of 8 sentences: eager, tuned in-process, served (gRPC);
* throughput of single-sentence requests: tuned in-process (one after another) and served with
  1 and 8 concurrent gRPC clients, at natural lengths and padded to one length (Triton's dynamic
  batcher joins only requests of equal shape; the generated model.py runs a joined batch at once).

Prints ratios (tuned/eager, served/in-process), since absolute numbers on these 2-core machines
are noisy. Usage: ``.venv/bin/python benchmarks/served_vs_inprocess.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import aitune_triton  # noqa: E402
from aitune_triton.strategies.validation import measure_latency_ms  # noqa: E402
from aitune_triton.triton import TritonServer  # noqa: E402
from _load import throughput  # noqa: E402  (beside this file)
from minilm import SENTENCES, load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/minilm"))
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    console = Console(width=120)
    if not args.checkpoint.is_dir():
        console.print(f"{args.checkpoint} is missing: run `make demo` first.")
        return 2
    model, tokenizer = load_model()
    eager_model = copy.deepcopy(model)  # once loaded, calls of `model` itself run tuned
    module = aitune_triton.load(model, args.checkpoint)
    batch = dict(tokenizer(SENTENCES[:8], padding=True, return_tensors="pt"))
    singles = [dict(tokenizer([s], return_tensors="pt")) for s in SENTENCES[:16]]
    # Triton's dynamic batcher only joins requests of equal shape: padding every sentence to one
    # length (inside the recorded 6..21 tokens) lets concurrent requests be batched.
    padded = [dict(tokenizer([s], padding="max_length", truncation=True, max_length=16, return_tensors="pt")) for s in SENTENCES[:16]]
    repository = Path(tempfile.mkdtemp(prefix="aitune_triton-bench-")) / "model_repository"
    aitune_triton.export(args.checkpoint, repository, show_progress=False)
    rows = []
    with TritonServer(repository) as server, torch.no_grad():
        remote = aitune_triton.RemoteModule(server.grpc_url, "minilm")
        eager_ms = measure_latency_ms(lambda: eager_model(**batch), args.repeats)
        tuned_ms = measure_latency_ms(lambda: module(**batch), args.repeats)
        served_ms = measure_latency_ms(lambda: remote(**batch), args.repeats)
        rows.append(("batch 8 latency (ms)", f"{eager_ms:.1f}", f"{tuned_ms:.1f}", f"{served_ms:.1f}",
                     f"tuned/eager {tuned_ms / eager_ms:.2f}, served/tuned {served_ms / tuned_ms:.2f}"))
        for label, requests in (("1-sentence req/s, natural length", singles), ("1-sentence req/s, padded to 16", padded)):
            in_process = throughput(lambda: module, 1, args.seconds, requests)  # noqa: B023 (run now)
            served_1 = throughput(lambda: aitune_triton.RemoteModule(server.grpc_url, "minilm"), 1, args.seconds, requests)
            served_8 = throughput(lambda: aitune_triton.RemoteModule(server.grpc_url, "minilm"), 8, args.seconds, requests)
            rows.append((label, "", f"{in_process:.0f}", f"{served_1:.0f} (1 client) / {served_8:.0f} (8 clients)",
                         f"served/in-process {served_1 / in_process:.2f} (1) / {served_8 / in_process:.2f} (8)"))
    table = Table(title=f"MiniLM-L6, {torch.get_num_threads()} torch threads, backend {module.tuned_graphs[0].backend.name}")
    for column in ("measure", "eager", "tuned in-process", "served gRPC", "ratios"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
