"""agnews.evaluate: the evaluation report. Every section's numbers against an independent computation (sklearn,
scipy, hand-made tables) on hand-written runs, the CLI on a tiny trained run and an ensemble bundle, bad inputs, and the
real MiniLM run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agnews.evaluation import EvaluationError
from agnews.runs import RunFormatError, write_json, write_predictions
from tests.conftest import CONF_DIR, LABELS, REPO_ROOT, synthetic_rows, write_ag_news_csv


# ---- hand-written runs: stored predictions over a real CSV folder ----------------------------------------------------
def make_data(folder: Path, test_rows: list[list[str]] | None = None) -> Path:
    write_ag_news_csv(folder / "train.csv", synthetic_rows(30, seed=1))
    # empty titles in test too (every 3rd row), so the title slice has both groups
    write_ag_news_csv(folder / "test.csv", test_rows or synthetic_rows(15, seed=2, empty_title_every=3))
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def probs_for(labels: np.ndarray, strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), len(LABELS)))
    logits[np.arange(len(labels)), labels] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def fake_run(root: Path, name: str, data: Path, strength: float = 1.5, seed: int = 0, splits=("val", "test"),
             drop_test_rows: int = 0) -> Path:
    """A finished run as the evaluation reads it: run.json, config.yaml (data section), stored predictions for the ids
    the config rebuilds (no model: sections that need a predictor are switched off for these)."""
    from agnews.data.run_splits import load_run_split

    run = root / name
    run.mkdir(parents=True)
    config = {"seed": 0, "data": {"source": "csv", "data_dir": str(data), "val_size": 40, "seed": 0,
                                  "train_size": None, "label_names": LABELS}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_json(run / "run.json", {"task": "train"})
    for k, split in enumerate(splits):
        rows = load_run_split(run, split)
        ids, labels = rows.ids[drop_test_rows if split == "test" else 0:], np.array(rows.labels)
        labels = labels[len(labels) - len(ids):]
        write_predictions(run / "predictions" / f"{split}.csv", ids, labels, probs_for(labels, strength, seed * 7 + k),
                          LABELS)
    return run


NO_MODEL = {"sections": {"robustness": False}, "attribution": {"enabled": False}, "attack": {"enabled": False}}


@pytest.fixture
def data_dir(tmp_path):
    return make_data(tmp_path / "data")


@pytest.fixture
def run_a(tmp_path, data_dir):
    return fake_run(tmp_path / "runs", "a", data_dir, strength=2.0, seed=1)


def evaluate(run, **options):
    from agnews.evaluation.sections import evaluate_run

    return evaluate_run(run, **{**NO_MODEL, **options})


# ---- report files -----------------------------------------------------------------------------------------------------
def test_report_files_are_self_contained_and_consistent(tmp_path, run_a):
    result = evaluate(run_a)
    out = run_a / "evaluation"
    assert result["paths"]["html"] == out / "report.html"
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    images = re.findall(r"<img [^>]*>", page)
    assert images and all('src="data:image/png;base64,' in tag and re.search(r'alt="[^"]+"', tag) for tag in images)
    for key in ("metrics", "calibration", "errors"):
        assert f'href="#{key}"' in page and f'id="{key}"' in page  # table of contents
    payload = json.loads((out / "evaluation.json").read_text())
    assert set(payload) == {"metrics", "calibration", "errors", "meta"}
    assert payload["meta"]["run"] == str(run_a.resolve())
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["confusion_matrix.png", "per_class.png", "reliability_after.png", "reliability_before.png",
                       "slices_accuracy.png"]
    assert all((out / "figures" / f).read_bytes().startswith(b"\x89PNG") for f in figures)
    md = (out / "report.md").read_text()
    for f in figures:  # Markdown references every figure as a file
        assert f"](figures/{f})" in md


def test_text_from_data_is_escaped(tmp_path):
    rows = [["1", "<script>alert(1)</script>", "Evil | pipe & <b>tags</b> world president"]] + \
        synthetic_rows(15, seed=2, empty_title_every=0)
    data = make_data(tmp_path / "data", rows)
    run = fake_run(tmp_path / "runs", "a", data, strength=-3.0)  # every row wrong: the evil row is a mistake shown
    evaluate(run, errors={"k": 100})
    page = (run / "evaluation" / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = (run / "evaluation" / "report.md").read_text()
    assert "Evil \\| pipe" in md  # a pipe in a text cannot break the Markdown table


# ---- metrics ----------------------------------------------------------------------------------------------------------
def test_metrics_match_sklearn(run_a):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    from agnews.evaluation.source import EvaluationSource
    from agnews.evaluation.sections import metrics_section

    source = EvaluationSource.open(run_a)
    s = metrics_section(source).summary
    pred = source.predictions("test")
    y, yhat = pred.labels, pred.probs.argmax(1)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, yhat))
    assert s["f1_macro"] == pytest.approx(f1_score(y, yhat, average="macro"))
    p, r, f, support = precision_recall_fscore_support(y, yhat, labels=range(4), zero_division=0)
    for i, name in enumerate(LABELS):
        assert s["per_class"][name]["precision"] == pytest.approx(p[i])
        assert s["per_class"][name]["recall"] == pytest.approx(r[i])
        assert s["per_class"][name]["f1"] == pytest.approx(f[i])
        assert s["per_class"][name]["support"] == support[i]
    assert s["confusion_matrix"] == confusion_matrix(y, yhat, labels=range(4)).tolist()


# ---- calibration ------------------------------------------------------------------------------------------------------
def reference_ece(probs, labels, n_bins=15, norm="l1"):
    """ECE / MCE written out from the definition (top-label confidence, equal-width bins (lo, hi])."""
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    gaps, weights = [], []
    for lo, hi in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gaps.append(abs(conf[m].mean() - correct[m].mean()))
            weights.append(m.mean())
    return float(np.dot(gaps, weights)) if norm == "l1" else float(max(gaps))


def test_calibration_numbers_match_independent_computations(run_a):
    from scipy.special import softmax
    from sklearn.metrics import log_loss

    from agnews.evaluation.calibration import calibration_section
    from agnews.evaluation.source import EvaluationSource

    source = EvaluationSource.open(run_a)
    s = calibration_section(source).summary
    test, val = source.predictions("test"), source.predictions("val")
    before = s["before"]
    assert before["ece"] == pytest.approx(reference_ece(test.probs, test.labels), abs=1e-5)
    assert before["mce"] == pytest.approx(reference_ece(test.probs, test.labels, norm="max"), abs=1e-5)
    assert before["nll"] == pytest.approx(log_loss(test.labels, test.probs, labels=range(4)), rel=1e-5)
    onehot = np.eye(4)[test.labels]
    assert before["brier"] == pytest.approx(((test.probs - onehot) ** 2).sum(1).mean())
    # The fitted temperature minimises validation NLL: a grid search cannot beat it.
    t = s["temperature"]
    logits = np.log(np.clip(val.probs, 1e-12, None))

    def val_nll(temp):
        return log_loss(val.labels, softmax(logits / temp, axis=1), labels=range(4))

    grid = np.exp(np.linspace(-2, 2, 401))
    assert val_nll(t) <= min(val_nll(g) for g in grid) + 1e-6
    assert s["val_after"]["nll"] <= s["val_before"]["nll"] + 1e-9
    scaled = softmax(np.log(np.clip(test.probs, 1e-12, None)) / t, axis=1)
    assert s["after"]["nll"] == pytest.approx(log_loss(test.labels, scaled, labels=range(4)), rel=1e-5)
    assert s["after"]["ece"] == pytest.approx(reference_ece(scaled, test.labels), abs=1e-5)
    assert s["after"]["accuracy"] == s["before"]["accuracy"]  # scaling never changes the argmax


def test_overconfident_run_gets_a_temperature_above_one_and_a_lower_ece(tmp_path, data_dir):
    from agnews.evaluation.calibration import calibration_section
    from agnews.evaluation.source import EvaluationSource

    # strength 0.8 with sharpened probabilities: confident but often wrong
    run = fake_run(tmp_path / "runs", "over", data_dir, strength=0.8, seed=3)
    for split in ("val", "test"):
        path = run / "predictions" / f"{split}.csv"
        from agnews.runs import read_predictions

        p = read_predictions(path)
        sharp = p.probs ** 4 / (p.probs ** 4).sum(1, keepdims=True)
        write_predictions(path, p.ids, p.labels, sharp, LABELS)
    s = calibration_section(EvaluationSource.open(run)).summary
    assert s["temperature"] > 1.5
    assert s["after"]["ece"] < s["before"]["ece"] and s["after"]["nll"] < s["before"]["nll"]


def test_calibration_refuses_a_run_without_validation_predictions(tmp_path, data_dir):
    run = fake_run(tmp_path / "runs", "testonly", data_dir, splits=("test",))
    with pytest.raises(EvaluationError, match=r"calibration needs validation predictions"):
        evaluate(run)
    evaluate(run, sections={"calibration": False, "robustness": False})  # the rest still works without it
    assert "calibration" not in json.loads((run / "evaluation" / "evaluation.json").read_text())


# ---- significance -----------------------------------------------------------------------------------------------------
def test_mcnemar_matches_a_hand_made_table():
    from scipy.stats import binomtest

    from agnews.evaluation.significance import mcnemar_exact

    # 50 both right, 12 only A right, 3 only B right, 5 both wrong
    a = np.array([1] * 50 + [1] * 12 + [0] * 3 + [0] * 5, bool)
    b = np.array([1] * 50 + [0] * 12 + [1] * 3 + [0] * 5, bool)
    result = mcnemar_exact(a, b)
    assert result["table"] == [[50, 12], [3, 5]]
    # exact two-sided p for 3 of 15 under Bin(15, 1/2): 2 * P(X <= 3)
    from math import comb

    by_hand = 2 * sum(comb(15, k) for k in range(4)) / 2 ** 15
    assert result["p_value"] == pytest.approx(by_hand) == pytest.approx(binomtest(12, 15).pvalue)
    assert mcnemar_exact(a, a)["p_value"] == 1.0  # no discordant pairs


def test_paired_bootstrap_is_seeded_and_its_intervals_cover_the_observed_difference():
    from sklearn.metrics import f1_score

    from agnews.evaluation.significance import macro_f1, paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    a = np.where(rng.random(400) < 0.85, y, rng.integers(0, 4, 400))
    b = np.where(rng.random(400) < 0.70, y, rng.integers(0, 4, 400))
    assert macro_f1(y, a, 4)[0] == pytest.approx(f1_score(y, a, average="macro"))
    one = paired_bootstrap(y, a, b, 4, n_resamples=300, seed=5)
    assert one == paired_bootstrap(y, a, b, 4, n_resamples=300, seed=5)
    assert one != paired_bootstrap(y, a, b, 4, n_resamples=300, seed=6)
    for key, observed in (("accuracy", (a == y).mean() - (b == y).mean()),
                          ("f1_macro", f1_score(y, a, average="macro") - f1_score(y, b, average="macro"))):
        ci = one[key]
        assert ci["difference"] == pytest.approx(observed)
        assert ci["ci_low"] < observed < ci["ci_high"] and ci["excludes_zero"]  # 15 points apart on 400 rows
    # the resampled macro-F1 of one resample equals sklearn's on those rows
    idx = np.random.default_rng(1).integers(0, 400, 400)
    assert macro_f1(y[idx][None], a[idx][None], 4)[0] == pytest.approx(f1_score(y[idx], a[idx], average="macro"))


def test_significance_section_between_two_runs(tmp_path, data_dir, run_a):
    run_b = fake_run(tmp_path / "runs", "b", data_dir, strength=0.3, seed=2)
    result = evaluate(run_a, compare=str(run_b), significance={"n_resamples": 200})
    s = result["summary"]["significance"]
    from agnews.runs import read_predictions

    pa, pb = read_predictions(run_a / "predictions/test.csv"), read_predictions(run_b / "predictions/test.csv")
    ra, rb = pa.preds == pa.labels, pb.preds == pb.labels
    assert s["mcnemar"]["table"] == [[int((ra & rb).sum()), int((ra & ~rb).sum())],
                                     [int((~ra & rb).sum()), int((~ra & ~rb).sum())]]
    assert s["bootstrap"]["n_resamples"] == 200
    assert s["accuracy"]["this"] - s["accuracy"]["compare"] == pytest.approx(ra.mean() - rb.mean())
    assert "McNemar" in (run_a / "evaluation" / "report.md").read_text()


def test_compare_with_runs_scored_on_different_examples_is_refused(tmp_path, data_dir, run_a):
    run_b = fake_run(tmp_path / "runs", "b", data_dir, drop_test_rows=5)
    with pytest.raises(EvaluationError, match=r"(?s)not scored on the same test examples.*5 ids only in a"):
        evaluate(run_a, compare=str(run_b))


# ---- errors -----------------------------------------------------------------------------------------------------------
def test_error_analysis_lists_confident_mistakes_confusions_and_slices(run_a, data_dir):
    from agnews.data.sources import read_ag_news_csv
    from agnews.evaluation.error_analysis import errors_section
    from agnews.evaluation.source import EvaluationSource

    source = EvaluationSource.open(run_a)
    s = errors_section(source, k=5).summary
    pred = source.predictions("test")
    conf, wrong = pred.probs.max(1), pred.preds != pred.labels
    expected = sorted(np.flatnonzero(wrong), key=lambda i: -conf[i])[:5]
    assert [m["id"] for m in s["most_confident_mistakes"]] == [pred.ids[i] for i in expected]
    texts = dict(zip(*(lambda sp: (sp.ids, sp.texts))(read_ag_news_csv(data_dir / "test.csv", "test"))))
    assert all(m["text"] == texts[m["id"]] for m in s["most_confident_mistakes"])
    pairs = {}
    for g, p in zip(pred.labels[wrong], pred.preds[wrong]):
        pairs[(LABELS[g], LABELS[p])] = pairs.get((LABELS[g], LABELS[p]), 0) + 1
    top = s["top_confusions"][0]
    assert top["count"] == max(pairs.values()) == pairs[(top["gold"], top["pred"])]
    # title slice from the raw CSV: every 3rd synthetic row per class has an empty title
    raw = [r for r in __import__("csv").reader((data_dir / "test.csv").open())]
    empty = {f"test-{i:06d}" for i, r in enumerate(raw) if not r[1].strip()}
    correct = dict(zip(pred.ids, pred.preds == pred.labels))
    title = s["slices"]["title"]
    assert title["empty title"]["count"] == len(empty)
    assert title["empty title"]["accuracy"] == pytest.approx(np.mean([correct[i] for i in empty]))
    assert title["with title"]["count"] == len(pred) - len(empty)
    assert sum(v["count"] for v in s["slices"]["length"].values()) == len(pred)


# ---- bad inputs -------------------------------------------------------------------------------------------------------
def test_bad_inputs_get_clear_errors(tmp_path, run_a, data_dir):
    with pytest.raises(RunFormatError, match="no such run directory"):
        evaluate(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFormatError, match="neither a run directory"):
        evaluate(tmp_path / "empty")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(RunFormatError, match="did not finish"):
        evaluate(unfinished)
    with pytest.raises(EvaluationError, match="sample_size must be a positive integer"):
        evaluate(run_a, sample_size=0)
    with pytest.raises(EvaluationError, match="sample_size must be a positive integer"):
        evaluate(run_a, sample_size=-3)
    no_test = tmp_path / "no_test_csv"
    no_test.mkdir()
    (no_test / "train.csv").write_text('"1","a","b"\n')
    with pytest.raises(EvaluationError, match=r"no test\.csv"):
        evaluate(run_a, data=str(no_test))
    with pytest.raises(EvaluationError, match="no such folder"):
        evaluate(run_a, data=str(tmp_path / "missing"))
    bad_format = tmp_path / "bad_format"
    bad_format.mkdir()
    (bad_format / "test.csv").write_text("label,text\nWorld,hello\n")
    with pytest.raises(EvaluationError, match="not in the ag_news_csv format"):
        from agnews.evaluation.ood import load_ood

        load_ood(bad_format, LABELS)
    with pytest.raises(EvaluationError, match="no stored predictions for split 'val'"):
        from agnews.evaluation.source import EvaluationSource

        EvaluationSource.open(fake_run(tmp_path / "runs", "t", data_dir, splits=("test",))).predictions("val")
    moved = fake_run(tmp_path / "runs", "moved", data_dir)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["data"]["data_dir"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(EvaluationError, match="run_data_dir="):
        evaluate(moved)
    assert evaluate(moved, run_data_dir=str(data_dir))["summary"]["errors"]["num_examples"] == 60


def test_cli_fails_cleanly_on_a_bad_run(tmp_path):
    # (the CLI writing a report: tests/test_evaluate_runs.py::test_cli_on_a_tiny_run_with_out_of_domain_data)
    bad = subprocess.run([sys.executable, "-m", "agnews.evaluate", f"run={tmp_path / 'nope'}",
                          f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert f"agnews.evaluate: error: {tmp_path / 'nope'}: no such run directory or bundle" in bad.stderr


def test_config_composes_with_every_documented_option():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import agnews.resolvers  # noqa: F401

    GlobalHydra.instance().clear()
    try:
        # data=<folder> sets the key: the app's config folder has no `data` group (conf/ beside train.yaml has one)
        with initialize_config_dir(config_dir=str(CONF_DIR / "evaluate"), version_base="1.3"):
            cfg = compose("evaluate", overrides=["run=r", "compare=c", "data=d", "output_dir=o", "sample_size=5",
                                                 "seed=3"])
    finally:
        GlobalHydra.instance().clear()
    assert (cfg.run, cfg.compare, cfg.data, cfg.sample_size, cfg.seed) == ("r", "c", "d", 5, 3)
    assert cfg.calibration.n_bins == 15 and cfg.significance.n_resamples == 1000
    assert cfg.attribution.enabled and cfg.attack.enabled
