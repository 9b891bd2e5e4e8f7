"""Error analysis of the test split: the most confident mistakes with their texts, the most frequent confusions with
examples, and accuracy per slice (text length in words; rows with an empty title)."""

from __future__ import annotations

import html

import numpy as np

from agnews.evaluation.report import Section, html_table, md_table

# Upper bounds (inclusive) of the word-count buckets; AG News texts are ~20-60 words.
LENGTH_BUCKETS = (20, 30, 40, 60)


def length_bucket(words: int, bounds=LENGTH_BUCKETS) -> str:
    low = 1
    for bound in bounds:
        if words <= bound:
            return f"{low}-{bound} words"
        low = bound + 1
    return f">{bounds[-1]} words"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mistakes_by_confidence(labels, probs, ids=None) -> list[int]:
    """Positions of the wrong predictions, most confident first; ties by id (by position without ids), so the order
    is stable. The one ranking of mistakes: the report and the W&B tables both use it."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (examples, classes) matching {len(labels)} labels, got {probs.shape}")
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels).tolist()
    return sorted(wrong, key=lambda i: (-confidence[i], ids[i] if ids is not None else i))


def error_analysis(ids, labels, probs, texts, label_names, empty_title: dict | None = None, k: int = 10,
                   top_confusions: int = 5, examples_per_confusion: int = 3) -> dict:
    order = mistakes_by_confidence(labels, probs, ids)
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(preds != labels)
    mistakes = [
        {"id": ids[i], "gold": label_names[labels[i]], "pred": label_names[preds[i]],
         "confidence": float(confidence[i]), "gold_prob": float(probs[i, labels[i]]), "text": texts[i]}
        for i in order[:k]
    ]
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in order:
        pairs.setdefault((int(labels[i]), int(preds[i])), []).append(i)
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top_confusions]
    confusions = [
        {"gold": label_names[g], "pred": label_names[p], "count": len(rows),
         "share_of_errors": len(rows) / max(1, len(wrong)),
         "examples": [{"id": ids[i], "confidence": float(confidence[i]), "text": texts[i]}
                      for i in rows[:examples_per_confusion]]}
        for (g, p), rows in ranked
    ]
    correct = preds == labels
    slices: dict[str, dict] = {}

    def add(group: str, name: str, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if n:
            slices.setdefault(group, {})[name] = {"count": n, "accuracy": float(correct[mask].mean())}

    words = np.array([len(t.split()) for t in texts])
    bucket_names = [length_bucket(w) for w in words]
    for name in [length_bucket(b) for b in LENGTH_BUCKETS] + [length_bucket(LENGTH_BUCKETS[-1] + 1)]:
        add("length", name, np.array([b == name for b in bucket_names], dtype=bool))
    if empty_title is not None:
        flags = np.array([empty_title.get(i) for i in ids], dtype=object)
        add("title", "empty title", flags == True)  # noqa: E712 - object array of True/False/None
        add("title", "with title", flags == False)  # noqa: E712
    return {
        "num_examples": int(len(labels)), "num_errors": int(len(wrong)), "accuracy": float(correct.mean()),
        "most_confident_mistakes": mistakes, "top_confusions": confusions, "slices": slices,
        "title_available": empty_title is not None,
    }


def errors_section(source, k: int = 10, top_confusions: int = 5, examples_per_confusion: int = 3,
                   split: str = "test") -> Section:
    from agnews.evaluation import plots

    pred = source.predictions(split)
    texts = source.texts_for(split, pred.ids)
    flags = source.empty_title(split)
    result = error_analysis(pred.ids, pred.labels, pred.probs, texts, pred.label_names, flags, k, top_confusions,
                            examples_per_confusion)
    mist_header = ["id", "gold", "predicted", "confidence", "p(gold)", "text"]
    mist_rows = [(m["id"], m["gold"], m["pred"], m["confidence"], m["gold_prob"], _short(m["text"]))
                 for m in result["most_confident_mistakes"]]
    conf_header = ["gold → predicted", "count", "share of errors", "examples"]
    conf_rows = [(f"{c['gold']} → {c['pred']}", c["count"], c["share_of_errors"],
                  " / ".join(_short(e["text"], 120) for e in c["examples"])) for c in result["top_confusions"]]
    slice_header = ["slice", "group", "examples", "accuracy"]
    slice_rows = [(name, group, s["count"], s["accuracy"]) for group, items in result["slices"].items()
                  for name, s in items.items()]
    figures = {}
    if slice_rows:
        figures["slices_accuracy"] = plots.bar_chart({r[0]: r[3] for r in slice_rows}, "Accuracy per slice", "accuracy")
    title_note = ("" if result["title_available"] else
                  "Title slices: not available (the data source joins title and description).")
    intro = (f"{result['num_errors']} errors among {result['num_examples']} {split} examples "
             f"(accuracy {result['accuracy']:.4f}). Length: words of title + description.")
    alt = "Bar chart of accuracy per slice (text length buckets and title presence)"
    md = [intro, "", f"### The {len(mist_rows)} most confident mistakes", "", md_table(mist_header, mist_rows),
          "### Most frequent confusions", "", md_table(conf_header, conf_rows), "### Slices", "",
          md_table(slice_header, slice_rows), title_note]
    if figures:
        md.append("\n![" + alt + "](figures/slices_accuracy.png)")
    html_body = (
        f"<p>{html.escape(intro)}</p><h3>The {len(mist_rows)} most confident mistakes</h3>"
        + html_table(mist_header, mist_rows, cls="texts") + "<h3>Most frequent confusions</h3>"
        + html_table(conf_header, conf_rows, cls="texts") + "<h3>Slices</h3>" + html_table(slice_header, slice_rows)
        + (f"<p>{html.escape(title_note)}</p>" if title_note else "")
        + (plots.img_tag(figures["slices_accuracy"], alt) if figures else "")
    )
    return Section("errors", "Error analysis", result, "\n".join(md) + "\n", html_body, figures)
