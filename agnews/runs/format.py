"""File names of the run directory format and the small writers every producer shares."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "run.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
# Hydra's own copy of the job: the unresolved config and the command-line overrides.
HYDRA_DIR = ".hydra"
OVERRIDES_FILE = "overrides.yaml"
# Written by ``agnews.train`` in a multirun instead of raising: a failed job, a trial stopped by the pruner.
ERROR_FILE = "error.txt"
PRUNED_FILE = "pruned.txt"
# Beside the weights of every exported model: label names, max length, padding side, how to feed it.
MODEL_INFO_FILE = "agnews_model.json"
EXPORT_DIR = "export"
# Inside an export folder: what was exported, how, with which parity and checksums.
EXPORT_INFO_FILE = "export.json"
ONNX_MODEL_FILE = "model.onnx"
BUNDLE_DIR = "bundle"
BUNDLE_MANIFEST_FILE = "manifest.json"
# A multi-stage run (``agnews.train stages=[...]``): the record of every stage, and the folder of the earlier stages'
# own run directories (``stages/<i>-<name>/``; the last stage is the run itself).
STAGES_FILE = "stages.json"
STAGES_DIR = "stages"


def predictions_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / PREDICTIONS_DIR / f"{split}.csv"


def temporary_sibling(path: Path) -> Path:
    """A name beside ``path`` unique to this writer (concurrent writers never share a temp file)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temp file, then rename: a reader never sees half a file, a failed write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, payload: dict) -> None:
    """Write atomically (temp file + rename): a reader never sees half a file."""
    # Serialise first: a payload json cannot encode fails before anything touches the disk.
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
