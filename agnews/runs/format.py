"""File names of the run directory format and the small writers every producer shares."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "run.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
# Beside the weights of every exported model: label names, max length, padding side, how to feed it.
MODEL_INFO_FILE = "agnews_model.json"
EXPORT_DIR = "export"
# Inside an export folder: what was exported, how, with which parity and checksums.
EXPORT_INFO_FILE = "export.json"
ONNX_MODEL_FILE = "model.onnx"
BUNDLE_DIR = "bundle"
BUNDLE_MANIFEST_FILE = "manifest.json"


def predictions_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / PREDICTIONS_DIR / f"{split}.csv"


def write_json(path: str | Path, payload: dict) -> None:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
