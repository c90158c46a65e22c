"""Pre- and post-processing steps around a TwoInputNet, for the ensemble tests (importable as
`text_steps`: pytest puts tests/ on sys.path). Only numpy and aitune_triton are imported, so the
served copy of this file runs in the server's Python as it is."""

from __future__ import annotations

import numpy as np

from aitune_triton.triton.steps import StepTensor, step

LABELS = ("short", "medium", "long")
#: A sentence the preprocess step refuses (its function raises), to test the served error path.
BAD_SENTENCE = "boom"


@step(inputs=[StepTensor("text", "TYPE_STRING", [-1])],
      outputs=[StepTensor("x", "TYPE_FP32", [-1, 8]), StepTensor("length", "TYPE_INT64", [-1])])
def featurize(text):
    """Eight features per sentence (its first 8 UTF-8 bytes / 100, zero padded) and its length in bytes."""
    features = np.zeros((len(text), 8), dtype=np.float32)
    lengths = np.zeros(len(text), dtype=np.int64)
    for row, sentence in enumerate(text):
        if sentence == BAD_SENTENCE:
            raise ValueError(f"cannot featurize {sentence!r}")
        data = sentence.encode("utf-8")
        features[row, : min(8, len(data))] = np.frombuffer(data[:8], dtype=np.uint8) / 100.0
        lengths[row] = len(data)
    return {"x": features, "length": lengths}


@step(inputs=[StepTensor("logits", "TYPE_FP32", [-1, 3]), StepTensor("length", "TYPE_INT64", [-1])],
      outputs=[StepTensor("probs", "TYPE_FP32", [-1, 3]), StepTensor("label", "TYPE_STRING", [-1]),
               StepTensor("score", "TYPE_FP64", [-1])])
def classify(logits, length):
    """Softmax of the logits, the label of the largest, and a score mixing the text length in."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    labels = np.array([LABELS[i] for i in probs.argmax(axis=1)], dtype=object)
    return {"probs": probs, "label": labels, "score": probs.max(axis=1).astype(np.float64) * length}


@step(inputs=[StepTensor("logits", "TYPE_FP32", [-1, 3])], outputs=[StepTensor("probs", "TYPE_FP32", [-1, 3])])
def wrong_dtype(logits):
    """Returns float64 where float32 is declared: the served check answers an error."""
    return {"probs": logits.astype(np.float64)}


@step(inputs=[StepTensor("logits", "TYPE_FP32", [-1, 3])], outputs=[StepTensor("probs", "TYPE_FP32", [-1, 3])])
def softmax(logits):
    """Softmax of the logits (a postprocess step alone: the ensemble takes the module's own inputs)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"probs": (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)}
