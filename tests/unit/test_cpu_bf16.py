"""bf16 on the CPU for ``aoti`` and ``inductor``: built where the CPU computes bf16 natively
(``aitune_triton._cpu.native_bf16``), unavailable with the reason elsewhere, opt-in, and judged by
the accuracy gate.

The build tests make ``native_bf16`` report True: the CPU here (and CI's) may lack AVX512-BF16,
where torch runs the same bf16 program emulated (slower, but with the same rounding), so the
artifact, its outputs and its save/load are real; only the speed is not what a bf16 CPU gives.
"""

from __future__ import annotations

import pytest
import torch
from nets import eager

import aitune_triton
from aitune_triton import AOTInductorBackend, InductorBackend, MinLatencyStrategy, Module, OneBackendStrategy, _cpu
from aitune_triton.backends.precision import half_precision_reason
from aitune_triton.errors import BackendUnavailableError
from aitune_triton.strategies import CandidateStatus, default_candidates

RECORDED = ((1, 3), (4, 7), (2, 5))
#: Elementwise bound of a bf16 program against fp32 eager on the small net (8 bits of mantissa).
BF16_TOLERANCE = 5e-2


class SeqNet(torch.nn.Module):
    """Token ids and features with batch and sequence axes in; a dict of two floating outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(30, 16)
        self.linear = torch.nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor, features: torch.Tensor):
        hidden = torch.tanh(self.linear(self.embedding(ids) + features))
        return {"hidden": hidden, "pooled": hidden.mean(1)}


def _net() -> SeqNet:
    torch.manual_seed(0)
    return SeqNet().eval()


def _call(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (batch, length), generator=generator), torch.randn(batch, length, 16, generator=generator)


def _record(module: Module) -> None:
    with torch.no_grad():
        for seed, (batch, length) in enumerate(RECORDED):
            module(*_call(batch, length, seed))


def _pooled_cosine(reference, tuned) -> float:
    """A user metric: the lowest cosine of the pooled outputs over the rows of a call."""
    return float(torch.nn.functional.cosine_similarity(reference["pooled"], tuned["pooled"], dim=-1).min())


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This CPU reported as one that computes bf16 natively."""
    monkeypatch.setattr(_cpu, "native_bf16", lambda: True)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    """This CPU reported as one without AVX512-BF16 / AMX (whatever the machine running the test has)."""
    monkeypatch.setattr(_cpu, "native_bf16", lambda: False)


# ----------------------------------------------------------------------- unavailable
@pytest.mark.parametrize("backend", ["aoti", "inductor"])
def test_bf16_on_a_cpu_without_native_bf16_is_unavailable_with_the_cpu_reason(no_bf16_cpu, backend):
    reason = half_precision_reason(backend, "bf16", torch.device("cpu"))

    assert reason == _cpu.native_bf16_reason(backend)
    assert reason is not None and reason.startswith(f"{backend}: precision 'bf16' on the CPU needs AVX512-BF16 or AMX")


@pytest.mark.parametrize("backend", ["aoti", "inductor"])
def test_fp16_on_the_cpu_stays_refused_even_where_bf16_is_native(bf16_cpu, backend):
    reason = half_precision_reason(backend, "fp16", torch.device("cpu"))

    assert reason is not None and reason.startswith(f"{backend}: precision 'fp16' is built for CUDA devices only")
    assert half_precision_reason(backend, "bf16", torch.device("cpu")) is None


def test_bf16_is_opt_in_no_default_candidate_has_it():
    assert all(candidate.precision == "fp32" for candidate in default_candidates())


def test_a_tune_with_bf16_candidates_on_a_cpu_without_bf16_reports_them_unavailable_and_goes_on(no_bf16_cpu, tmp_path):
    net = _net()
    reference = eager(net)
    strategy = MinLatencyStrategy([AOTInductorBackend(precision="bf16"), InductorBackend(precision="bf16"), "eager"])
    module = Module(net, name="test_cpu_bf16_unavailable", strategy=strategy, cache_dir=tmp_path / "cache")
    _record(module)

    with pytest.warns(UserWarning, match="kept on eager"):
        module.tune()

    (graph,) = module.tuned_graphs
    candidates = {c.backend: c for c in graph.report.candidates}
    for label in ("aoti[bf16]", "inductor[bf16]"):
        assert candidates[label].status is CandidateStatus.UNAVAILABLE, label
        assert candidates[label].reason == _cpu.native_bf16_reason(label.split("[")[0])
        assert candidates[label].precision == "bf16"
    assert graph.backend.name == "eager" and candidates["eager"].status is CandidateStatus.CHOSEN
    assert not [p for p in (tmp_path / "cache").rglob("*.pt2")]  # nothing was built for them
    ids, features = _call(3, 6, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(module(ids, features), reference(ids, features))


# --------------------------------------------------------------------------- built
@pytest.mark.parametrize("backend", [AOTInductorBackend(precision="bf16"), InductorBackend(precision="bf16")], ids=["aoti", "inductor"])
def test_bf16_builds_on_a_bf16_cpu_and_matches_eager_within_bf16_tolerance(bf16_cpu, tmp_path, backend):
    net = _net()
    reference = eager(net)
    module = Module(net, name=f"test_cpu_bf16_{backend.name}", cache_dir=tmp_path / "cache",
                    strategy=OneBackendStrategy(backend, accuracy=_pooled_cosine, min_accuracy=0.999, find_max_batch_size=False))
    _record(module)

    module.tune()

    (graph,) = module.tuned_graphs
    chosen = graph.report.candidates[0]
    assert graph.backend.name == backend.name and graph.backend.precision == "bf16"
    assert chosen.status is CandidateStatus.CHOSEN and chosen.precision == "bf16" and chosen.accuracy >= 0.999
    if backend.name == "inductor":  # the saved program holds its weights in bf16
        program = torch.export.load(str(graph.backend.artifacts["model"]))
        assert {t.dtype for t in program.state_dict.values()} == {torch.bfloat16}
    diffs = []
    with torch.no_grad():
        for seed, (batch, length) in enumerate(((3, 6), (1, 3), (4, 7)), start=20):
            ids, features = _call(batch, length, seed)
            got, want = module(ids, features), reference(ids, features)
            for name in ("hidden", "pooled"):
                assert got[name].dtype == torch.float32 and got[name].shape == want[name].shape  # fp32 in and out (CastTo)
                torch.testing.assert_close(got[name], want[name], atol=BF16_TOLERANCE, rtol=BF16_TOLERANCE)
                diffs.append(float((got[name] - want[name]).abs().max()))
    assert max(diffs) > 1e-6  # it computed in bf16: fp32 would match eager to the last bits here

    checkpoint = aitune_triton.save(module, tmp_path / "checkpoint")
    module.deactivate()
    loaded = Module(_net(), name=f"test_cpu_bf16_{backend.name}_loaded")
    with pytest.MonkeyPatch.context() as patch:  # a bf16 artifact loads on any CPU (correct, only slower there)
        patch.setattr(_cpu, "native_bf16", lambda: False)
        aitune_triton.load(loaded, checkpoint)
    try:
        ids, features = _call(2, 5, seed=30)
        with torch.no_grad():
            got, want = loaded(ids, features), reference(ids, features)
        torch.testing.assert_close(got["pooled"], want["pooled"], atol=BF16_TOLERANCE, rtol=BF16_TOLERANCE)
        assert loaded.tuned_graphs[0].backend.precision == "bf16"
    finally:
        loaded.deactivate()


def test_a_bf16_candidate_that_misses_the_accuracy_gate_is_not_kept(bf16_cpu, tmp_path):
    net = _net()
    # prune=False: the accuracy gate is under test; pruning would stop a slow emulated bf16 candidate before its check.
    strategy = MinLatencyStrategy([InductorBackend(precision="bf16"), "eager"], accuracy=_pooled_cosine, min_accuracy=1.01,
                                  find_max_batch_size=False, prune=False)  # fmt: skip
    module = Module(net, name="test_cpu_bf16_gate", strategy=strategy, cache_dir=tmp_path / "cache")
    _record(module)

    with pytest.warns(UserWarning, match="kept on eager"):
        module.tune()

    (graph,) = module.tuned_graphs
    candidates = {c.backend: c for c in graph.report.candidates}
    assert candidates["inductor[bf16]"].status is CandidateStatus.FAILED
    assert "1.01" in candidates["inductor[bf16]"].reason
    assert graph.backend.name == "eager"


def test_half_precision_reason_on_cuda_builds_both_and_int8_never():
    cuda = torch.device("cuda")
    assert half_precision_reason("aoti", "bf16", cuda) is None and half_precision_reason("aoti", "fp16", cuda) is None
    assert half_precision_reason("aoti", "int8", cuda) == "aoti: precision 'int8' has no aoti path here; use the onnxruntime backend for int8"
