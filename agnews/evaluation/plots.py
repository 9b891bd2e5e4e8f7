"""Figures for the evaluation report: matplotlib on the Agg backend, returned as PNG bytes.

matplotlib is imported inside the functions: the CLI imports this package to compose configs, and a run without the
``report`` extra must still be able to say which extra is missing.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers/CI; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (figures left open leak memory across sections)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def img_tag(png_bytes: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as a data: URI (the report stays one self-contained file)."""
    if not alt or not alt.strip():
        raise ValueError("every report image needs a non-empty alt text")
    data = base64.b64encode(png_bytes).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt, quote=True)}">'


def confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], title: str = "Confusion matrix") -> bytes:
    """Rows: gold label, columns: predicted label; counts written in every cell."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.int64)
    n = len(label_names)
    fig, ax = plt.subplots(figsize=(0.9 * n + 2.2, 0.8 * n + 1.6))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), labels=list(label_names), rotation=30, ha="right")
    ax.set_yticks(range(n), labels=list(label_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    threshold = m.max() / 2 if m.size and m.max() > 0 else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    return png(fig)


def per_class_bars(per_class: dict, title: str = "Per-class precision / recall / F1") -> bytes:
    """Grouped bars of precision, recall and F1 for each class (``per_class`` as in a classification report)."""
    plt = _pyplot()
    names = list(per_class)
    x = np.arange(len(names))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 3.6))
    for k, metric in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * width, [per_class[c][metric] for c in names], width, label=metric)
    ax.set_xticks(x, labels=names)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return png(fig)


def reliability_diagram(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15, title: str = "Reliability diagram") -> bytes:
    """Accuracy per confidence bin against the diagonal, with the share of examples per bin underneath."""
    plt = _pyplot()
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Same binning as torchmetrics' calibration error: bin i holds (edges[i], edges[i+1]].
    idx = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    acc = np.divide(np.bincount(idx, weights=correct, minlength=n_bins), counts, out=np.zeros(n_bins), where=counts > 0)
    conf = np.divide(np.bincount(idx, weights=confidences, minlength=n_bins), counts, out=np.zeros(n_bins), where=counts > 0)
    centers = (edges[:-1] + edges[1:]) / 2
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    shown = counts > 0
    ax.bar(centers[shown], acc[shown], width=1 / n_bins, edgecolor="black", alpha=0.8, label="accuracy")
    ax.bar(centers[shown], (conf - acc)[shown], bottom=acc[shown], width=1 / n_bins, color="red", alpha=0.3, label="gap")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    ax2.bar(centers, counts / max(1, counts.sum()), width=1 / n_bins, color="grey")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("share")
    fig.tight_layout()
    return png(fig)


def bar_chart(values: dict[str, float], title: str, ylabel: str = "", ylim: tuple[float, float] | None = (0, 1.05)) -> bytes:
    """A plain bar chart of named values (slices, robustness perturbations, ...)."""
    plt = _pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(names) + 2), 3.4))
    ax.bar(range(len(names)), [values[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), labels=names, rotation=25, ha="right")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return png(fig)
