"""Real sentence traffic for MiniLM and the served / in-process measurements on it, shared by
``benchmarks/serving.py`` and the demo (``examples/minilm.py``).

The sentence set is the demo's sentences plus ``benchmarks/data/sentences.txt`` (English sentences
written for this benchmark), each 6..51 tokens with ``[CLS]`` and ``[SEP]``; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from _load import LoadResult, closed_loop  # beside this file

SENTENCES_FILE = Path(__file__).resolve().parent / "data" / "sentences.txt"
MIN_TOKENS, MAX_TOKENS = 6, 51
Request = dict[str, torch.Tensor]


def sentence_set(tokenizer: Any, extra: Sequence[str] = ()) -> list[str]:
    """``extra`` (e.g. the demo's sentences) and the sentences of ``SENTENCES_FILE``, without
    duplicates, keeping those of ``MIN_TOKENS``..``MAX_TOKENS`` tokens, shuffled with a fixed seed
    so that lengths mix in the order requests are sent."""
    sentences = list(dict.fromkeys([*extra, *SENTENCES_FILE.read_text(encoding="utf-8").splitlines()]))
    kept = [s for s in sentences if s.strip() and MIN_TOKENS <= len(tokenizer(s)["input_ids"]) <= MAX_TOKENS]
    random.Random(0).shuffle(kept)
    return kept


def tokens(tokenizer: Any, sentences: Sequence[str], length: int | None = None) -> Request:
    """Tokenized ``sentences`` as one batch: padded to the longest, or padded / cut to ``length``."""
    if length is None:
        return dict(tokenizer(list(sentences), padding=True, return_tensors="pt"))
    return dict(tokenizer(list(sentences), padding="max_length", truncation=True, max_length=length, return_tensors="pt"))


def singles(tokenizer: Any, sentences: Sequence[str], length: int | None = None) -> list[Request]:
    """One request per sentence (batch 1): unpadded, or padded / cut to ``length`` tokens."""
    return [tokens(tokenizer, [s], length) for s in sentences]


def sorted_batches(tokenizer: Any, sentences: Sequence[str], batch: int = 8) -> list[Request]:
    """The in-process ceiling's traffic: sentences sorted by length, in batches of ``batch``, each
    padded to its longest sentence."""
    ordered = sorted(sentences, key=lambda s: len(tokenizer(s)["input_ids"]))
    return [tokens(tokenizer, ordered[i : i + batch]) for i in range(0, len(ordered), batch)]


def mixed_requests(tokenizer: Any, sentences: Sequence[str], count: int, max_batch: int = 8, seed: int = 0) -> list[Request]:
    """``count`` requests of 1..``max_batch`` sentences drawn from ``sentences`` (a fixed seed),
    each padded to its own longest sentence: mixed batch sizes and lengths."""
    rng = random.Random(seed)
    return [tokens(tokenizer, rng.sample(list(sentences), rng.randint(1, max_batch))) for _ in range(count)]


def batch_sizes(requests: Sequence[Request]) -> list[int]:
    """Sentences in each request."""
    return [int(r["input_ids"].shape[0]) for r in requests]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op torch threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def in_process_caller(module: Any) -> Any:
    """A caller for :func:`closed_loop` running ``module`` without autograd (no_grad is per thread)."""

    def call(**inputs: torch.Tensor) -> Any:
        with torch.inference_mode():
            return module(**inputs)

    return call


def in_process_load(module: Any, requests: Sequence[Request], seconds: float, threads: int) -> LoadResult:
    """One in-process caller sending ``requests`` one after another for ``seconds`` with ``threads`` torch threads."""
    with torch_threads(threads):
        return closed_loop(lambda: in_process_caller(module), requests, 1, seconds=seconds)


def in_process_pass_s(module: Any, batches: Sequence[Request], threads: int) -> float:
    """Seconds to run every batch once, one after another (after one warm-up call), with ``threads`` torch threads."""
    call = in_process_caller(module)
    with torch_threads(threads):
        call(**batches[0])
        start = time.perf_counter()
        for batch in batches:
            call(**batch)
        return time.perf_counter() - start


def latency_ms(call: Any, inputs: Request, repeats: int) -> float:
    """Median latency of ``repeats`` calls of ``call(**inputs)`` after one warm-up call, ms."""
    return closed_loop(lambda: call, [inputs], 1, requests=repeats).percentile_ms(50)


def summary(load: LoadResult, weights: Sequence[int]) -> dict[str, Any]:
    """sentences/s, requests/s, p50/p99 latency (ms), answered, errors and lost of one load, for the JSON report."""
    return {
        "clients": load.clients,
        "sentences_per_s": load.per_s(weights),
        "requests_per_s": load.per_s(),
        "p50_ms": load.percentile_ms(50),
        "p99_ms": load.percentile_ms(99),
        "answered": len(load.indices),
        "errors": len(load.errors),
        "lost": load.lost,
        "first_error": load.errors[0][1] if load.errors else None,
    }


def max_abs_diff(answer: Any, expected: Any) -> float:
    """Largest |answer - expected| over every tensor of two outputs of the same structure (inf when they differ in shape)."""
    got, want = _tensors(answer), _tensors(expected)
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return float("inf")
    return max((float((g.float() - w.float()).abs().max()) for g, w in zip(got, want) if g.numel()), default=0.0)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):  # dicts and transformers' ModelOutput
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []
