"""Calibration: ECE and MCE (torchmetrics, 15 equal-width bins), NLL, Brier score, reliability diagrams, and temperature
scaling fitted on the validation split and applied to test (every number and figure before and after).

Stored predictions hold probabilities, not logits: ``log(p)`` serves as logits (softmax(log p / T) is p for T = 1), so
temperature scaling needs nothing but the stored CSVs.
"""

from __future__ import annotations

import numpy as np

from agnews.evaluation import EvaluationError
from agnews.evaluation.report import Section, fmt, html_table, md_image, md_table

N_BINS = 15
MIN_PROB = 1e-12  # stored CSVs round to 1e-6: a stored 0 must not become log(0)


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), MIN_PROB, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(log_probs(probs) / temperature)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, MIN_PROB, None)).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over examples of sum_k (p_k - 1[y = k])^2 (0 best, 2 worst)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_errors(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict:
    """ECE (norm l1) and MCE (norm max) by torchmetrics' multiclass calibration error (top-label confidence)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    k = p.shape[1]
    return {
        "ece": float(multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="l1")),
        "mce": float(multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="max")),
    }


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict:
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    return {
        **calibration_errors(probs, labels, n_bins),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(log p / T) (scipy, bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    logits = log_probs(probs)
    labels = np.asarray(labels, dtype=np.int64)

    def loss(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]).mean())

    # T in [e^-4, e^4] ~ [0.02, 55]: far beyond any useful temperature on either side.
    result = minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def calibration_section(source, n_bins: int = N_BINS) -> Section:
    from agnews.evaluation import plots
    from agnews.evaluation.report import Section

    if not source.has_predictions("val"):
        raise EvaluationError(
            f"{source.path}: calibration needs validation predictions (predictions/val.csv) to fit the temperature, "
            f"and the run stored only {source.stored_splits or 'none'}; train with scoring.splits=[val,test] or run "
            "with sections.calibration=false"
        )
    val, test = source.predictions("val"), source.predictions("test")
    temperature = fit_temperature(val.probs, val.labels)
    scaled = apply_temperature(test.probs, temperature)
    before = calibration_metrics(test.probs, test.labels, n_bins)
    after = calibration_metrics(scaled, test.labels, n_bins)
    val_before = calibration_metrics(val.probs, val.labels, n_bins)
    val_after = calibration_metrics(apply_temperature(val.probs, temperature), val.labels, n_bins)
    correct = test.preds == test.labels
    figures = {
        "reliability_before": plots.reliability_diagram(
            test.probs.max(axis=1), correct, n_bins, f"Test, before temperature scaling (ECE {before['ece']:.3f})"),
        "reliability_after": plots.reliability_diagram(
            scaled.max(axis=1), scaled.argmax(axis=1) == test.labels, n_bins,
            f"Test, after temperature scaling T={temperature:.3f} (ECE {after['ece']:.3f})"),
    }
    names = ["ece", "mce", "nll", "brier", "accuracy", "mean_confidence"]
    rows = [(n, before[n], after[n], val_before[n], val_after[n]) for n in names]
    header = ["metric", "test before", "test after", "val before", "val after"]
    alt_b = f"Reliability diagram of the test split before temperature scaling, ECE {before['ece']:.4f}"
    alt_a = f"Reliability diagram of the test split after temperature scaling (T={temperature:.3f}), ECE {after['ece']:.4f}"
    intro = (
        f"Temperature T = {fmt(temperature)} fitted on {len(val)} validation examples (NLL of softmax(log p / T)), "
        f"applied to {len(test)} test examples. ECE/MCE: top-label confidence, {n_bins} equal-width bins "
        "(torchmetrics); Brier: multiclass (sum over classes, 0 best). Temperature scaling never changes the argmax, "
        "so accuracy is the same before and after."
    )
    markdown = intro + "\n\n" + md_table(header, rows) + "\n" + md_image("reliability_before", alt_b) + " " + \
        md_image("reliability_after", alt_a) + "\n"
    html_body = (
        f"<p>{intro.replace('&', '&amp;').replace('<', '&lt;')}</p>" + html_table(header, rows)
        + '<div class="figures">' + plots.img_tag(figures["reliability_before"], alt_b)
        + plots.img_tag(figures["reliability_after"], alt_a) + "</div>"
    )
    summary = {"temperature": temperature, "n_bins": n_bins, "num_val": len(val), "num_test": len(test),
               "before": before, "after": after, "val_before": val_before, "val_after": val_after}
    return Section("calibration", "Calibration", summary, markdown, html_body, figures)
