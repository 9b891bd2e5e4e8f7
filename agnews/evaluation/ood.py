"""Out-of-domain check: another labelled folder in the ag_news_csv format scored through the Predictor, reported beside
the in-domain test numbers (a model that gains in-domain can lose elsewhere)."""

from __future__ import annotations

import html

import numpy as np

from agnews.errors import DataError
from agnews.evaluation import EvaluationError
from agnews.evaluation.report import Section, html_table, md_table


def load_ood(folder, label_names, sample_size: int | None = None, seed: int = 0):
    """test.csv of ``folder`` (classes.txt, if present, must list the run's labels in order); a seeded stratified
    sample of ``sample_size`` rows when given."""
    from agnews.data.sources import read_ag_news_csv, read_classes
    from agnews.evaluation.source import check_ag_news_folder

    path = check_ag_news_folder(folder, label_names)
    classes = path / "classes.txt"
    if classes.is_file() and read_classes(classes) != list(label_names):
        raise EvaluationError(
            f"{classes} lists {read_classes(classes)}, but the run predicts {list(label_names)}: "
            "the out-of-domain folder must use the run's classes in the same order"
        )
    try:
        split = read_ag_news_csv(path / "test.csv", "test", len(label_names))
    except DataError as exc:
        raise EvaluationError(f"data={folder}: not in the ag_news_csv format: {exc}") from None
    if sample_size is not None and sample_size < len(split):
        from agnews.data.splits import stratified_take

        split, _ = stratified_take(split, sample_size, seed, "sample_size")
    return path, split


def ood_section(source, folder, sample_size: int | None = None, seed: int = 0) -> Section:
    from agnews.runs.metrics import classification_report, log_loss

    path, split = load_ood(folder, source.label_names, sample_size, seed)
    probs = source.predictor().predict_proba(list(split.texts))
    labels = np.asarray(split.labels, dtype=np.int64)
    ood = classification_report(probs, labels, source.label_names)
    test = source.predictions("test")
    ind = classification_report(test.probs, test.labels, source.label_names)
    ood_nll, ind_nll = log_loss(probs, labels), log_loss(test.probs, test.labels)
    header = ["", "in-domain test", "out-of-domain", "difference (ood - in-domain)"]
    rows = [
        ("examples", ind["num_examples"], ood["num_examples"], ""),
        ("accuracy", ind["accuracy"], ood["accuracy"], ood["accuracy"] - ind["accuracy"]),
        ("macro-F1", ind["f1_macro"], ood["f1_macro"], ood["f1_macro"] - ind["f1_macro"]),
        ("NLL", ind_nll, ood_nll, ood_nll - ind_nll),
    ] + [
        (f"F1 {name}", ind["per_class"][name]["f1"], ood["per_class"][name]["f1"],
         ood["per_class"][name]["f1"] - ind["per_class"][name]["f1"])
        for name in source.label_names
    ]
    intro = f"Out-of-domain data: {path}/test.csv ({len(split)} rows scored through the predictor" + (
        f", a seeded stratified sample of {sample_size})." if sample_size is not None and sample_size <= len(split) else ").")
    markdown = intro + "\n\n" + md_table(header, rows)
    html_body = f"<p>{html.escape(intro)}</p>" + html_table(header, rows)
    summary = {"data": str(path), "num_examples": len(split), "accuracy": ood["accuracy"], "f1_macro": ood["f1_macro"],
               "nll": ood_nll, "per_class": ood["per_class"], "confusion_matrix": ood["confusion_matrix"],
               "in_domain": {"accuracy": ind["accuracy"], "f1_macro": ind["f1_macro"], "nll": ind_nll},
               "accuracy_drop": ind["accuracy"] - ood["accuracy"]}
    return Section("ood", "Out-of-domain data", summary, markdown, html_body)
