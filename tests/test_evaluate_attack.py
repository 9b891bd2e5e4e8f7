"""The report's adversarial-robustness section (agnews.evaluation.attack): the greedy character-level black-box attack
through a real Predictor on a tiny run (exact query counts, budgets, determinism, flips that re-score as flips,
escaping, bad inputs) and on the real MiniLM (a small sample: some attacks succeed and accuracy drops)."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from agnews.evaluation.attack import (
    EDITS,
    AttackResult,
    Edit,
    _examples_html,
    _rng,
    attack,
    attack_section,
    edit_word,
    summarize,
)
from agnews.evaluation.report import Section
from agnews.evaluation.source import EvaluationSource


class CountingPredictor:
    """A real Predictor, counting every text it scores and every predict_proba call."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.model = predictor.model  # the attack reads the model's tokenizer window from here, as from a Predictor
        self.label_names = predictor.label_names
        self.texts = 0
        self.calls = 0

    def predict_proba(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return self.predictor.predict_proba(texts)


@pytest.fixture(scope="module")
def tiny_source(tiny_run_factory):
    return EvaluationSource.open(tiny_run_factory("minilm"))


@pytest.fixture(scope="module")
def tiny_data(tiny_source):
    data = tiny_source.split("test")
    return list(data.texts), list(data.labels)


# ---- character edits -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", EDITS)
def test_each_edit_changes_one_character_and_keeps_case(op):
    for seed in range(20):
        new = edit_word("Market,", op, random.Random(seed))
        assert new is not None and new != "Market,"
        assert new.endswith(",")  # punctuation is never edited
        assert abs(len(new) - len("Market,")) <= 1
        assert new[0].isupper() or (op in ("swap", "delete") and new[0] in "aM")
        if op == "substitute":
            assert sum(a != b for a, b in zip(new, "Market,")) == 1
        if op == "swap":
            assert sorted(new) == sorted("Market,")
    assert edit_word("1,234", "substitute", random.Random(0)) is None  # no letters: nothing to edit
    assert edit_word("a", "delete", random.Random(0)) is None  # a word never disappears
    assert edit_word("aa", "swap", random.Random(0)) is None  # swapping equal letters changes nothing
    with pytest.raises(ValueError, match="unknown edit"):
        edit_word("word", "flip", random.Random(0))


# ---- the attack on a real Predictor (tiny run) -----------------------------------------------------------------------
def test_query_counts_are_exact_and_budgets_respected(tiny_source, tiny_data):
    texts, labels = tiny_data
    counter = CountingPredictor(tiny_source.predictor())
    results = attack(counter, texts, labels, seed=1, max_queries=40, max_words_fraction=0.2)
    assert len(results) == len(texts)
    assert sum(r.queries for r in results) == counter.texts  # every scored text belongs to exactly one example
    assert counter.calls <= 2 + max(math.ceil(0.2 * r.num_words) for r in results)  # one call per round, not per text
    for r, text, label in zip(results, texts, labels):
        assert 1 <= r.queries <= 40
        assert r.words_perturbed <= max(1, math.ceil(0.2 * r.num_words))
        assert r.text == text and r.label == label
        if r.status == "skipped":
            assert r.queries == 1 and r.original_pred != label and r.perturbed_text == text
        else:
            assert r.original_pred == label
    assert any(r.status != "skipped" for r in results)

    tight = attack(CountingPredictor(tiny_source.predictor()), texts, labels, seed=1, max_queries=3)
    assert all(r.queries <= 3 for r in tight)
    one = attack(tiny_source.predictor(), texts, labels, seed=1, max_queries=1)
    assert all(r.queries == 1 and r.status in ("failed", "skipped") and not r.edits for r in one)


def test_same_seed_same_attack_whatever_the_order(tiny_source, tiny_data):
    texts, labels = tiny_data
    predictor = tiny_source.predictor()
    texts, labels = texts[:12], labels[:12]
    first = attack(predictor, texts, labels, seed=5, max_queries=30)
    again = attack(predictor, texts[::-1], labels[::-1], seed=5, max_queries=30)[::-1]  # order of examples irrelevant
    assert [(r.status, r.queries, r.perturbed_text) for r in first] == [
        (r.status, r.queries, r.perturbed_text) for r in again
    ]

def test_edits_are_seeded_by_content():
    words = ["market", "shares", "Olympic", "striker", "software", "election"]
    edits = {seed: [edit_word(w, op, _rng(seed, "a text", i, op)) for i, w in enumerate(words) for op in EDITS]
             for seed in (0, 1)}
    assert edits[0] == [edit_word(w, op, _rng(0, "a text", i, op)) for i, w in enumerate(words) for op in EDITS]
    assert edits[0] != edits[1]
    # Another text, same word: another draw (a word is not edited the same way everywhere).
    assert [edit_word("market", op, _rng(0, "b text", 0, op)) for op in EDITS] != edits[0][:4]


def test_summary_definitions():
    def result(status, queries, edits, words=10):
        return AttackResult("t", 0, status, queries, words, 0, 0.9, "t", 1 if status == "succeeded" else 0, 0.1,
                            [Edit(i, "swap", "ab", "ba") for i in range(edits)])

    s = summarize([result("succeeded", 10, 1), result("succeeded", 30, 3), result("failed", 50, 2),
                   result("skipped", 1, 0)])
    assert s["attacked"] == 3 and s["skipped"] == 1
    assert s["clean_accuracy"] == 0.75
    assert s["attack_success_rate"] == pytest.approx(2 / 3)
    assert s["accuracy_under_attack"] == 0.25
    assert s["queries_mean"] == pytest.approx(30.0) and s["queries_median"] == 30.0
    assert s["queries_mean_succeeded"] == 20.0
    assert s["words_perturbed_fraction_mean"] == pytest.approx(0.2)
    assert s["total_queries"] == 91
    assert math.isnan(summarize([result("skipped", 1, 0)])["attack_success_rate"])


def test_examples_are_escaped_and_highlighted():
    r = AttackResult("<b>Stocks</b> & bonds fall", 2, "succeeded", 9, 4, 2, 0.8, "<b>Stocks</b> & bonsd fall", 1,
                     0.3, [Edit(2, "swap", "bonds", "bonsd")])
    out = _examples_html([r], ["World", "Sports", "Business", "Sci/Tech"])
    assert "<b>" not in out and "&lt;b&gt;Stocks&lt;/b&gt;" in out
    assert "<del>bonds</del>" in out and "<ins>bonsd</ins>" in out
    assert "Business" in out and "Sports" in out


def test_section_on_tiny_run(tiny_source):
    section = attack_section(tiny_source, sample_size=8, seed=0, max_queries=30)
    assert isinstance(section, Section) and section.key == "attack"
    s = section.summary
    assert s["num_examples"] == 8 and s["attacked"] + s["skipped"] == 8
    assert s["accuracy_under_attack"] <= s["clean_accuracy"]
    assert s["max_queries"] == 30 and "attack" in section.figures
    assert section.figures["attack"][:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="[^"]+">', section.html)
    assert "accuracy under attack" in section.markdown
    again = attack_section(tiny_source, sample_size=8, seed=0, max_queries=30).summary

    def same(summary):  # JSON text: NaN (no successful attack) compares equal to itself there
        return json.dumps({k: v for k, v in summary.items() if k != "seconds"}, sort_keys=True)

    assert same(again) == same(s)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sample_size": 0}, "sample_size must be an integer >= 1"),
        ({"sample_size": -3}, "sample_size must be an integer >= 1"),
        ({"max_queries": 0}, "max_queries must be an integer >= 1"),
        ({"max_queries": 2.5}, "max_queries must be an integer >= 1"),
        ({"max_words_fraction": 0}, r"max_words_fraction must be in \(0, 1\]"),
        ({"max_words_fraction": 1.5}, r"max_words_fraction must be in \(0, 1\]"),
        ({"show_examples": -1}, "show_examples must be an integer >= 0"),
    ],
)
def test_bad_settings_are_clear_errors(tiny_source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        attack_section(tiny_source, **kwargs)


def test_bad_attack_inputs(tiny_source):
    predictor = tiny_source.predictor()
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        attack(predictor, ["a b", "c d"], [0])
    with pytest.raises(ValueError, match="class indices"):
        attack(predictor, ["a b"], [7])


# ---- the real MiniLM -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_attack(real_minilm_run):
    """A small attack on the real fine-tuned MiniLM (8 examples, <= 80 queries each), run once for the tests below."""
    source = EvaluationSource.open(real_minilm_run)
    predictor = source.predictor()  # fp32: batch composition cannot move a decision across a bf16 rounding step
    data = source.split("test")
    texts, labels = list(data.texts)[:8], list(data.labels)[:8]
    counter = CountingPredictor(predictor)
    return predictor, counter, attack(counter, texts, labels, seed=0, max_queries=80, max_words_fraction=0.3)


def test_real_minilm_attack_succeeds_and_lowers_accuracy(real_attack):
    _, counter, results = real_attack
    s = summarize(results)
    assert s["attacked"] > 0
    assert 0 < s["attack_success_rate"] <= 1
    assert s["accuracy_under_attack"] < s["clean_accuracy"]
    assert s["total_queries"] == counter.texts
    assert all(r.queries <= 80 for r in results)


def test_real_minilm_flips_are_real_and_only_edited_words_change(real_attack):
    predictor, _, results = real_attack
    done = [r for r in results if r.status == "succeeded"]
    assert done
    rescored = predictor.predict_proba([r.perturbed_text for r in done])
    assert all(int(row.argmax()) != r.label for row, r in zip(rescored, done))  # really misclassified
    for r in results:
        before, after = r.text.split(), r.perturbed_text.split()
        assert len(before) == len(after)
        changed = {i for i, (a, b) in enumerate(zip(before, after)) if a != b}
        assert changed == {e.word_index for e in r.edits}
        assert all(before[e.word_index] == e.original and after[e.word_index] == e.perturbed for e in r.edits)
        assert r.words_perturbed <= math.ceil(0.3 * r.num_words)
        if r.status == "failed":
            assert r.perturbed_pred == r.label
        if r.status == "succeeded":  # the greedy search only keeps edits that lower the gold probability
            assert r.perturbed_prob < r.original_prob
