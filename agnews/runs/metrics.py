"""The classification report of ``metrics.json`` from numpy arrays (for producers without torch, e.g. ensembles).

Same keys and the same conventions as :func:`agnews.evaluation.metrics.classification_report` (torchmetrics): a
precision/recall/F1 with a zero denominator is 0, and macro-F1 averages over the classes that occur among the gold
labels or the predictions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_report(probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows: gold, cols: pred)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(label_names)
    preds = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    present = (predicted + support) > 0
    return {
        "num_examples": int(len(labels)),
        "accuracy": float(tp.sum() / len(labels)) if len(labels) else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion.tolist(),
        "label_names": list(label_names),
    }


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-probability of the gold class (probabilities clipped at ``eps``: stored CSVs round to 1e-6)."""
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.log(np.clip(picked, eps, None)).mean()) if len(labels) else float("nan")
