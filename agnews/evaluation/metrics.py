"""Classification metrics (torchmetrics) from per-example class probabilities and gold labels."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_report(probs: torch.Tensor, labels: torch.Tensor, label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows: gold, cols: pred)."""
    num_classes = len(label_names)
    preds = probs.argmax(dim=-1)
    args = dict(num_classes=num_classes, average=None)
    precision = multiclass_precision(preds, labels, **args)
    recall = multiclass_recall(preds, labels, **args)
    f1 = multiclass_f1_score(preds, labels, **args)
    support = torch.bincount(labels, minlength=num_classes)
    return {
        "num_examples": int(labels.numel()),
        "accuracy": float(multiclass_accuracy(preds, labels, num_classes=num_classes, average="micro")),
        "f1_macro": float(multiclass_f1_score(preds, labels, num_classes=num_classes, average="macro")),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, labels, num_classes=num_classes).tolist(),
        "label_names": list(label_names),
    }
