"""The report's interpretability section (agnews.evaluation.attribution): Captum Layer Integrated Gradients and SHAP
on a tiny run (shapes, determinism, escaping, convergence delta, skip reasons), on the TF-IDF baseline (SHAP over any
Predictor, Captum skipped with its reason), and on the real MiniLM (completeness within the reported delta; top-k
deletion lowers the predicted class's probability more than random deletion)."""

from __future__ import annotations

import html
import importlib.util
import re

import numpy as np
import pytest

# find_spec, not importorskip, for shap: importing shap here would compile its numba kernels (attribution.import_shap
# imports it with the JIT off, as the report command does).
# `make test` installs the report extra: a missing library is a set-up failure, not a reason to skip.
if importlib.util.find_spec("captum") is None or importlib.util.find_spec("shap") is None:
    raise ImportError("captum and shap are missing: install the report extra (pip install -e '.[report]', make test)")

from agnews.evaluation.attribution import (  # noqa: E402
    TokenAttribution,
    attribution_section,
    captum_attributions,
    delete_spans,
    heatmap_html,
    resolve_k,
    sample_examples,
)
from agnews.evaluation.report import Section  # noqa: E402
from agnews.evaluation.source import EvaluationSource  # noqa: E402
from agnews.runs import Predictions  # noqa: E402

FAST = dict(n_steps=8, max_n_steps=16, shap_max_evals=40, random_draws=2)


@pytest.fixture(scope="module")
def tiny_run(tiny_run_factory):
    return tiny_run_factory("minilm")


@pytest.fixture(scope="module")
def tiny_section(tiny_run):
    return attribution_section(EvaluationSource.open(tiny_run), sample_size=4, seed=3, top_k=2, **FAST)


# ---- pieces ----------------------------------------------------------------------------------------------------------
def _predictions(preds, labels):
    probs = np.eye(4)[preds]
    return Predictions([f"t-{i}" for i in range(len(preds))], labels, probs, ["a", "b", "c", "d"])


def test_sample_is_half_correct_half_wrong_seeded_and_in_split_order():
    labels = np.arange(40) % 4
    preds = labels.copy()
    preds[:10] = (preds[:10] + 1) % 4  # 10 wrong, 30 correct
    table = _predictions(preds, labels)
    texts = {i: f"text {i}" for i in table.ids}
    picked = sample_examples(table, texts, 8, seed=1)
    assert sum(e.gold != e.stored_pred for e in picked) == 4 and sum(e.gold == e.stored_pred for e in picked) == 4
    assert [e.id for e in picked] == [e.id for e in sample_examples(table, texts, 8, seed=1)]
    assert [e.id for e in picked] != [e.id for e in sample_examples(table, texts, 8, seed=2)]
    order = [table.ids.index(e.id) for e in picked]
    assert order == sorted(order)
    # only 2 wrong ones: the rest of the sample comes from the correct ones
    preds2 = labels.copy()
    preds2[:2] = (preds2[:2] + 1) % 4
    few_wrong = sample_examples(_predictions(preds2, labels), texts, 8, seed=0)
    assert len(few_wrong) == 8 and sum(e.gold != e.stored_pred for e in few_wrong) == 2
    with pytest.raises(ValueError, match="sample_size"):
        sample_examples(table, texts, 0, seed=0)
    with pytest.raises(ValueError, match="no text"):
        sample_examples(table, {}, 4, seed=0)


def test_resolve_k_and_deletion():
    assert resolve_k(3, 10) == 3 and resolve_k(0.2, 10) == 2 and resolve_k(0.01, 10) == 1
    assert resolve_k(50, 10) == 9  # one token always stays
    assert resolve_k(3, 1) == 0  # nothing to delete from a one-token text
    text = "Shares  of Acme rose 5% on\tMonday"
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    assert delete_spans(text, []) == "Shares of Acme rose 5% on Monday"
    assert delete_spans(text, [spans[0], spans[3]]) == "of Acme 5% on Monday"
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError, match="top_k"):
            attribution_section("unused", top_k=bad)


def test_heatmap_escapes_text_and_colours_by_sign():
    text = '<script>alert("x")</script> & Co'
    spans = [(0, 8), (8, 15), (29, 30), (31, 33)]
    attr = TokenAttribution("shap", text, spans, np.array([1.0, -0.5, 0.0, 0.25]), 0)
    out = heatmap_html(attr)
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out
    assert html.unescape(re.sub(r"<[^>]+>", "", out)) == text  # every character shown once, in order
    assert out.count('class="attr"') == 4
    # red at full strength for the largest score, blue at half strength for -max/2
    assert "rgba(214,38,40,0.85)" in out and "rgba(33,102,191,0.42)" in out


def test_bad_method_and_output_are_clear_errors(tiny_run):
    from agnews.evaluation import EvaluationError

    with pytest.raises(EvaluationError, match="methods"):  # the report command prints it as one line
        attribution_section(tiny_run, methods=("lime",))
    with pytest.raises(ValueError, match="captum_output"):
        attribution_section(tiny_run, captum_output="entropy")


# ---- a tiny run ------------------------------------------------------------------------------------------------------
def test_tiny_run_section_shapes_delta_and_faithfulness_numbers(tiny_section):
    s = tiny_section
    assert isinstance(s, Section) and s.key == "attribution"
    summary = s.summary
    assert summary["sample_size"] == 4 and summary["num_correct"] + summary["num_wrong"] == 4
    assert len(summary["examples"]) == 4
    captum, shap_ = summary["methods"]["captum"], summary["methods"]["shap"]
    assert not captum["skipped"] and not shap_["skipped"]
    assert len(captum["deltas"]) == 4 and np.isfinite(captum["deltas"]).all()
    assert all(steps in (8, 16) for steps in captum["steps_used"])
    assert captum["mean_abs_delta"] == pytest.approx(np.abs(captum["deltas"]).mean(), abs=1e-6)
    for method in (captum, shap_):
        f = method["faithfulness"]
        assert f["num_examples"] == 4 and f["mean_k"] == 2
        assert np.isfinite([f["mean_drop"], f["mean_random_drop"]]).all()
        assert len(f["drops"]) == len(f["random_drops"]) == 4
    # the HTML: one heat-map row per example and method, the table and the delta stated; the Markdown has the figure
    assert s.html.count('<td class="heat">') == 8
    assert "convergence delta" in s.html and "random deletion drop" in s.html
    assert "figures/attribution_heatmaps.png" in s.markdown
    assert s.figures["attribution_heatmaps"][:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_run_section_is_deterministic(tiny_run, tiny_section):
    again = attribution_section(EvaluationSource.open(tiny_run), sample_size=4, seed=3, top_k=2, **FAST)

    def untimed(summary):  # wall-clock seconds differ between runs; every attribution and number must not
        methods = {m: {k: v for k, v in r.items() if k != "seconds"} for m, r in summary["methods"].items()}
        return {**summary, "methods": methods}

    assert untimed(again.summary) == untimed(tiny_section.summary)
    assert re.sub(r"; [0-9.]+ s<", "<", again.html) == re.sub(r"; [0-9.]+ s<", "<", tiny_section.html)


def test_the_reports_settings_call_and_a_single_method(tiny_run):
    # agnews.evaluation.sections calls attribution_section(source, settings, seed) with the config's attribution block
    settings = {"enabled": True, "sample_size": 2, "methods": ["captum"], "n_steps": 4, "random_draws": 1}
    section = attribution_section(EvaluationSource.open(tiny_run), settings, 5)
    assert set(section.summary["methods"]) == {"captum"}
    assert section.summary["sample_size"] == 2 and section.summary["seed"] == 5
    assert section.html.count('<td class="heat">') == 2
    with pytest.raises(ValueError, match="attribution.n_step is not an option"):
        attribution_section(tiny_run, {"n_step": 4}, 0)


# ---- not a transformer: Captum is skipped with its reason, SHAP still explains the Predictor -----------------------
def test_tfidf_baseline_skips_captum_with_a_reason_and_shap_runs_on_words(tmp_path):
    from tests.test_baseline import SMALL, run_baseline, synthetic_folder

    data = synthetic_folder(tmp_path / "data")
    run = run_baseline(tmp_path / "run", [f"data.data_dir={data}", *SMALL])
    section = attribution_section(run, sample_size=4, seed=0, **FAST)
    captum = section.summary["methods"]["captum"]
    assert captum["skipped"] and "transformers model" in captum["reason"]
    assert "skipped" in section.markdown and "transformers model" in html.unescape(section.html)
    shap_ = section.summary["methods"]["shap"]
    assert not shap_["skipped"] and shap_["tokenizer"] == "shap's word tokenizer"
    assert shap_["faithfulness"]["num_examples"] == 4
    assert section.html.count('<td class="heat">') == 4


# ---- the real MiniLM -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_section(real_minilm_run):
    # ~40 s of CPU (Captum with step doubling, SHAP at 120 evaluations, 6 examples): the test using it is slow
    return attribution_section(real_minilm_run, sample_size=6, seed=0, shap_max_evals=120, random_draws=5)


def test_real_minilm_captum_is_complete_within_the_reported_delta(real_minilm_run):
    import torch

    from agnews.models.exported import load_classifier

    source = EvaluationSource.open(real_minilm_run)
    loaded = load_classifier(source.hf_model_dir)
    texts = [source.texts("test")[i] for i in source.predictions("test").ids[:2]]
    def encode(text):
        return loaded.tokenizer(text, truncation=True, max_length=loaded.max_length, return_tensors="pt",
                                return_special_tokens_mask=True)

    with torch.no_grad():
        inputs = [{k: v for k, v in encode(t).items() if k != "special_tokens_mask"} for t in texts]
        targets = [int(loaded.model(**x).logits.argmax()) for x in inputs]
    results = captum_attributions(loaded.model, loaded.tokenizer, texts, targets, loaded.max_length, n_steps=32,
                                  max_n_steps=128, delta_tolerance=0.05)
    for attr, text, target in zip(results, texts, targets):
        enc = encode(text)
        special = enc.pop("special_tokens_mask").bool()
        baseline = enc["input_ids"].masked_fill(~special, loaded.tokenizer.pad_token_id)
        with torch.no_grad():  # f(x) and f(baseline) computed here, independently of the module
            f_x = torch.log_softmax(loaded.model(**enc).logits, -1)[0, target].item()
            f_b = torch.log_softmax(loaded.model(input_ids=baseline, attention_mask=enc["attention_mask"]).logits,
                                    -1)[0, target].item()
        assert attr.f_input == pytest.approx(f_x, abs=1e-4) and attr.f_baseline == pytest.approx(f_b, abs=1e-4)
        gap = attr.scores.sum() - (f_x - f_b)
        assert abs(gap - attr.delta) < 1e-3  # the reported delta is the completeness gap ...
        assert abs(attr.delta) <= 0.05 * abs(f_x - f_b) + 1e-3  # ... brought within tolerance by doubling the steps
        assert attr.n_steps in (32, 64, 128)
        assert len(attr.spans) == int((~special).sum())  # one score per non-special token


@pytest.mark.slow
def test_real_minilm_captum_top_k_deletion_beats_random(real_section):
    summary = real_section.summary
    assert summary["num_correct"] >= 1 and summary["num_wrong"] >= 1  # the sample holds both kinds
    captum = summary["methods"]["captum"]["faithfulness"]
    assert captum["num_examples"] == 6
    assert captum["mean_drop"] > captum["mean_random_drop"] + 0.02, captum
    shap_ = real_section.summary["methods"]["shap"]["faithfulness"]  # reported, not asserted to win
    assert np.isfinite(shap_["mean_drop"]) and np.isfinite(shap_["mean_random_drop"])
