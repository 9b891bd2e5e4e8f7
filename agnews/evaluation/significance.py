"""Significance of the difference between two runs on the same test examples: McNemar's exact test on the discordant
pairs and paired bootstrap confidence intervals for the accuracy and macro-F1 differences."""

from __future__ import annotations

import numpy as np

from agnews.errors import DataError
from agnews.evaluation import EvaluationError
from agnews.evaluation.report import Section, fmt, html_table, md_table


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact (binomial) McNemar test: b = A right & B wrong, c = A wrong & B right; two-sided p of b ~ Bin(b + c, 1/2)."""
    from scipy.stats import binomtest

    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    table = [[int((a & b_).sum()), int((a & ~b_).sum())], [int((~a & b_).sum()), int((~a & ~b_).sum())]]
    b, c = table[0][1], table[1][0]
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"table": table, "a_only_correct": b, "b_only_correct": c, "p_value": p}


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of ``labels``/``preds`` ([r, n]), vectorised; classes absent from both gold and
    prediction are left out of the mean (as agnews.runs.metrics.classification_report does)."""
    labels, preds = np.atleast_2d(labels), np.atleast_2d(preds)
    r = labels.shape[0]
    offset = np.arange(r)[:, None] * num_classes
    tp = np.bincount((offset + labels)[labels == preds], minlength=r * num_classes).reshape(r, num_classes)
    gold = np.bincount((offset + labels).ravel(), minlength=r * num_classes).reshape(r, num_classes)
    pred = np.bincount((offset + preds).ravel(), minlength=r * num_classes).reshape(r, num_classes)
    denom = gold + pred
    f1 = np.divide(2 * tp, denom, out=np.zeros((r, num_classes)), where=denom > 0)  # 2PR/(P+R) = 2tp/(gold+pred)
    present = denom > 0
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def paired_bootstrap(labels, preds_a, preds_b, num_classes: int, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, chunk: int = 200) -> dict:
    """Percentile CIs of (A - B) accuracy and macro-F1 over ``n_resamples`` resamples of the examples (the same
    resampled rows for both runs: paired), seeded."""
    if n_resamples < 1:
        raise EvaluationError(f"significance.n_resamples must be >= 1, got {n_resamples}")
    labels, preds_a, preds_b = (np.asarray(x, dtype=np.int64) for x in (labels, preds_a, preds_b))
    n = len(labels)
    rng = np.random.default_rng(seed)
    acc_diff, f1_diff = [], []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
        y, a, b = labels[idx], preds_a[idx], preds_b[idx]
        acc_diff.append((a == y).mean(axis=1) - (b == y).mean(axis=1))
        f1_diff.append(macro_f1(y, a, num_classes) - macro_f1(y, b, num_classes))
    acc_diff, f1_diff = np.concatenate(acc_diff), np.concatenate(f1_diff)
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2

    def summary(observed: float, draws: np.ndarray) -> dict:
        low, high = np.percentile(draws, [lo, hi])
        return {"difference": float(observed), "ci_low": float(low), "ci_high": float(high),
                "excludes_zero": bool(low > 0 or high < 0)}

    return {
        "n_resamples": n_resamples, "seed": seed, "confidence": confidence,
        "accuracy": summary((preds_a == labels).mean() - (preds_b == labels).mean(), acc_diff),
        "f1_macro": summary(macro_f1(labels, preds_a, num_classes)[0] - macro_f1(labels, preds_b, num_classes)[0], f1_diff),
    }


def aligned_test_predictions(source, other, split: str = "test"):
    """Both runs' predictions on ``split`` in the same row order; different examples/labels -> EvaluationError."""
    from agnews.runs import align_predictions

    a, b = source.predictions(split), other.predictions(split)
    try:
        return align_predictions({source.name: a, f"compare:{other.name}": b}, split)
    except DataError as exc:
        raise EvaluationError(
            f"cannot compare {source.path} with {other.path}: the runs were not scored on the same {split} examples "
            f"with the same labels, so a paired test is meaningless.\n{exc}"
        ) from None


def significance_section(source, other, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> Section:
    a, b = aligned_test_predictions(source, other)
    k = len(a.label_names)
    mc = mcnemar_exact(a.preds == a.labels, b.preds == b.labels)
    boot = paired_bootstrap(a.labels, a.preds, b.preds, k, n_resamples, seed)
    name_a, name_b = source.name, other.name
    if name_a == name_b:
        name_a, name_b = f"{name_a} (this)", f"{name_b} (compare)"
    acc_a, acc_b = float((a.preds == a.labels).mean()), float((b.preds == b.labels).mean())
    f1_a, f1_b = float(macro_f1(a.labels, a.preds, k)[0]), float(macro_f1(b.labels, b.preds, k)[0])
    significant = mc["p_value"] < alpha
    verdict = (
        f"McNemar's exact test: p = {mc['p_value']:.4g} "
        + ("< " if significant else ">= ") + f"{alpha}: the accuracy difference is "
        + ("" if significant else "not ") + "statistically significant."
    )
    header = ["", name_a, name_b, "difference (this - compare)", f"{int(boot['confidence'] * 100)} % CI"]
    rows = [
        ("accuracy", acc_a, acc_b, boot["accuracy"]["difference"],
         f"[{fmt(boot['accuracy']['ci_low'])}, {fmt(boot['accuracy']['ci_high'])}]"),
        ("macro-F1", f1_a, f1_b, boot["f1_macro"]["difference"],
         f"[{fmt(boot['f1_macro']['ci_low'])}, {fmt(boot['f1_macro']['ci_high'])}]"),
    ]
    table_header = ["", f"{name_b} right", f"{name_b} wrong"]
    table_rows = [(f"{name_a} right", *mc["table"][0]), (f"{name_a} wrong", *mc["table"][1])]
    intro = (f"{len(a)} test examples scored by both runs (joined by example id). Paired bootstrap: "
             f"{n_resamples} resamples of the examples, seed {seed}, percentile intervals.")
    markdown = "\n\n".join([intro, md_table(header, rows), md_table(table_header, table_rows), verdict]) + "\n"
    import html as _html

    html_body = (f"<p>{_html.escape(intro)}</p>" + html_table(header, rows) + html_table(table_header, table_rows)
                 + f"<p><strong>{_html.escape(verdict)}</strong></p>")
    summary = {
        "this": str(source.path), "compare": str(other.path), "num_examples": len(a),
        "accuracy": {"this": acc_a, "compare": acc_b}, "f1_macro": {"this": f1_a, "compare": f1_b},
        "mcnemar": mc, "bootstrap": boot, "alpha": alpha, "significant": significant,
    }
    return Section("significance", "Significance (this run vs. compare)", summary, markdown, html_body)
