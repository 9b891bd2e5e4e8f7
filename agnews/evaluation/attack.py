"""Adversarial robustness: a black-box, greedy, character-level attack (DeepWordBug-style) through the Predictor.

Why our own attack: TextAttack 0.3.11 (the current release) cannot be imported beside transformers 5 — its
``textattack.shared.utils.strings`` imports ``flair``, whose import reaches ``transformers.set_seed`` ->
``transformers.trainer_utils`` -> ``peft``, which fails (``BloomPreTrainedModel``); its pinned dependencies (flair 0.11,
sentencepiece 0.1.95) do not install on Python 3.11 either. The attack below follows DeepWordBug (Gao et al., 2018,
"Black-box generation of adversarial text sequences to evade deep learning classifiers") with TextAttack's greedy
word-importance search (``GreedyWordSwapWIR``), and needs nothing but ``predict_proba``.

Algorithm, per example (``text``, gold label ``y``); a *query* is one text scored by the model:

1. **Original** (1 query): score ``text``. A text the model already gets wrong is *skipped* (not attacked; it counts
   as wrong under attack too).
2. **Word importance** (one query per word, one batch): words are whitespace-separated tokens; word ``i``'s importance
   is ``p_y(text) - p_y(text without word i)`` (leave-one-out). Words are visited by decreasing importance (ties: by
   position). If the query budget cannot pay for every leave-one-out text, the first words that fit are scored and
   the rest follow them in text order. When the Predictor exposes its fast tokenizer and ``max_length`` (a single
   transformer model), words that start past the truncation point are left out (the model never sees them: editing
   them cannot change its answer, scoring them would only spend queries); the word count stays that of the text.
3. **Greedy character edits**: for each visited word that has at least one letter, build one candidate per edit
   (``swap`` two adjacent different letters, ``substitute`` a letter by another, ``delete`` a letter (2+ letters),
   ``insert`` a letter; positions and letters drawn from a generator seeded by (seed, text, word index, edit), case
   kept) applied to the current text, and score them in one batch. The candidate with the lowest ``p_y`` is kept if it
   lowers ``p_y`` below the current text's (otherwise the word stays as it is and costs only its queries).
4. **Stop** as soon as the prediction is no longer ``y`` (*succeeded*), or when ``max_words_fraction`` of the words
   (rounded up, at least one) are edited, the words are exhausted, or the next batch would exceed ``max_queries``
   (*failed*; a batch is cut to the queries left rather than exceed the budget).

Every example of a run advances in lock-step: one ``predict_proba`` call scores the pending texts of all examples
(the Predictor batches and length-sorts them), so the attack is as fast as scoring, and each example's query count
is exact (the number of its texts that were scored).

Reported (``attack_section``) for a seeded, stratified sample of the split (``sample_size`` examples):

- clean accuracy of the sample (through the Predictor now), *attack success rate* = succeeded / attacked (attacked =
  examples the model got right), *accuracy under attack* = failed / sample size (skipped and succeeded are wrong);
- queries per attacked example (mean, median; also for the successful ones), mean fraction of words edited in a
  successful attack;
- a few successful adversarial examples, original vs perturbed, the edited words highlighted.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
import random
import re
import string
import time
from dataclasses import dataclass, field
from typing import Generator, Sequence

import numpy as np

log = logging.getLogger(__name__)

KEY = "attack"
TITLE = "Adversarial robustness"
ALGORITHM = "greedy leave-one-out word importance + DeepWordBug character edits (black-box)"
EDITS = ("swap", "substitute", "delete", "insert")
DEFAULT_MAX_QUERIES = 300
DEFAULT_MAX_WORDS_FRACTION = 0.25
_WORD = re.compile(r"\S+")
_LETTERS = string.ascii_lowercase


# ---- results ---------------------------------------------------------------------------------------------------------
@dataclass
class Edit:
    word_index: int
    op: str
    original: str
    perturbed: str


@dataclass
class AttackResult:
    """One attacked text. ``status``: ``succeeded`` (prediction changed), ``failed`` (budget or words exhausted) or
    ``skipped`` (the model got the original wrong: not attacked)."""

    text: str
    label: int
    status: str
    queries: int
    num_words: int
    original_pred: int
    original_prob: float  # p(label) of the original
    perturbed_text: str
    perturbed_pred: int
    perturbed_prob: float  # p(label) of the perturbed text
    edits: list[Edit] = field(default_factory=list)

    @property
    def words_perturbed(self) -> int:
        return len(self.edits)

    @property
    def words_perturbed_fraction(self) -> float:
        return self.words_perturbed / self.num_words if self.num_words else 0.0


# ---- character edits -------------------------------------------------------------------------------------------------
def _rng(seed: int, text: str, word_index: int, op: str) -> random.Random:
    # Seeded by content, not by draw order: the same word of the same text gets the same edit whatever else is attacked.
    digest = hashlib.sha256(f"{seed}\x00{word_index}\x00{op}\x00{text}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _same_case(template: str, letter: str) -> str:
    return letter.upper() if template.isupper() else letter


def edit_word(word: str, op: str, rng: random.Random) -> str | None:
    """``word`` with one character edit ``op`` (on its letters; case kept), or None when the word does not allow it."""
    letters = [i for i, ch in enumerate(word) if ch.isalpha()]
    if not letters:
        return None
    if op == "swap":
        pairs = [i for i in letters if i + 1 < len(word) and word[i + 1].isalpha() and word[i] != word[i + 1]]
        if not pairs:
            return None
        i = rng.choice(pairs)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "substitute":
        i = rng.choice(letters)
        new = rng.choice([c for c in _LETTERS if c != word[i].lower()])
        return word[:i] + _same_case(word[i], new) + word[i + 1:]
    if op == "delete":
        if len(letters) < 2:
            return None
        i = rng.choice(letters)
        return word[:i] + word[i + 1:]
    if op == "insert":
        # Between, before or after the letters (inside the word's letter run, never in its punctuation).
        i = rng.choice(letters + [letters[-1] + 1])
        neighbour = word[min(i, len(word) - 1)]
        return word[:i] + _same_case(neighbour, rng.choice(_LETTERS)) + word[i:]
    raise ValueError(f"unknown edit {op!r}; known: {EDITS}")


def _splice(text: str, spans: list[tuple[int, int]], words: dict[int, str]) -> str:
    """``text`` with the words at the given span indices replaced (everything else, whitespace included, kept)."""
    out, pos = [], 0
    for i in sorted(words):
        a, b = spans[i]
        out += [text[pos:a], words[i]]
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _without(text: str, spans: list[tuple[int, int]], i: int) -> str:
    """``text`` without word ``i`` and the whitespace after it (before it, for the last word)."""
    a, b = spans[i]
    if i + 1 < len(spans):
        b = spans[i + 1][0]
    elif i > 0:
        a = spans[i - 1][1]
    return text[:a] + text[b:]


# ---- the attack ------------------------------------------------------------------------------------------------------
def check_budgets(max_queries: int, max_words_fraction: float) -> None:
    if isinstance(max_queries, bool) or not isinstance(max_queries, (int, np.integer)) or max_queries < 1:
        raise ValueError(f"max_queries must be an integer >= 1 (queries per example), got {max_queries!r}")
    if isinstance(max_words_fraction, bool) or not isinstance(max_words_fraction, (int, float)) or not (
        0 < max_words_fraction <= 1
    ):
        raise ValueError(f"max_words_fraction must be in (0, 1], got {max_words_fraction!r}")


def window_ends(predictor, texts: Sequence[str]) -> list[int] | None:
    """Per text, the character position where the model's truncated view of it ends; None when the predictor does
    not expose a fast tokenizer and its ``max_length`` (an ensemble, an ONNX text pipeline): every word counts then."""
    encoder = getattr(getattr(predictor, "model", None), "encoder", None)
    tokenizer = getattr(encoder, "tokenizer", None)
    max_length = getattr(encoder, "max_length", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False) or not max_length or not texts:
        return None
    enc = tokenizer(list(texts), truncation=True, max_length=int(max_length), add_special_tokens=True,
                    return_offsets_mapping=True)
    return [
        max((b for a, b in offsets if b > a), default=len(text)) for offsets, text in zip(enc["offset_mapping"], texts)
    ]


def _attack_one(
    text: str, label: int, seed: int, max_queries: int, max_words_fraction: float, window_end: int | None = None
) -> Generator[list[str], np.ndarray, AttackResult]:
    """One example's attack as a coroutine: yields the texts it needs scored, receives their probabilities."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    n_words = len(spans)
    # Words the model sees (all of them without a known window).
    seen = [i for i, (a, _) in enumerate(spans) if window_end is None or a < window_end] or list(range(n_words))
    probs = yield [text]
    queries = 1
    p_orig, pred = float(probs[0, label]), int(probs[0].argmax())

    def result(status: str, current: str, cur_probs: np.ndarray, edits: list[Edit]) -> AttackResult:
        return AttackResult(text, label, status, queries, n_words, pred, p_orig, current, int(cur_probs.argmax()),
                            float(cur_probs[label]), edits)

    if pred != label:
        return result("skipped", text, probs[0], [])
    current, cur_probs, edits = text, probs[0], []
    max_edits = max(1, math.ceil(max_words_fraction * n_words))

    # Word importance by leave-one-out (a word whose removal empties the text is not scored).
    order = seen
    room = max_queries - queries
    scored = [i for i in seen if _without(text, spans, i).strip()][:room]
    if len(scored) > 1:
        loo = yield [_without(text, spans, i) for i in scored]
        queries += len(scored)
        drop = {i: p_orig - float(loo[k, label]) for k, i in enumerate(scored)}
        order = sorted(scored, key=lambda i: (-drop[i], i)) + [i for i in seen if i not in drop]

    replaced: dict[int, str] = {}
    for i in order:
        if len(edits) >= max_edits or queries >= max_queries:
            break
        word = text[spans[i][0]:spans[i][1]]
        candidates = []
        for op in EDITS:
            new = edit_word(word, op, _rng(seed, text, i, op))
            if new is not None and new != word and new not in [c[1] for c in candidates]:
                candidates.append((op, new))
        candidates = candidates[: max_queries - queries]
        if not candidates:
            continue
        texts = [_splice(text, spans, {**replaced, i: new}) for _, new in candidates]
        cand_probs = yield texts
        queries += len(texts)
        best = int(np.lexsort((np.arange(len(texts)), cand_probs[:, label]))[0])
        if cand_probs[best, label] < cur_probs[label]:
            replaced[i] = candidates[best][1]
            current, cur_probs = texts[best], cand_probs[best]
            edits.append(Edit(i, candidates[best][0], word, candidates[best][1]))
            if int(cur_probs.argmax()) != label:
                return result("succeeded", current, cur_probs, edits)
    return result("failed", current, cur_probs, edits)


def attack(
    predictor,
    texts: Sequence[str],
    labels: Sequence[int],
    seed: int = 0,
    max_queries: int = DEFAULT_MAX_QUERIES,
    max_words_fraction: float = DEFAULT_MAX_WORDS_FRACTION,
) -> list[AttackResult]:
    """Attack every ``(text, label)`` through ``predictor.predict_proba`` (see the module docstring); one result per
    text, in order. The examples advance together: each round is one ``predict_proba`` call."""
    check_budgets(max_queries, max_words_fraction)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    num_classes = len(predictor.label_names)
    bad = [y for y in labels if not 0 <= int(y) < num_classes]
    if bad:
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got e.g. {bad[0]!r}")
    results: list[AttackResult | None] = [None] * len(texts)
    active: dict[int, tuple[Generator, list[str]]] = {}
    ends = window_ends(predictor, [str(t) for t in texts]) or [None] * len(texts)
    for k, (text, label) in enumerate(zip(texts, labels)):
        gen = _attack_one(str(text), int(label), seed, max_queries, max_words_fraction, ends[k])
        active[k] = (gen, next(gen))
    while active:
        batch = [t for _, pending in active.values() for t in pending]
        probs = np.asarray(predictor.predict_proba(batch), dtype=np.float64)
        start, still = 0, {}
        for k, (gen, pending) in active.items():
            part = probs[start:start + len(pending)]
            start += len(pending)
            try:
                still[k] = (gen, gen.send(part))
            except StopIteration as stop:
                results[k] = stop.value
        active = still
    return results  # type: ignore[return-value]


def summarize(results: Sequence[AttackResult]) -> dict:
    """The section's numbers (see the module docstring for the definitions)."""
    n = len(results)
    by = {s: [r for r in results if r.status == s] for s in ("succeeded", "failed", "skipped")}
    attacked = by["succeeded"] + by["failed"]

    def stats(values) -> tuple[float, float]:
        return (float(np.mean(values)), float(np.median(values))) if values else (float("nan"), float("nan"))

    q_mean, q_median = stats([r.queries for r in attacked])
    qs_mean, qs_median = stats([r.queries for r in by["succeeded"]])
    w_mean, w_median = stats([r.words_perturbed_fraction for r in by["succeeded"]])
    return {
        "num_examples": n,
        "attacked": len(attacked),
        "succeeded": len(by["succeeded"]),
        "failed": len(by["failed"]),
        "skipped": len(by["skipped"]),
        "clean_accuracy": len(attacked) / n if n else float("nan"),
        "accuracy_under_attack": len(by["failed"]) / n if n else float("nan"),
        "attack_success_rate": len(by["succeeded"]) / len(attacked) if attacked else float("nan"),
        "queries_mean": q_mean,
        "queries_median": q_median,
        "queries_mean_succeeded": qs_mean,
        "queries_median_succeeded": qs_median,
        "words_perturbed_fraction_mean": w_mean,
        "words_perturbed_fraction_median": w_median,
        "total_queries": int(sum(r.queries for r in results)),
    }


# ---- rendering -------------------------------------------------------------------------------------------------------
def _highlight(text: str, edits: Sequence[Edit], mark: str) -> str:
    """HTML of ``text`` (the original or the perturbed text: edits keep the words in place) with the edited words
    wrapped in ``<mark>`` (del or ins); all escaped."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    edited = {e.word_index for e in edits}
    out, pos = [], 0
    for i, (a, b) in enumerate(spans):
        if i in edited:
            out += [html.escape(text[pos:a]), f"<{mark}>{html.escape(text[a:b])}</{mark}>"]
            pos = b
    out.append(html.escape(text[pos:]))
    return "".join(out)


def example_rows(results: Sequence[AttackResult], limit: int) -> list[AttackResult]:
    """Up to ``limit`` successful attacks: the fewest edited words first, then the shortest texts (readable ones)."""
    done = [r for r in results if r.status == "succeeded"]
    return sorted(done, key=lambda r: (r.words_perturbed, len(r.text)))[:limit]


def _examples_html(rows: Sequence[AttackResult], label_names: Sequence[str]) -> str:
    if not rows:
        return "<p>No successful adversarial example to show.</p>"
    body = []
    for r in rows:
        edits = ", ".join(f"{e.original} → {e.perturbed} ({e.op})" for e in r.edits)
        body.append(
            "<tr>"
            f"<td>{html.escape(label_names[r.label])} ({r.original_prob:.2f})</td>"
            f"<td>{html.escape(label_names[r.perturbed_pred])} (gold {r.perturbed_prob:.2f})</td>"
            f"<td>{html.escape(edits)}</td>"
            f'<td class="text"><div>{_highlight(r.text, r.edits, "del")}</div>'
            f'<div>{_highlight(r.perturbed_text, r.edits, "ins")}</div></td>'
            "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("gold (p)", "under attack (p gold)", "edits", "original / perturbed"))
    return f'<table class="texts"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# ---- the report section ----------------------------------------------------------------------------------------------
def sample_split(data, sample_size: int, seed: int):
    """A seeded stratified sample of ``sample_size`` rows of a :class:`agnews.data.sources.Split` (all of it when it
    is not larger; a plain seeded draw when too small to stratify)."""
    if sample_size >= len(data):
        return data
    from agnews.data.splits import stratified_take
    from agnews.errors import ConfigError

    try:
        taken, _ = stratified_take(data, sample_size, seed, "attack.sample_size")
        return taken
    except ConfigError:  # fewer rows than classes on one side: cannot stratify
        rows = np.random.default_rng(seed).choice(len(data), sample_size, replace=False)
        return data.subset(sorted(int(r) for r in rows))


def attack_section(
    source,
    sample_size: int = 100,
    seed: int = 0,
    max_queries: int = DEFAULT_MAX_QUERIES,
    max_words_fraction: float = DEFAULT_MAX_WORDS_FRACTION,
    split: str = "test",
    show_examples: int = 5,
    enabled: bool = True,  # the config's switch; evaluate_run decides whether to build the section at all
):
    """The report's adversarial-robustness section for an :class:`agnews.evaluation.source.EvaluationSource` (or a
    run/bundle path): the attack of the module docstring on a seeded stratified sample of ``split``."""
    from pathlib import Path

    from agnews.evaluation import plots
    from agnews.evaluation.report import Section, html_table, md_image, md_table, skipped_section

    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ValueError(f"attack sample_size must be an integer >= 1, got {sample_size!r}")
    check_budgets(max_queries, max_words_fraction)
    if isinstance(show_examples, bool) or not isinstance(show_examples, int) or show_examples < 0:
        raise ValueError(f"attack show_examples must be an integer >= 0, got {show_examples!r}")
    if isinstance(source, (str, Path)):
        from agnews.evaluation.source import EvaluationSource

        source = EvaluationSource.open(source)
    data = source.split(split)
    if len(data) == 0:
        return skipped_section(KEY, TITLE, f"the {split} split has no examples to attack")
    data = sample_split(data, int(sample_size), seed)
    predictor = source.predictor()
    label_names = list(predictor.label_names)
    started = time.perf_counter()
    results = attack(predictor, list(data.texts), list(data.labels), seed, int(max_queries), float(max_words_fraction))
    seconds = time.perf_counter() - started
    summary = summarize(results)
    summary.update({
        "split": split, "sample_size": int(sample_size), "seed": seed, "max_queries": int(max_queries),
        "max_words_fraction": float(max_words_fraction), "algorithm": ALGORITHM, "edits": list(EDITS),
        "seconds": round(seconds, 2),
    })
    shown = example_rows(results, show_examples)
    row_of = {id(r): k for k, r in enumerate(results)}
    summary["examples"] = [
        {"id": data.ids[row_of[id(r)]], "label": label_names[r.label], "perturbed_pred": label_names[r.perturbed_pred],
         "original": r.text, "perturbed": r.perturbed_text, "queries": r.queries,
         "edits": [e.__dict__ for e in r.edits]}
        for r in shown
    ]

    s = summary
    head = ["", "value"]
    rows = [
        ("examples (seeded stratified sample)", s["num_examples"]),
        ("clean accuracy (sample)", s["clean_accuracy"]),
        ("attacked (correct before the attack)", s["attacked"]),
        ("attack success rate", s["attack_success_rate"]),
        ("accuracy under attack", s["accuracy_under_attack"]),
        ("queries per attacked example: mean / median", f"{s['queries_mean']:.1f} / {s['queries_median']:.1f}"),
        ("queries per successful attack: mean / median",
         f"{s['queries_mean_succeeded']:.1f} / {s['queries_median_succeeded']:.1f}"),
        ("words edited in a successful attack (mean fraction)", s["words_perturbed_fraction_mean"]),
    ]
    intro = (f"{ALGORITHM}: {s['num_examples']} {split} examples (seed {seed}), at most {s['max_queries']} queries and "
             f"{s['max_words_fraction']:.0%} of the words per example; only examples the model gets right are "
             f"attacked. {s['seconds']:.1f} s.")
    values = {"clean accuracy": s["clean_accuracy"], "accuracy under attack": s["accuracy_under_attack"],
              "attack success rate": s["attack_success_rate"]}
    fig = plots.bar_chart({k: (0.0 if v != v else v) for k, v in values.items()}, "Adversarial attack", "")
    alt = "Bar chart of clean accuracy, accuracy under attack and attack success rate on the attacked sample"
    md_rows = [(label_names[r.label], label_names[r.perturbed_pred],
                "; ".join(f"{e.original} → {e.perturbed}" for e in r.edits), r.perturbed_text) for r in shown]
    markdown = "\n".join([
        intro, "", md_table(head, rows), md_image("attack", alt), "",
        "Successful adversarial examples (fewest edits first):", "",
        md_table(["gold", "under attack", "edits", "perturbed text"], md_rows) if md_rows else "None.",
    ]) + "\n"
    html_body = (f"<p>{html.escape(intro)}</p>" + html_table(head, rows) + plots.img_tag(fig, alt)
                 + "<p>Successful adversarial examples (fewest edits first; edited words struck in the original and "
                   "marked in the perturbed text):</p>" + _examples_html(shown, label_names))
    return Section(KEY, TITLE, summary, markdown, html_body, {"attack": fig})
