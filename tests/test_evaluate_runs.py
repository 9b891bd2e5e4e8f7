"""agnews.evaluate on trained runs: a tiny run through the CLI (robustness, out-of-domain data scored through the
Predictor), an ensemble run, its bundle folder and a bundle copied out on its own, and the real MiniLM run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from agnews.evaluation import EvaluationError
from agnews.runs import load_run
from tests.conftest import LABELS, REPO_ROOT, synthetic_rows, write_ag_news_csv

# Two perturbations at one rate on a small sample: the section's wiring, not the suite (tests/test_robustness.py).
QUICK = {"robustness": {"perturbations": ["char_swap", "word_drop"], "rates": [0.3]},
         "attribution": {"enabled": False}, "attack": {"enabled": False}}


@pytest.fixture(scope="module")
def tiny_run(tiny_run_factory):
    return tiny_run_factory("minilm")


def test_cli_on_a_tiny_run_with_out_of_domain_data(tmp_path, tiny_run):
    from agnews.inference import Predictor

    ood = tmp_path / "ood"
    write_ag_news_csv(ood / "test.csv", synthetic_rows(6, seed=9, empty_title_every=0))
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "agnews.evaluate", f"run={tiny_run}", f"data={ood}", f"output_dir={out}",
           "sample_size=12", "robustness.perturbations=[char_swap,word_drop]", "robustness.rates=[0.3]",
           "attribution.enabled=false", "attack.enabled=false", f"hydra.run.dir={tmp_path / 'hydra'}"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Report: {out / 'report.html'}" in done.stdout and "out-of-domain accuracy" in done.stdout
    assert re.search(r"test accuracy 0\.\d{4}  macro-F1 0\.\d{4}", done.stdout) and "ECE" in done.stdout
    payload = json.loads((out / "evaluation.json").read_text())
    assert {"metrics", "ood", "calibration", "errors", "robustness", "meta"} == set(payload)
    # out-of-domain numbers: the 12-row stratified sample scored again here, independently
    from agnews.data.sources import read_ag_news_csv
    from agnews.data.splits import stratified_take

    sample, _ = stratified_take(read_ag_news_csv(ood / "test.csv", "test"), 12, 0, "sample_size")
    probs = Predictor.from_path(tiny_run).predict_proba(sample.texts)
    assert payload["ood"]["num_examples"] == 12
    assert payload["ood"]["accuracy"] == pytest.approx(float((probs.argmax(1) == np.array(sample.labels)).mean()))
    assert payload["ood"]["in_domain"]["accuracy"] == pytest.approx(load_run(tiny_run).metrics["test"]["accuracy"])
    rob = payload["robustness"]
    assert rob["num_examples"] == 12 and [p["name"] for p in rob["perturbations"]] == ["char_swap", "word_drop"]
    assert (out / "figures" / "robustness.png").is_file()


def test_out_of_domain_on_the_runs_own_test_folder_reproduces_its_stored_accuracy(tiny_run):
    from agnews.evaluation.ood import ood_section
    from agnews.evaluation.source import EvaluationSource

    source = EvaluationSource.open(tiny_run)
    folder = load_run(tiny_run).config["data"]["data_dir"]
    s = ood_section(source, folder).summary
    assert s["num_examples"] == len(source.predictions("test"))
    assert s["accuracy"] == pytest.approx(s["in_domain"]["accuracy"])  # fp32 run: same texts, same predictions


def test_out_of_domain_folder_with_other_classes_is_refused(tmp_path, tiny_run):
    from agnews.evaluation.ood import load_ood

    folder = tmp_path / "other"
    write_ag_news_csv(folder / "test.csv", [["1", "t", "d"]])
    (folder / "classes.txt").write_text("Politics\nSport\n")
    with pytest.raises(EvaluationError, match="must use the run's classes"):
        load_ood(folder, LABELS)


def test_missing_optional_module_is_reported_as_skipped(tiny_run):
    from agnews.evaluation.sections import optional_section
    from agnews.evaluation.source import EvaluationSource

    section = optional_section("attack", EvaluationSource.open(tiny_run), {}, 0, module_name="agnews.evaluation.nope")
    assert section.summary["skipped"] and "agnews.evaluation.nope cannot be imported" in section.summary["reason"]
    assert "Skipped" in section.html and "Skipped" in section.markdown


def test_unknown_option_of_an_optional_section_is_refused(tiny_run):
    from agnews.evaluation.sections import optional_section
    from agnews.evaluation.source import EvaluationSource

    with pytest.raises(EvaluationError, match="attack.bogus is not an option of the attack section"):
        optional_section("attack", EvaluationSource.open(tiny_run), {"enabled": True, "bogus": 1}, 0)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, tiny_run_factory):
    from tests.test_ensemble import run_ensemble

    learn = ("trainer.max_epochs=10", "strategy.optimizer.lr=2e-2")  # the members tests/test_ensemble.py trains
    members = [tiny_run_factory("minilm", *learn), tiny_run_factory("electra", *learn)]
    return run_ensemble(tmp_path_factory.mktemp("ens") / "ens", members, "soft_vote")


def test_report_for_an_ensemble_run_its_bundle_folder_and_a_bundle_on_its_own(tmp_path, ensemble_run):
    from agnews.evaluation.sections import evaluate_run

    stored = load_run(ensemble_run).metrics["test"]
    result = evaluate_run(ensemble_run, **QUICK, sample_size=8)
    assert result["meta"]["kind"] == "ensemble"
    assert (ensemble_run / "evaluation" / "report.html").is_file()
    assert result["summary"]["metrics"]["accuracy"] == pytest.approx(stored["accuracy"])
    assert result["summary"]["robustness"]["num_examples"] == 8  # the bundle's predictor scores perturbed texts
    # only the metrics below: the other sections read the same inputs as above
    metrics_only = {**QUICK, "sections": {"calibration": False, "errors": False, "robustness": False}}
    # the bundle folder resolves to the run that built it (same stored predictions)
    via_bundle = evaluate_run(ensemble_run / "bundle", **metrics_only, output_dir=tmp_path / "b")
    assert via_bundle["summary"]["metrics"]["confusion_matrix"] == stored["confusion_matrix"]
    # a bundle copied out on its own has no stored predictions: scored through the predictor on its members' data
    alone = tmp_path / "alone"
    shutil.copytree(ensemble_run / "bundle", alone)
    with pytest.raises(EvaluationError, match="output_dir="):
        evaluate_run(alone, **metrics_only)
    scored = evaluate_run(alone, **metrics_only, output_dir=tmp_path / "alone_report")
    assert scored["meta"]["kind"] == "bundle"
    assert scored["summary"]["metrics"]["accuracy"] == pytest.approx(stored["accuracy"])
    assert (tmp_path / "alone_report" / "report.html").is_file()


def test_real_minilm_report(tmp_path, real_minilm_run):
    from agnews.evaluation.sections import evaluate_run

    result = evaluate_run(real_minilm_run, **QUICK, sample_size=32, output_dir=tmp_path / "r")
    s = result["summary"]
    stored = load_run(real_minilm_run).metrics["test"]
    assert s["metrics"]["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-6)
    assert s["metrics"]["f1_macro"] == pytest.approx(stored["f1_macro"], abs=1e-5)
    cal = s["calibration"]
    assert 0.1 < cal["temperature"] < 10 and cal["after"]["accuracy"] == cal["before"]["accuracy"]
    assert cal["val_after"]["nll"] <= cal["val_before"]["nll"] + 1e-9
    assert s["errors"]["title_available"] and s["errors"]["num_errors"] == round((1 - stored["accuracy"]) * 400)
    # a pretrained MiniLM fine-tuned on real rows is far above chance, and robust to mild perturbation
    assert s["robustness"]["clean_accuracy"] > 0.6 and s["robustness"]["num_examples"] == 32
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"{stored['accuracy']:.4f}" in page
