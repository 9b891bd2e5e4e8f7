"""agnews.ensemble: each combiner's defining behaviour, cross-fitting, bad inputs, the run directory it writes, and
the bundle reproducing the run's stored test probabilities from raw texts (tiny fp32 member runs, the real MiniLM
run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agnews.ensemble.combiners import bma_weights, fit_combiner, optimise_weights
from agnews.ensemble.stacking import cross_fit
from agnews.errors import ConfigError, DataError
from agnews.inference.ensemble import LOG_EPS, Combination, LogisticMeta, hard_vote
from agnews.runs import RunFormatError, load_run, write_json, write_predictions
from agnews.runs.metrics import classification_report, log_loss
from tests.conftest import CONF_DIR, LABELS, REPO_ROOT, TINY, train_run

ALL_METHODS = ["hard_vote", "soft_vote", "weighted", "bma", "stacking_logreg", "stacking_xgboost", "stacking_catboost"]


# ---- helpers ---------------------------------------------------------------------------------------------------------
def member_probs(seed: int, labels: np.ndarray, strength: float, classes: int = 4) -> np.ndarray:
    """Probabilities whose gold-class logit is raised by ``strength`` (0: an uninformative member)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), classes))
    logits[np.arange(len(labels)), labels] += strength
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def fake_run(root: Path, name: str, strength: float, seed: int, n: dict | None = None, labels_seed: int = 0,
             label_names=LABELS, splits=("val", "test"), id_prefix: str = "") -> Path:
    """A finished run as far as an ensemble is concerned: run.json, config.yaml and stored predictions (no model)."""
    run = root / name
    for split in splits:
        size = (n or {}).get(split, {"val": 120, "test": 80}[split])
        labels = np.random.default_rng(labels_seed + (split == "test")).integers(0, len(label_names), size)
        probs = member_probs(seed * 10 + (split == "test"), labels, strength, len(label_names))
        ids = [f"{id_prefix}{split}-{i:06d}" for i in range(size)]
        write_predictions(run / "predictions" / f"{split}.csv", ids, labels, probs, label_names)
    (run / "config.yaml").write_text("seed: 1\n")
    write_json(run / "run.json", {"task": "train"})
    return run


def ensemble_config(output_dir: Path, members, method: str, *overrides: str) -> dict:
    """``conf/ensemble.yaml`` composed as the CLI composes it, as plain data with ``paths.output_dir`` set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import agnews.resolvers  # noqa: F401

    listed = ",".join(f"'{m}'" for m in members)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("ensemble", overrides=[f"members=[{listed}]", f"method={method}",
                                                 f"paths.output_dir={output_dir}", *overrides])
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


def run_ensemble(output_dir: Path, members, method: str, *overrides: str) -> Path:
    from agnews.ensemble import run_ensemble as run

    run(ensemble_config(output_dir, members, method, *overrides))
    return output_dir


@pytest.fixture
def fake_members(tmp_path):
    root = tmp_path / "members"
    return [fake_run(root, "good", 2.5, 1), fake_run(root, "fair", 1.5, 2), fake_run(root, "noise", 0.0, 3)]


# ---- combiners: defining behaviour -----------------------------------------------------------------------------------
def test_optimised_weights_lie_on_the_simplex_and_beat_uniform_and_every_member():
    labels = np.random.default_rng(0).integers(0, 4, 400)
    probs = np.stack([member_probs(1, labels, 2.5), member_probs(2, labels, 1.0), member_probs(3, labels, 0.0)])
    weights, info = optimise_weights(probs, labels)
    assert weights.shape == (3,) and np.all(weights >= 0) and weights.sum() == pytest.approx(1.0, abs=1e-12)
    fitted = log_loss(np.tensordot(weights, probs, axes=1), labels, LOG_EPS)
    uniform = log_loss(probs.mean(axis=0), labels, LOG_EPS)
    assert fitted < uniform - 0.05  # the noise member is down-weighted
    # convex in the weights: the optimum is at least as good as any vertex (a single member)
    assert fitted <= min(log_loss(p, labels, LOG_EPS) for p in probs) + 1e-9
    assert weights[2] < 0.05 < weights[0]
    assert info["val_log_loss_fitted"] == pytest.approx(fitted)
    assert info["val_log_loss_uniform"] == pytest.approx(uniform)


def test_bma_weights_are_proportional_to_validation_likelihood_and_concentrate_as_n_grows():
    labels = np.array([0, 1, 2, 3, 0])
    probs = np.stack([member_probs(s, labels, k) for s, k in ((1, 1.0), (2, 0.5), (3, 0.8))])
    weights, _ = bma_weights(probs, labels)
    likelihood = np.prod(probs[:, np.arange(5), labels], axis=1)  # computed directly, without logs
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, likelihood / likelihood.sum(), rtol=1e-10)
    # the same members on 200x the rows: likelihood ratios are raised to the 200th power
    many = np.tile(labels, 200)
    weights_many, _ = bma_weights(np.tile(probs, (1, 200, 1)), many)
    assert weights_many.max() > 1 - 1e-9 and weights_many.argmax() == likelihood.argmax()


def test_hard_vote_majority_beats_confidence_and_ties_go_to_mean_probability_then_lowest_class():
    # 2 lukewarm votes for class 0 beat one confident vote for class 1 (soft voting would pick class 1)
    majority = np.array([[[0.40, 0.35, 0.15, 0.10]], [[0.40, 0.35, 0.15, 0.10]], [[0.00, 0.99, 0.01, 0.00]]])
    assert hard_vote(majority).argmax() == 0 and majority.mean(axis=0).argmax() == 1
    # 1-1 tie: the class with the higher mean probability wins, whichever member comes first
    tie = np.array([[[0.6, 0.4, 0.0, 0.0]], [[0.05, 0.9, 0.05, 0.0]]])
    assert hard_vote(tie).argmax() == 1 and hard_vote(tie[::-1]).argmax() == 1
    # a tie in votes and in mean probability: the lowest class index
    exact = np.array([[[0.0, 0.0, 0.6, 0.4]], [[0.0, 0.0, 0.4, 0.6]]])
    assert hard_vote(exact).argmax() == 2 and hard_vote(exact[::-1]).argmax() == 2
    for case in (majority, tie, exact):
        out = hard_vote(case)
        assert np.all(out >= 0) and out.sum(axis=1) == pytest.approx(1.0)
    # many members: the nudge never overturns one vote of difference
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(9, 300))
    votes = np.stack([np.bincount(row, minlength=4) for row in probs.argmax(axis=2).T])
    winners = hard_vote(probs).argmax(axis=1)
    assert np.all(votes[np.arange(300), winners] == votes.max(axis=1))


class Memoriser:
    """A meta-learner that memorises its fitting rows and refuses to score any of them: cross-fitting must never ask."""

    def fit(self, features, labels):
        self.seen = {row.tobytes(): int(label) for row, label in zip(features, labels)}
        self.classes_ = np.unique(labels)
        return self

    def predict_proba(self, features):
        leaked = [i for i, row in enumerate(features) if row.tobytes() in self.seen]
        assert not leaked, f"scored {len(leaked)} rows it was fitted on"
        return np.full((len(features), len(self.classes_)), 1.0 / len(self.classes_))


class LookupMemoriser(Memoriser):
    """Scores its own fitting rows perfectly (what an overfitted meta-learner does in-sample)."""

    def predict_proba(self, features):
        out = np.full((len(features), len(self.classes_)), 1.0 / len(self.classes_))
        for i, row in enumerate(features):
            if row.tobytes() in self.seen:
                out[i] = np.eye(len(self.classes_))[self.seen[row.tobytes()]]
        return out


def test_cross_fitting_never_scores_a_row_its_meta_learner_was_fitted_on():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(60, 8)), np.repeat(np.arange(4), 15)
    oof, fold_of = cross_fit(features, labels, Memoriser, folds=5, seed=0, num_classes=4)
    assert sorted(np.bincount(fold_of)) == [12] * 5  # every row held out exactly once
    np.testing.assert_allclose(oof, 0.25)
    # the same memoriser in-sample would look perfect; out-of-fold it is at chance
    in_sample = LookupMemoriser().fit(features, labels).predict_proba(features)
    assert (in_sample.argmax(axis=1) == labels).all()
    oof_lookup, _ = cross_fit(features, labels, LookupMemoriser, folds=5, seed=0, num_classes=4)
    np.testing.assert_allclose(oof_lookup, 0.25)


def test_stacking_run_stores_out_of_fold_val_predictions(tmp_path, fake_members):
    """The run's val predictions are exactly an independent re-computation of 5-fold cross-fitting; test comes from the
    meta-learner fitted on all val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    out = run_ensemble(tmp_path / "ens", fake_members, "stacking_logreg", "bundle.enabled=false")
    runs = [load_run(m) for m in fake_members]
    val = [r.predictions("val") for r in runs]
    features, labels = np.concatenate([p.probs for p in val], axis=1), val[0].labels
    expected = np.zeros((len(labels), 4))
    for fit_rows, held in StratifiedKFold(5, shuffle=True, random_state=42).split(features, labels):
        meta = LogisticRegression(C=1.0, max_iter=2000, random_state=42).fit(features[fit_rows], labels[fit_rows])
        expected[held] = meta.predict_proba(features[held])
    stored = load_run(out)
    np.testing.assert_allclose(stored.predictions("val").probs, expected, atol=2e-6)
    final = LogisticRegression(C=1.0, max_iter=2000, random_state=42).fit(features, labels)
    test_features = np.concatenate([r.predictions("test").probs for r in runs], axis=1)
    np.testing.assert_allclose(stored.predictions("test").probs, final.predict_proba(test_features), atol=2e-6)
    assert stored.manifest["combiner"]["val_predictions"].startswith("out-of-fold")
    in_sample = stored.manifest["combiner"]["fit"]
    assert in_sample["val_log_loss_out_of_fold"] > in_sample["val_log_loss_in_sample"]  # OOF is the honest one


def test_logistic_meta_from_json_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)), rng.integers(0, 4, 80)
    for labels in (y, y % 2):  # multinomial softmax, and the binary sigmoid case
        meta = LogisticRegression(max_iter=500).fit(x, labels)
        mine = LogisticMeta(meta.coef_.tolist(), meta.intercept_.tolist()).predict_proba(x)
        np.testing.assert_allclose(mine, meta.predict_proba(x), atol=1e-12)


@pytest.mark.parametrize("method", ["stacking_xgboost", "stacking_catboost", "stacking_logreg"])
def test_meta_learner_files_reproduce_the_fitted_meta_learner(tmp_path, method):
    labels = np.random.default_rng(0).integers(0, 4, 120)
    probs = np.stack([member_probs(1, labels, 2.0), member_probs(2, labels, 1.0)])
    config = {"seed": 0, "stacking": {"folds": 3, "n_jobs": 1,
                                      "xgboost": {"n_estimators": 20, "max_depth": 2},
                                      "catboost": {"iterations": 30, "depth": 3}}}
    fitted = fit_combiner(method, probs, labels, ["a", "b"], LABELS, config, tmp_path)
    assert fitted.summary["saved_vs_in_memory_max_abs_diff"] < 1e-6
    [(name, path)] = fitted.files.items()
    assert path.suffix in (".json", ".ubj", ".cbm") and path.is_file()
    reloaded = Combination.from_files(method, fitted.combination.params, tmp_path)
    np.testing.assert_array_equal(reloaded(probs), fitted.combination(probs))
    assert fitted.val_probs.shape == (120, 4) and np.allclose(fitted.val_probs.sum(axis=1), 1.0)


def test_numpy_report_matches_the_training_report():
    import torch

    from agnews.evaluation.metrics import classification_report as torch_report

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)  # class 3 never occurs as a gold label
    probs = rng.dirichlet(np.ones(4), size=50)
    mine = classification_report(probs, labels, LABELS)
    theirs = torch_report(torch.tensor(probs), torch.tensor(labels), LABELS)
    assert mine.keys() == theirs.keys() and mine["per_class"].keys() == theirs["per_class"].keys()
    assert mine["confusion_matrix"] == theirs["confusion_matrix"] and mine["num_examples"] == theirs["num_examples"]
    for key in ("accuracy", "f1_macro"):
        assert mine[key] == pytest.approx(theirs[key], abs=1e-6)
    for name in LABELS:
        for key, value in theirs["per_class"][name].items():
            assert mine["per_class"][name][key] == pytest.approx(value, abs=1e-6)


# ---- the run directory -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_writes_a_normal_run_directory(tmp_path, fake_members, method):
    out = run_ensemble(tmp_path / method, fake_members, method, "bundle.enabled=false",
                       "stacking.xgboost.n_estimators=20", "stacking.catboost.iterations=30")
    run = load_run(out)
    assert run.task == "ensemble" and not run.has_bundle
    metrics = json.loads((out / "metrics.json").read_text())
    report_keys = {"num_examples", "accuracy", "f1_macro", "per_class", "confusion_matrix", "label_names"}
    assert set(metrics) == {"val", "test"} and all(set(metrics[s]) == report_keys for s in ("val", "test"))
    assert metrics["val"]["num_examples"] == 120 and metrics["test"]["num_examples"] == 80
    for split in ("val", "test"):
        stored = run.predictions(split)
        assert stored.ids == load_run(fake_members[0]).predictions(split).ids
        assert metrics[split]["accuracy"] == pytest.approx(stored.accuracy)
    manifest = run.manifest
    assert [m["name"] for m in manifest["members"]] == ["good", "fair", "noise"]
    good = load_run(fake_members[0]).predictions("test")
    assert manifest["members"][0]["test"]["accuracy"] == pytest.approx(good.accuracy)
    assert manifest["method"] == method and manifest["combiner"]["params"]["members"] == ["good", "fair", "noise"]
    assert {"load_members", "fit", "score"} <= set(manifest["timings_s"])
    # an informative ensemble: better than chance on test, and the noise member does not drag it to chance
    assert metrics["test"]["accuracy"] > 0.6


def test_weighted_and_bma_record_their_weights(tmp_path, fake_members):
    weighted = load_run(run_ensemble(tmp_path / "w", fake_members, "weighted", "bundle.enabled=false")).manifest
    bma = load_run(run_ensemble(tmp_path / "b", fake_members, "bma", "bundle.enabled=false")).manifest
    for manifest in (weighted, bma):
        weights = manifest["combiner"]["params"]["weights"]
        assert len(weights) == 3 and sum(weights) == pytest.approx(1.0) and min(weights) >= 0
    fit = weighted["combiner"]["fit"]
    assert fit["val_log_loss_fitted"] <= fit["val_log_loss_uniform"]
    assert bma["combiner"]["params"]["weights"][0] > 0.99  # BMA puts (almost) everything on the best member


def test_weighted_and_bma_score_val_out_of_fold(tmp_path, fake_members):
    """Weights fitted on val would flatter val (and a method picked by val accuracy): val rows are scored with weights
    fitted on the other folds, and the stored val predictions are exactly that recomputation."""
    from sklearn.model_selection import StratifiedKFold

    from agnews.ensemble.combiners import optimise_weights
    from agnews.runs import align_predictions

    run = load_run(run_ensemble(tmp_path / "w", fake_members, "weighted", "bundle.enabled=false"))
    fit = run.manifest["combiner"]["fit"]
    assert run.manifest["combiner"]["val_predictions"].startswith("out-of-fold")
    assert fit["val_log_loss_out_of_fold"] >= fit["val_log_loss_in_sample"] - 1e-12
    members = align_predictions({str(i): load_run(m).predictions("val") for i, m in enumerate(fake_members)}, "val")
    probs, labels = np.stack([m.probs for m in members]), members[0].labels
    expected = np.full(probs.shape[1:], np.nan)
    for fit_rows, held_out in StratifiedKFold(5, shuffle=True, random_state=42).split(np.zeros(len(labels)), labels):
        weights = optimise_weights(probs[:, fit_rows], labels[fit_rows])[0]
        expected[held_out] = np.tensordot(weights, probs[:, held_out], axes=1)
    stored = run.predictions("val").select(members[0].ids)
    np.testing.assert_allclose(stored.probs, expected, atol=2e-6)
    # the final weights (all of val) are what test is scored with, so test differs from any single fold's weighting
    bma = load_run(run_ensemble(tmp_path / "b", fake_members, "bma", "bundle.enabled=false")).manifest["combiner"]
    assert bma["val_predictions"].startswith("out-of-fold")


def test_a_rerun_into_the_same_folder_replaces_the_earlier_run(tmp_path, fake_members):
    out = run_ensemble(tmp_path / "ens", fake_members, "soft_vote", "bundle.enabled=false")
    (out / "bundle").mkdir()
    (out / "bundle" / "manifest.json").write_text("{}")  # e.g. left by an earlier run with a bundle
    run_ensemble(out, fake_members[:2], "bma", "bundle.enabled=false")
    run = load_run(out)
    assert run.manifest["method"] == "bma" and len(run.manifest["members"]) == 2 and not (out / "bundle").exists()
    assert run.config["method"] == "bma"


# ---- bad inputs ------------------------------------------------------------------------------------------------------
def _assert_nothing_written(out: Path):
    """No finished-run marker, no bundle, no temp folders."""
    assert not (out / "run.json").exists() and not (out / "bundle").exists()
    assert not list(out.glob(".*")) if out.exists() else True


def test_member_names_come_from_folders_made_unique_or_from_a_mapping(tmp_path, fake_members):
    from agnews.ensemble.members import member_paths

    twins = [tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "z" / "other run"]
    assert list(member_paths(twins)) == ["x_run", "y_run", "other_run"]
    config = ensemble_config(tmp_path / "ens", fake_members[:2], "soft_vote", "bundle.enabled=false")
    config["members"] = {"first": str(fake_members[0]), "second": str(fake_members[1])}
    from agnews.ensemble import run_ensemble as run

    run(config)
    assert [m["name"] for m in load_run(tmp_path / "ens").manifest["members"]] == ["first", "second"]
    with pytest.raises(ConfigError, match="no members given"):
        member_paths(None)


def test_unknown_method_is_refused_before_anything_is_written(tmp_path, fake_members):
    with pytest.raises(ConfigError, match="not an ensemble method.*soft_vote.*stacking_catboost"):
        run_ensemble(tmp_path / "ens", fake_members, "majority")
    assert not (tmp_path / "ens").exists()


def test_one_member_is_refused(tmp_path, fake_members):
    with pytest.raises(ConfigError, match="at least 2 member runs, got 1"):
        run_ensemble(tmp_path / "ens", fake_members[:1], "soft_vote")
    with pytest.raises(ConfigError, match="same run"):
        run_ensemble(tmp_path / "ens", [fake_members[0], fake_members[0]], "soft_vote")
    assert not (tmp_path / "ens").exists()


def test_members_scored_on_different_examples_are_refused_with_the_mismatch(tmp_path, fake_members):
    other = fake_run(tmp_path / "other", "shifted", 2.0, 4, id_prefix="x")
    with pytest.raises(DataError, match=r"shifted: scored different val examples than good \(120 ids only in good"):
        run_ensemble(tmp_path / "ens", [fake_members[0], other], "soft_vote")
    assert not (tmp_path / "ens").exists()


def test_members_with_different_label_maps_or_gold_labels_are_refused(tmp_path, fake_members):
    swapped = ["Sports", "World", "Business", "Sci/Tech"]
    reordered = fake_run(tmp_path / "other", "reordered", 2.0, 4, label_names=swapped)
    with pytest.raises(DataError, match=r"reordered: label names \['Sports', 'World'"):
        run_ensemble(tmp_path / "ens", [fake_members[0], reordered], "soft_vote")
    relabelled = fake_run(tmp_path / "other", "relabelled", 2.0, 4, labels_seed=9)
    with pytest.raises(DataError, match="relabelled: gold labels differ from good"):
        run_ensemble(tmp_path / "ens", [fake_members[0], relabelled], "soft_vote")


def test_members_without_validation_predictions_are_all_listed(tmp_path, fake_members):
    no_val_a = fake_run(tmp_path / "other", "test_only_a", 2.0, 4, splits=("test",))
    no_val_b = fake_run(tmp_path / "other", "test_only_b", 2.0, 5, splits=("test",))
    unfinished = tmp_path / "other" / "crashed"
    (unfinished / "predictions").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(DataError) as error:
        run_ensemble(tmp_path / "ens", [fake_members[0], no_val_a, no_val_b, unfinished], "weighted")
    message = str(error.value)
    assert "test_only_a: no validation predictions" in message and "test_only_b: no validation predictions" in message
    assert "crashed:" in message and "did not finish" in message
    assert not (tmp_path / "ens").exists()


def test_stacking_with_too_few_validation_rows_per_class_is_a_config_error(tmp_path):
    root = tmp_path / "members"
    small = [fake_run(root, f"m{i}", 2.0, i, n={"val": 8, "test": 8}) for i in range(2)]
    with pytest.raises(ConfigError, match="at least 5 validation rows of every class"):
        run_ensemble(tmp_path / "ens", small, "stacking_logreg", "bundle.enabled=false")
    _assert_nothing_written(tmp_path / "ens")


def test_a_member_without_a_model_fails_the_bundle_and_leaves_no_finished_run(tmp_path, fake_members):
    with pytest.raises(RunFormatError, match="good .* has no model to bundle.*bundle.enabled=false"):
        run_ensemble(tmp_path / "ens", fake_members, "soft_vote")
    _assert_nothing_written(tmp_path / "ens")
    assert not list((tmp_path / "ens").glob(".ensemble-work-*"))
    with pytest.raises(RunFormatError, match="did not finish"):
        load_run(tmp_path / "ens")


def test_cli_runs_and_reports_a_bad_method(tmp_path, fake_members):
    listed = ",".join(f"'{m}'" for m in fake_members)
    base = [sys.executable, "-m", "agnews.ensemble", f"members=[{listed}]", "bundle.enabled=false"]
    ok = subprocess.run([*base, "method=bma", f"hydra.run.dir={tmp_path / 'cli'}"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert load_run(tmp_path / "cli").manifest["method"] == "bma"
    assert (tmp_path / "cli" / ".hydra" / "overrides.yaml").is_file() and (tmp_path / "cli" / "ensemble.log").is_file()
    bad = subprocess.run([*base, "method=avg", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "method='avg' is not an ensemble method" in bad.stderr


def test_cli_imports_nothing_heavy_before_the_job_runs():
    code = (
        "import sys, agnews.ensemble.__main__\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'xgboost', 'catboost', 'transformers', 'scipy', 'lightning')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# ---- tiny trained members: the bundle serves what the run stored -----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_members(tiny_run_factory):
    # fp32 runs on the same synthetic data and split (data.seed follows seed=42): stored predictions are reproducible.
    # 10 epochs at a high learning rate so that the members' probabilities differ between texts (1 epoch barely moves
    # a tiny random model off 0.25 everywhere, which would make any parity check vacuous).
    learn = ("trainer.max_epochs=10", "strategy.optimizer.lr=2e-2")
    return [tiny_run_factory("minilm", *learn), tiny_run_factory("electra", *learn)]


def texts_by_id(run_dir: Path) -> dict[str, str]:
    """{id: text} of the test split a run scored (read from the data folder in its config)."""
    from agnews.data.sources import read_ag_news_csv

    config = load_run(run_dir).config
    split = read_ag_news_csv(Path(config["data"]["data_dir"]) / "test.csv", "test")
    return dict(zip(split.ids, split.texts))


@pytest.mark.parametrize("method", ["weighted", "hard_vote", "stacking_logreg"])
def test_bundle_reproduces_the_runs_stored_test_probabilities_from_raw_texts(tmp_path, tiny_members, method):
    from agnews.inference import Predictor

    out = run_ensemble(tmp_path / "ens", tiny_members, method)
    run = load_run(out)
    stored = run.predictions("test")
    by_id = texts_by_id(tiny_members[0])
    texts = [by_id[i] for i in stored.ids]
    predictor = Predictor.from_path(out)  # the run resolves to its bundle
    probs = predictor.predict_proba(texts)
    assert stored.probs.std(axis=0).max() > 0.01  # the texts get visibly different probabilities
    np.testing.assert_allclose(probs, stored.probs, atol=2e-5)  # stored CSVs round member and ensemble to 1e-6
    top2 = np.sort(stored.probs, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # rows whose stored winner is not within rounding of a tie
    assert clear.mean() > 0.5 and (probs.argmax(axis=1) == stored.preds)[clear].all()
    assert predictor.label_names == LABELS and predictor.info["kind"] == "ensemble"
    description = predictor.describe()
    assert description["backend"] == "ensemble" and description["combiner"]["method"] == method
    assert [m["name"] for m in description["members"]] == [m["name"] for m in run.manifest["members"]]
    assert all(m["backend"] == "torch" for m in description["members"])
    # the bundle folder loads the same way
    # the bundle folder loads the same way (another batch composition: float noise only)
    np.testing.assert_allclose(Predictor.from_path(out / "bundle").predict_proba(texts[:5]), probs[:5], atol=1e-7)


def test_bundle_manifest_describes_members_and_combiner(tmp_path, tiny_members):
    out = run_ensemble(tmp_path / "ens", tiny_members, "stacking_xgboost", "stacking.xgboost.n_estimators=20",
                       "stacking.folds=3")
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["label_names"] == LABELS
    assert len(manifest["members"]) == 2
    for member, source in zip(manifest["members"], tiny_members):
        assert member["format"] == "transformers" and member["source_run"] == str(source.resolve())
        assert member["label_map"] == {name: i for i, name in enumerate(LABELS)} and member["max_length"] == 32
        assert member["tokenizer"]["files"] and "safetensors" in member["reason"]
        paths = {f["path"] for f in member["files"]}
        assert f"{member['dir']}/model.safetensors" in paths and f"{member['dir']}/agnews_model.json" in paths
        assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in member["files"])
    combiner = manifest["combiner"]
    assert combiner["method"] == "stacking_xgboost" and combiner["params"]["folds"] == 3
    assert [f["path"] for f in combiner["files"]] == ["combiner/meta.ubj"]
    run_json = load_run(out).manifest
    assert run_json["bundle"]["members"][manifest["members"][0]["name"]]["format"] == "transformers"
    # the tree meta-learner in the bundle scores the members' stored test probabilities exactly as the run did
    from agnews.inference.ensemble import load_bundle_model

    model, _, _ = load_bundle_model(out / "bundle")
    member_test = np.stack([load_run(m).predictions("test").probs for m in tiny_members])
    np.testing.assert_allclose(model.combination(member_test), load_run(out).predictions("test").probs, atol=2e-6)


def test_onnx_text_onnx_and_safetensors_members_serve_together_from_one_bundle(tmp_path, tiny_members):
    """A member with an ONNX export goes in as ONNX, the TF-IDF baseline as a text-input ONNX model, a plain run as
    safetensors; the loaded bundle reproduces the run's stored test probabilities from raw texts."""
    import shutil

    from agnews.baseline.run import run_baseline
    from agnews.export import export_run
    from agnews.inference import Predictor
    from tests.test_baseline import compose_baseline

    exported = shutil.copytree(tiny_members[0], tmp_path / "exported")  # the shared tiny run stays export-free
    export_run(exported, optimize=False)
    data = load_run(tiny_members[0]).config["data"]
    baseline = tmp_path / "tfidf"
    run_baseline(compose_baseline([f"data.data_dir={data['data_dir']}", f"data.val_size={data['val_size']}",
                                   "data.train_size=null", f"data.seed={data['seed']}"], baseline))
    out = run_ensemble(tmp_path / "ens", [exported, baseline, tiny_members[1]], "weighted")
    manifest = load_run(out).manifest
    assert [m["format"] for m in manifest["bundle"]["members"].values()] == ["onnx", "text-onnx", "transformers"]
    stored = load_run(out).predictions("test")
    by_id = texts_by_id(tiny_members[0])
    predictor = Predictor.from_path(out)
    probs = predictor.predict_proba([by_id[i] for i in stored.ids])
    np.testing.assert_allclose(probs, stored.probs, atol=2e-5)
    backends = [m["backend"] for m in predictor.describe()["members"]]
    assert backends[0] == "onnx" and backends[2] == "torch"


def test_a_tampered_ensemble_bundle_is_refused_by_the_predictor(tmp_path, tiny_members):
    import pickle

    from agnews.inference import Predictor
    from agnews.runs.bundle import BundleError

    out = run_ensemble(tmp_path / "ens", tiny_members, "soft_vote")
    Predictor.from_path(out)  # intact: loads
    weights = next((out / "bundle" / "members").glob("*/model.safetensors"))
    original = weights.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.safetensors: SHA-256 differs"):
        Predictor.from_path(out)
    weights.write_bytes(original)
    (weights.parent / "extra.pkl").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(BundleError, match="extra.pkl: a pickled file"):
        Predictor.from_path(out / "bundle")


def test_a_nested_ensemble_member_is_refused_for_the_bundle(tmp_path, tiny_members):
    first = run_ensemble(tmp_path / "ens1", tiny_members, "soft_vote")
    with pytest.raises(RunFormatError, match="is itself an ensemble"):
        run_ensemble(tmp_path / "ens2", [first, tiny_members[0]], "soft_vote")
    # combining predictions without a bundle works
    run_ensemble(tmp_path / "ens3", [first, tiny_members[0]], "soft_vote", "bundle.enabled=false")
    assert load_run(tmp_path / "ens3").task == "ensemble"


# ---- the real pretrained MiniLM run ----------------------------------------------------------------------------------
def test_real_minilm_run_with_a_second_member_on_real_rows(tmp_path, real_minilm_run):
    from agnews.inference import Predictor

    config = load_run(real_minilm_run).config
    second = train_run(tmp_path / "tiny", [
        *TINY, f"data.data_dir={config['data']['data_dir']}", "data.source=csv", "data.train_size=null",
        f"data.val_size={config['data']['val_size']}", "data.max_length=32", "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
    ])
    out = run_ensemble(tmp_path / "ens", [real_minilm_run, second], "weighted")
    manifest = load_run(out).manifest
    real_val = manifest["members"][0]["val"]
    assert manifest["data"]["sizes"] == {"val": 100, "test": 400}
    # convex objective: the fitted weights are no worse on val log-loss than the real model alone
    assert manifest["combiner"]["fit"]["val_log_loss_fitted"] <= real_val["log_loss"] + 1e-9
    metrics = load_run(out).metrics
    assert metrics["test"]["accuracy"] >= manifest["members"][0]["test"]["accuracy"] - 0.02
    # the bundle serves real texts (fp32 here; the real member's stored predictions were bf16: close, not equal)
    stored = load_run(out).predictions("test")
    by_id = texts_by_id(real_minilm_run)
    rows = list(range(0, 400, 25))
    probs = Predictor.from_path(out).predict_proba([by_id[stored.ids[i]] for i in rows])
    assert np.abs(probs - stored.probs[rows]).max() < 0.1
    assert (probs.argmax(axis=1) == stored.preds[rows]).mean() >= 0.9
