"""A transformer classifier behind any backend: tokenize, length-sorted batches, logits, softmax, original order."""

from __future__ import annotations

import numpy as np

from agnews.inference.backends import Backend
from agnews.inference.encoding import TextEncoder


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class TransformerModel:
    """``predict_proba(texts)`` for a token-id model; ``backend`` runs the padded batches."""

    def __init__(self, encoder: TextEncoder, backend: Backend, num_labels: int, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.backend = backend
        self.num_labels = num_labels
        self.batch_size = batch_size

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        for rows, inputs in self.encoder.batches(texts, self.batch_size):
            out[rows] = self.backend(inputs)
        return out

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return softmax(self.predict_logits(texts).astype(np.float64))

    def describe(self) -> dict:
        return {
            **self.backend.describe(),
            "max_length": self.encoder.max_length,
            "padding_side": self.encoder.padding_side,
            "batch_size": self.batch_size,
        }
