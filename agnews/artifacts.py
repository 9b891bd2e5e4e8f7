"""Run artifacts: the on-disk contract that export, ensembles, evaluation reports and serving consume.

A run directory holds::

    config.yaml                 resolved config (Hydra's unresolved copy is in .hydra/)
    checkpoints/best.ckpt       best by the monitored validation metric (Lightning format, for resuming)
    checkpoints/last.ckpt       last (resume with ckpt_path=...)
    model/                      final model: save_pretrained (safetensors) + tokenizer + agnews_model.json
    metrics.json                val/test accuracy, macro-F1, per-class P/R/F1, confusion matrix
    predictions/{val,test}.csv  id, label, pred, prob_<class>... per example, keyed by a stable example id
    run.json                    manifest: artifact paths, timings, versions, data sizes
"""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path
from typing import Sequence

import torch

from agnews.models.exported import MODEL_INFO_FILE  # one home for the file name

MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "run.json"
PREDICTIONS_DIR = "predictions"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def probability_columns(label_names: Sequence[str]) -> list[str]:
    return [f"prob_{name}" for name in label_names]


def write_predictions(
    path: Path, ids: Sequence[str], labels: torch.Tensor, probs: torch.Tensor, label_names: Sequence[str]
) -> None:
    """One row per example, in split order: ``id,label,pred,prob_<class>...`` (labels and preds are 0-based)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = probs.argmax(dim=-1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "pred", *probability_columns(label_names)])
        for row, example_id in enumerate(ids):
            writer.writerow(
                [example_id, int(labels[row]), int(preds[row]), *(f"{p:.6f}" for p in probs[row].tolist())]
            )


def read_predictions(path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor, list[str]]:
    """Inverse of :func:`write_predictions`: ids, labels, probabilities and the label names from the header."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    label_names = [column[len("prob_") :] for column in header[3:]]
    ids = [row[0] for row in rows]
    labels = torch.tensor([int(row[1]) for row in rows])
    probs = torch.tensor([[float(x) for x in row[3:]] for row in rows])
    return ids, labels, probs, label_names


def export_model(bundle, output_dir: Path, max_length: int, extra: dict | None = None) -> Path:
    """Save the classifier in Hugging Face form (safetensors) with its tokenizer and the facts needed to feed it."""
    from agnews.models.exported import save_unmerged
    from agnews.models.peft import is_peft_model

    target = output_dir / MODEL_DIR
    if is_peft_model(bundle.model):  # prompt/prefix tuning: adapter + model/base (LoRA/IA3 arrive merged)
        save_unmerged(bundle.model, target)
    else:
        bundle.model.save_pretrained(target, safe_serialization=True)
    bundle.tokenizer.save_pretrained(target)
    write_json(target / MODEL_INFO_FILE, {**bundle.describe(), "max_length": max_length, **(extra or {})})
    return target


def environment() -> dict:
    import lightning
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
