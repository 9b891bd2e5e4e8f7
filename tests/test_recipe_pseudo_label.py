"""Pseudo-labelling (data.pseudo_label): a finished teacher run labels the rows data.train_size leaves out; confident,
class-balanced rows join training with the teacher's labels; the report's counts and accuracy are exact."""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agnews.data.datamodule import AGNewsDataModule
from agnews.data.pseudo_label import PseudoLabeler
from agnews.data.sources import Split
from agnews.data.splits import make_splits
from agnews.errors import ConfigError

from conftest import LABELS, synthetic_rows, write_ag_news_csv


@pytest.fixture(scope="module")
def tokenizer():
    from agnews.models.factory import offline_tokenizer

    return offline_tokenizer("right")


@pytest.fixture(scope="module")
def tiny_teacher(tiny_run_factory) -> Path:
    """A finished tiny random-weight run, trained a little harder so its probabilities spread (lr 2e-2, 3 epochs)."""
    return tiny_run_factory("minilm", "trainer.max_epochs=3", "strategy.optimizer.lr=2e-2")


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    write_ag_news_csv(folder / "train.csv", synthetic_rows(40, seed=11))  # 160 rows, other texts than the teacher's
    write_ag_news_csv(folder / "test.csv", synthetic_rows(4, seed=12, empty_title_every=0))
    return folder


def build(tokenizer, folder, tmp_path, pseudo_label=None, **overrides) -> AGNewsDataModule:
    settings = dict(
        source="csv", data_dir=str(folder), label_names=LABELS, val_size=20, train_size=40, max_length=32,
        batch_size=8, eval_batch_size=32, cache_dir=str(tmp_path / "cache"), seed=0, pseudo_label=pseudo_label,
    )
    settings.update(overrides)
    return AGNewsDataModule(tokenizer, **settings)


def expected_report(teacher: Path, pool: Split, threshold: float, balance: bool) -> tuple[dict, list[int]]:
    """The report computed by hand from the teacher's own probabilities (and the kept pool positions)."""
    from agnews.inference import Predictor

    probs = Predictor.from_path(teacher).predict_proba(pool.texts)
    top, predicted = probs.max(axis=1), probs.argmax(axis=1)
    confident = {c: [i for i in range(len(pool)) if predicted[i] == c and top[i] >= threshold] for c in range(4)}
    if balance:
        count = min(len(rows) for rows in confident.values())
        kept = sorted(i for rows in confident.values() for i in sorted(rows, key=lambda i: -top[i])[:count])
    else:
        kept = sorted(i for rows in confident.values() for i in rows)
    correct = [predicted[i] == pool.labels[i] for i in kept]
    return {
        "pool": len(pool),
        "confident": sum(len(rows) for rows in confident.values()),
        "confident_per_class": {LABELS[c]: len(rows) for c, rows in confident.items()},
        "kept": len(kept),
        "kept_per_class": {LABELS[c]: sum(predicted[i] == c for i in kept) for c in range(4)},
        "kept_accuracy": round(sum(correct) / len(correct), 6) if kept else None,
        "teacher_accuracy_on_pool": round(float(np.mean(predicted == np.asarray(pool.labels))), 6),
        "predicted": [int(predicted[i]) for i in kept],
    }, kept


def pool_of(folder: Path, train_size=40, val_size=20, seed=0) -> Split:
    from agnews.data.sources import load_source

    raw = load_source("csv", str(folder), LABELS, "fail", "unused", None)
    return make_splits(raw["train"], raw["test"], val_size, train_size, seed, with_rest=True)["rest"]


def half_confident_threshold(teacher: Path, pool: Split) -> float:
    """A threshold that about half of each predicted class's rows pass (the tiny teacher's confidence differs by
    class, so one pool-wide median could leave a class with none)."""
    from agnews.inference import Predictor

    probs = Predictor.from_path(teacher).predict_proba(pool.texts)
    top, predicted = probs.max(axis=1), probs.argmax(axis=1)
    return float(min(np.median(top[predicted == c]) for c in np.unique(predicted)))


# ---- selection rules -----------------------------------------------------------------------------------------------
def test_selection_keeps_confident_rows_balanced_by_predicted_class():
    probs = np.array([
        [0.95, 0.05, 0.0, 0.0],  # 0: class 0, confident
        [0.91, 0.09, 0.0, 0.0],  # 1: class 0, confident
        [0.99, 0.01, 0.0, 0.0],  # 2: class 0, most confident
        [0.05, 0.92, 0.03, 0.0],  # 3: class 1, confident
        [0.10, 0.80, 0.10, 0.0],  # 4: class 1, not confident
        [0.0, 0.0, 0.97, 0.03],  # 5: class 2
        [0.0, 0.0, 0.93, 0.07],  # 6: class 2
        [0.0, 0.0, 0.05, 0.95],  # 7: class 3
    ])
    assert PseudoLabeler("t", threshold=0.9, balance=False).select(probs).tolist() == [0, 1, 2, 3, 5, 6, 7]
    # one confident row for classes 1 and 3: each class keeps one, its most confident
    assert PseudoLabeler("t", threshold=0.9, balance=True).select(probs).tolist() == [2, 3, 5, 7]
    # class 1 has no row above 0.95: balanced selection keeps nothing
    assert PseudoLabeler("t", threshold=0.95, balance=True).select(probs).tolist() == []


def test_make_splits_gives_the_rows_left_out_of_training_and_validation(data):
    from agnews.data.sources import load_source

    raw = load_source("csv", str(data), LABELS, "fail", "unused", None)
    splits = make_splits(raw["train"], raw["test"], 20, 40, 0, with_rest=True)
    assert (len(splits["train"]), len(splits["val"]), len(splits["rest"])) == (40, 20, 100)
    ids = [set(splits[name].ids) for name in ("train", "val", "rest")]
    assert set.union(*ids) == set(raw["train"].ids) and sum(map(len, ids)) == len(raw["train"])
    assert splits["rest"].name == "rest"
    assert Counter(splits["rest"].labels) == Counter({0: 25, 1: 25, 2: 25, 3: 25})  # stratified remainder
    assert len(make_splits(raw["train"], raw["test"], 20, None, 0, with_rest=True)["rest"]) == 0
    assert "rest" not in make_splits(raw["train"], raw["test"], 20, 40, 0)


# ---- with a real tiny teacher run ------------------------------------------------------------------------------------
@pytest.mark.parametrize("balance", [True, False])
def test_the_training_split_gains_the_kept_rows_with_teacher_labels_and_an_exact_report(
    tokenizer, data, tmp_path, tiny_teacher, balance
):
    pool = pool_of(data)
    threshold = half_confident_threshold(tiny_teacher, pool)
    expected, kept = expected_report(tiny_teacher, pool, threshold, balance)
    assert expected["kept"] > 0

    dm = build(tokenizer, data, tmp_path, PseudoLabeler(str(tiny_teacher), threshold=threshold, balance=balance))
    dm.setup()
    report = dm.report["pseudo_label"]
    predicted = expected.pop("predicted")
    assert {key: report[key] for key in expected} == expected
    assert (report["threshold"], report["balance"], report["teacher"]) == (threshold, balance, str(tiny_teacher))
    assert report["pool_rows_in_teacher_training"] == 0  # other texts than the teacher's
    if balance:
        assert len(set(report["kept_per_class"].values())) == 1  # the same count for every class

    gold = build(tokenizer, data, tmp_path)
    gold.setup()
    train = dm.splits["train"]
    assert train.ids[:40] == gold.splits["train"].ids and train.labels[:40] == gold.splits["train"].labels
    assert train.ids[40:] == [pool.ids[i] for i in kept]
    assert train.texts[40:] == [pool.texts[i] for i in kept]
    assert train.labels[40:] == predicted  # the teacher's labels, not the hidden gold ones
    assert len(dm.datasets["train"]) == 40 + len(kept)
    assert dm.splits["val"].ids == gold.splits["val"].ids and dm.splits["test"].ids == gold.splits["test"].ids
    assert set(train.ids[40:]).isdisjoint(dm.splits["val"].ids)


def test_the_report_counts_pool_rows_the_teacher_trained_on(tokenizer, tmp_path, tiny_teacher, caplog):
    """Pseudo-labelling the teacher's own data folder with a smaller train_size: every pool row is one the teacher
    trained on (it used all non-validation rows), and the report and a warning say so."""
    import logging

    import yaml

    teacher_data = yaml.safe_load((tiny_teacher / "config.yaml").read_text())["data"]
    dm = build(tokenizer, Path(teacher_data["data_dir"]), tmp_path, PseudoLabeler(str(tiny_teacher), threshold=0.26,
               balance=False), val_size=teacher_data["val_size"], seed=teacher_data["seed"])
    with caplog.at_level(logging.WARNING, logger="agnews.data.pseudo_label"):
        dm.setup()
    report = dm.report["pseudo_label"]
    assert report["pool"] == 120 - 40 - 40
    assert report["pool_rows_in_teacher_training"] == report["pool"]
    assert "the teacher trained on 40 of the 40 pool rows" in caplog.text


def test_pool_size_takes_a_seeded_subset_of_the_pool(tokenizer, data, tmp_path, tiny_teacher):
    def kept_ids(seed):
        dm = build(tokenizer, data, tmp_path, PseudoLabeler(str(tiny_teacher), threshold=0.26, balance=False,
                                                            pool_size=30), seed=seed)
        dm.setup()
        assert dm.report["pseudo_label"]["pool"] == 30
        return dm.splits["train"].ids[40:]

    assert kept_ids(0) == kept_ids(0)
    assert set(kept_ids(0)) <= set(pool_of(data).ids)


def test_a_pseudo_labelled_run_trains_through_the_pipeline(tmp_path, data, tiny_teacher):
    """`python -m agnews.train ... data.train_size=40 data.pseudo_label.teacher=<run>`: the run trains on gold + kept
    rows and its manifest reports them."""
    import json

    from conftest import TINY, small_data_overrides, train_run

    run = train_run(tmp_path / "run", [
        *TINY, *small_data_overrides(data), "data.val_size=20", "data.train_size=40", "trainer.max_epochs=1",
        f"data.pseudo_label.teacher={tiny_teacher}", "data.pseudo_label.threshold=0.26",
        "data.pseudo_label.balance=false",
    ])
    data_section = json.loads((run / "run.json").read_text())["data"]
    assert (run / "metrics.json").is_file()
    report = data_section["pseudo_label"]  # the data module's report, in the manifest's data section
    assert report["kept"] > 0 and data_section["sizes"]["train"] == 40 + report["kept"]
    assert report["pool"] == 100 and report["threshold"] == 0.26


# ---- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0, 1, 1.5, -0.2, "high", True])
def test_a_threshold_outside_zero_one_is_refused(threshold):
    with pytest.raises(ConfigError, match=r"data.pseudo_label.threshold must lie in \(0, 1\)"):
        PseudoLabeler("run", threshold=threshold)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(pool_size=0), "pool_size must be an integer >= 1"),
        (dict(batch_size=2.5), "batch_size must be an integer >= 1"),
        (dict(precision="fp16"), "precision='fp16'"),
        (dict(balance="yes"), "balance must be true or false"),
    ],
)
def test_bad_options_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        PseudoLabeler("run", **settings)


def test_a_missing_or_unfinished_teacher_run_is_a_config_error(tokenizer, data, tmp_path):
    with pytest.raises(ConfigError, match=r"data.pseudo_label.teacher=.*no such run"):
        build(tokenizer, data, tmp_path, PseudoLabeler(str(tmp_path / "nowhere"))).setup()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"the run did not finish"):
        build(tokenizer, data, tmp_path, PseudoLabeler(str(unfinished))).setup()


def test_a_teacher_with_other_label_names_is_refused(tiny_teacher):
    with pytest.raises(ConfigError, match=r"predicts \['World', 'Sports', 'Business', 'Sci/Tech'\].*label_names are"):
        PseudoLabeler(str(tiny_teacher)).load_teacher(["Politics", "Sports", "Business", "Sci/Tech"])


def test_an_empty_pool_and_nothing_kept_are_config_errors(tokenizer, data, tmp_path, tiny_teacher):
    with pytest.raises(ConfigError, match=r"unlabelled pool is empty.*data.train_size"):
        build(tokenizer, data, tmp_path, PseudoLabeler(str(tiny_teacher)), train_size=None).setup()
    with pytest.raises(ConfigError, match=r"no pool row was kept \(threshold 0.999999.*Lower"):
        build(tokenizer, data, tmp_path, PseudoLabeler(str(tiny_teacher), threshold=0.999999)).setup()


def test_the_config_node_builds_the_labeler_and_null_teacher_is_off(compose_train_cfg, tokenizer, data):
    from hydra.utils import instantiate

    base = [f"data.data_dir={data}", "data.source=csv", "data.val_size=20", "data.train_size=40"]
    off = instantiate(compose_train_cfg(base).data, tokenizer=tokenizer)
    assert isinstance(off.pseudo_label, PseudoLabeler) and not off.pseudo_label.enabled
    off.setup()
    assert off.report == {} and len(off.splits["train"]) == 40
    on = instantiate(
        compose_train_cfg([*base, "data.pseudo_label.teacher=/some/run", "data.pseudo_label.threshold=0.8"]).data,
        tokenizer=tokenizer,
    )
    assert (on.pseudo_label.teacher, on.pseudo_label.threshold, on.pseudo_label.balance) == ("/some/run", 0.8, True)
    off_entirely = instantiate(compose_train_cfg([*base, "data.pseudo_label=null"]).data, tokenizer=tokenizer)
    assert off_entirely.pseudo_label is None


# ---- the real pretrained MiniLM as teacher, on real rows it never saw ------------------------------------------------
def test_the_real_minilm_teacher_labels_unseen_real_rows(tokenizer, tmp_path, real_minilm_run, shared_data_dir):
    """The session's real MiniLM run trained on the first 600 shared train rows; its pool here is rows 600-999."""
    folder = tmp_path / "real"
    with (shared_data_dir / "train.csv").open(newline="", encoding="utf-8") as handle:
        write_ag_news_csv(folder / "train.csv", list(itertools.islice(csv.reader(handle), 600, 1000)))
    with (shared_data_dir / "test.csv").open(newline="", encoding="utf-8") as handle:
        write_ag_news_csv(folder / "test.csv", list(itertools.islice(csv.reader(handle), 40)))
    pool = pool_of(folder, train_size=100, val_size=40)
    # one epoch on 500 rows leaves the teacher under-confident (top probabilities mostly below 0.7): threshold 0.5
    expected, kept = expected_report(real_minilm_run, pool, 0.5, True)
    expected.pop("predicted")

    dm = build(tokenizer, folder, tmp_path, PseudoLabeler(str(real_minilm_run), threshold=0.5), train_size=100,
               val_size=40, max_length=64)
    dm.setup()
    report = dm.report["pseudo_label"]
    assert {key: report[key] for key in expected} == expected
    assert report["pool"] == 260 and report["kept"] >= 20 and report["pool_rows_in_teacher_training"] == 0
    assert len(set(report["kept_per_class"].values())) == 1
    # a fine-tuned teacher's confident labels on news it never saw are mostly right, and beat its unfiltered labels
    assert report["kept_accuracy"] >= max(0.8, report["teacher_accuracy_on_pool"])
    assert len(dm.splits["train"]) == 100 + report["kept"]
