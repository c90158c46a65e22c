"""Benchmark: what serving MiniLM's tokenizer and pooling as ensemble steps costs per request.

Needs a MiniLM checkpoint (``make demo`` writes ``checkpoints/minilm``). Exports it with the steps
of ``examples/minilm_text.py`` into a temporary repository, starts the embedded Triton server and
measures, side by side in one run (three rounds by default, the variants' order rotated between
rounds), the latency of one request of 1 and of 8 sentences:

* ``ensemble``: raw sentences (BYTES) to ``minilm_text`` over HTTP (tokenize, transformer and
  pooling all in the server);
* ``client_steps``: the client tokenizes, sends the token tensors to the entry model ``minilm`` over
  HTTP and pools the returned hidden states itself;
* ``in_process``: tokenize -> tuned module -> pool in this process.

Prints min / median / max of the per-round medians (ms) and the ratios ensemble / client_steps and
ensemble / in_process per round. Usage:
``.venv/bin/python benchmarks/text_ensemble.py [--checkpoint checkpoints/minilm] [--rounds 3] [--calls 10]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import aitune_triton  # noqa: E402
import minilm_text  # noqa: E402
from aitune_triton.triton import TritonServer  # noqa: E402
from minilm import SENTENCES, load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/minilm"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per variant, batch and round")
    args = parser.parse_args()
    model, _ = load_model()
    module = aitune_triton.Module(model, name="minilm")
    aitune_triton.load(module, args.checkpoint)
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as directory, torch.no_grad():
        repository = Path(directory) / "repo"
        aitune_triton.export(args.checkpoint, repository, preprocess=minilm_text.tokenize, postprocess=minilm_text.mean_pool,
                             ensemble_name="minilm_text", show_progress=False)
        with TritonServer(repository, show_progress=False) as server:
            client = httpclient.InferenceServerClient(server.http_url)

            def ensemble(sentences):
                text = httpclient.InferInput("text", [len(sentences)], "BYTES")
                text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
                return client.infer("minilm_text", [text]).as_numpy("embeddings")

            def client_steps(sentences):
                tokens = minilm_text.tokenize(text=np.array(sentences, dtype=object))
                inputs = []
                for name, array in tokens.items():
                    tensor = httpclient.InferInput(name, list(array.shape), "INT64")
                    tensor.set_data_from_numpy(array)
                    inputs.append(tensor)
                result = client.infer("minilm", inputs, outputs=[httpclient.InferRequestedOutput("last_hidden_state")])
                return minilm_text.mean_pool(last_hidden_state=result.as_numpy("last_hidden_state"),
                                             attention_mask=tokens["attention_mask"])["embeddings"]

            def in_process(sentences):
                tokens = minilm_text.tokenize(text=np.array(sentences, dtype=object))
                hidden = module(**{n: torch.from_numpy(a) for n, a in tokens.items()}).last_hidden_state.numpy()
                return minilm_text.mean_pool(last_hidden_state=hidden, attention_mask=tokens["attention_mask"])["embeddings"]

            variants = {"ensemble": ensemble, "client_steps": client_steps, "in_process": in_process}
            batches = {"1 sentence": SENTENCES[:1], "8 sentences": SENTENCES[:8]}
            for sentences in batches.values():  # warm: the tokenizer loads on the first call of each process
                reference = in_process(sentences)
                for call in variants.values():
                    assert np.abs(call(sentences) - reference).max() <= 1e-4
            medians: dict[tuple[str, str], list[float]] = {}
            names = list(variants)
            for round_index in range(args.rounds):
                order = names[round_index % len(names):] + names[: round_index % len(names)]
                for batch, sentences in batches.items():
                    for name in order:
                        times = []
                        for _ in range(args.calls):
                            start = time.perf_counter()
                            variants[name](sentences)
                            times.append((time.perf_counter() - start) * 1e3)
                        medians.setdefault((batch, name), []).append(statistics.median(times))
            client.close()
    table = Table(title=f"Latency per request, ms: min / median / max of {args.rounds} round medians ({args.calls} calls each)")
    for column in ("batch", *names, "ensemble / client_steps per round", "ensemble / in_process per round"):
        table.add_column(column, justify="right")
    for batch in batches:
        cells = [f"{min(m):.1f} / {statistics.median(m):.1f} / {max(m):.1f}" for m in (medians[(batch, n)] for n in names)]
        ratios = [", ".join(f"{a / b:.2f}" for a, b in zip(medians[(batch, "ensemble")], medians[(batch, other)]))
                  for other in ("client_steps", "in_process")]
        table.add_row(batch, *cells, *ratios)
    console.print(table)
    console.print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
