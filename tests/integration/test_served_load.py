"""The bounded load of ``benchmarks/serving.py`` (10,000 mixed-length requests at concurrency 32),
small: a few hundred mixed-length requests at concurrency 8 through ``RemoteModule`` to the
session's server, with the benchmark's own load generator and comparison. Nothing may be lost and
every answer must equal its own eager result. No speed is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import ORT_TORCHSCRIPT_MODEL

import aitune_triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _load import closed_loop  # noqa: E402
from _traffic import max_abs_diff  # noqa: E402

REQUESTS = 300
CLIENTS = 8


@pytest.mark.triton
def test_mixed_length_load_at_c8_loses_nothing_and_every_answer_equals_its_own_eager_result(served):
    eager, _ = served.extra[ORT_TORCHSCRIPT_MODEL]
    generator = torch.Generator().manual_seed(15)
    distinct = []
    for _ in range(40):  # batch 1..3 and length 4..9: the recorded ranges; masks hide a random tail
        batch, length = (int(torch.randint(low, high + 1, (), generator=generator)) for low, high in ((1, 3), (4, 9)))
        valid = torch.randint(1, length + 1, (batch, 1), generator=generator)
        mask = (torch.arange(length).expand(batch, length) < valid).float()
        # As a tokenizer pads: the pad id 0 where the mask is 0 (the served model refuses data there).
        ids = torch.randint(1, 50, (batch, length), generator=generator) * mask.long()
        distinct.append({"ids": ids, "mask": mask})
    assert len({tuple(r["ids"].shape) for r in distinct}) > 5  # mixed shapes, not one
    with torch.no_grad():
        expected = [eager(**request) for request in distinct]

    load = closed_loop(
        lambda: aitune_triton.RemoteModule(served.server.grpc_url, ORT_TORCHSCRIPT_MODEL),
        distinct,
        CLIENTS,
        requests=REQUESTS,
        check=lambda index, answer: max_abs_diff(answer, expected[index % len(expected)]) <= 1e-4,
        close_callers=True,
    )

    assert load.errors == []
    assert (load.sent, load.lost) == (REQUESTS, 0)
    assert sorted(load.indices) == list(range(REQUESTS))
    assert load.wrong == []
    assert len(load.latencies_ms) == REQUESTS and min(load.latencies_ms) > 0


def test_max_abs_diff_sees_a_changed_value_and_a_changed_shape_in_nested_outputs():
    answer = {"hidden": torch.zeros(2, 3), "pooled": [torch.ones(2)]}
    assert max_abs_diff(answer, {"hidden": torch.zeros(2, 3), "pooled": [torch.ones(2)]}) == 0.0
    assert max_abs_diff(answer, {"hidden": torch.zeros(2, 3), "pooled": [torch.tensor([1.0, 1.5])]}) == 0.5
    assert max_abs_diff(answer, {"hidden": torch.zeros(2, 4), "pooled": [torch.ones(2)]}) == float("inf")
