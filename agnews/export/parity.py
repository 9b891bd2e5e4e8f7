"""Parity of every exported variant with PyTorch, measured through :class:`agnews.inference.Predictor`.

Texts: by default the run's own test split, rebuilt from its config and data source, ``num_texts`` rows spread evenly
over it (so lengths vary and padding matters, and labels give an accuracy per variant); or the lines of
``parity.texts_file``. Both sides go through one inference loop (the Predictor's model:
tokenize, length-sorted padded batches, backend), PyTorch fp32 on ``model/`` against ONNX Runtime on the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agnews.errors import AGNewsError
from agnews.export.errors import ExportError
from agnews.export.source import ExportSource


@dataclass(frozen=True)
class ParityTexts:
    texts: list[str]
    labels: np.ndarray | None  # class indices when the texts came from the run's data
    source: str

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self.texts), "labelled": self.labels is not None}


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def texts_from_file(path: str | Path, count: int) -> ParityTexts:
    path = Path(path).expanduser()
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"parity.texts_file={path}: unreadable ({exc})") from exc
    texts = [line for line in lines if line]
    if not texts:
        raise ExportError(f"parity.texts_file={path}: holds no text (one text per line expected)")
    return ParityTexts(_spread(texts, count), None, f"file {path}")


def texts_from_run(source: ExportSource, count: int) -> ParityTexts:
    """The run's test split as the run saw it (rebuilt from its config by :func:`agnews.data.run_splits.load_run_split`)."""
    from agnews.data.run_splits import load_run_split

    try:
        split = load_run_split(source.run, "test")
    except (AGNewsError, ValueError) as exc:
        raise ExportError(
            f"cannot rebuild the run's test split for the parity check ({exc}); "
            "pass parity.texts_file=<file with one text per line> instead"
        ) from exc
    rows = _spread(list(range(len(split))), count)
    source_name = (source.run.config.get("data") or {}).get("source", "?")
    return ParityTexts(
        [split.texts[i] for i in rows],
        np.asarray([split.labels[i] for i in rows], dtype=np.int64),
        f"run test split ({source_name} data), {len(rows)} of {len(split)} rows spread evenly",
    )


def load_parity_texts(source: ExportSource, texts_file: str | None, count: int) -> ParityTexts:
    return texts_from_file(texts_file, count) if texts_file else texts_from_run(source, count)


def predictor_logits(predictor, texts: list[str]) -> np.ndarray:
    """Logits through the Predictor's own loop (validation, tokenizer, padded batches, backend)."""
    return predictor.predict_logits(texts)


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict:
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    result = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
    }
    if labels is not None:
        result["accuracy"] = float((candidate.argmax(1) == labels).mean())
    return result
