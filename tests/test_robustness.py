"""Robustness suite: each perturbation does what it says, rates hold, outputs are deterministic, the CLI writes JSON."""

from __future__ import annotations

import collections
import csv
import json
import os
import random
import subprocess
import sys

import pytest

from agnews.evaluation.robustness import (
    KEYBOARD_NEIGHBOURS,
    PERTURBATIONS,
    evaluate_robustness,
    perturb,
    synonym_table,
)
from tests.conftest import LABELS, REPO_ROOT

TEXT = "The President said Microsoft shares rose sharply after the company announced record profits, again."


def _long_text(words: int = 2000, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9))) for _ in range(words))


def _is_one_deletion(long: str, short: str) -> bool:
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_same_text_same_seed_same_output(name):
    out = perturb(TEXT, name, 0.5, seed=3)
    assert out == perturb(TEXT, name, 0.5, seed=3)
    perturb("something else entirely, to move any global state", name, 0.5, seed=3)
    assert out == perturb(TEXT, name, 0.5, seed=3)  # independent of what was perturbed before
    long = _long_text(200) + " " + " ".join(sorted(synonym_table()))
    assert perturb(long, name, 0.5, seed=3) != perturb(long, name, 0.5, seed=4)
    assert perturb(TEXT, name, 0.0, seed=3) == (TEXT if name not in ("word_drop", "word_shuffle") else " ".join(TEXT.split()))


@pytest.mark.parametrize("name", ["char_swap", "char_drop", "char_insert", "keyboard_typo", "word_drop"])
def test_rate_is_the_fraction_of_units_perturbed(name):
    text = _long_text(2000)
    words = text.split()
    for rate in (0.1, 0.3):
        out = perturb(text, name, rate, seed=1)
        if name == "word_drop":
            fraction = 1 - len(out.split()) / len(words)
        else:
            fraction = sum(a != b for a, b in zip(words, out.split())) / len(words)
        assert rate - 0.035 <= fraction <= rate + 0.035, (name, rate, fraction)
    changed = perturb(text, name, 1.0, seed=1).split()
    if name == "word_drop":
        assert len(changed) == 1 and changed[0] in words  # never drops everything
    else:
        assert all(a != b for a, b in zip(words, changed))


def test_character_perturbations_on_a_known_word():
    for seed in range(20):
        swapped = perturb("market", "char_swap", 1.0, seed)
        diffs = [i for i in range(6) if swapped[i] != "market"[i]]
        assert len(diffs) == 2 and diffs[1] == diffs[0] + 1 and sorted(swapped) == sorted("market")
        assert _is_one_deletion("market", perturb("market", "char_drop", 1.0, seed))
        inserted = perturb("market", "char_insert", 1.0, seed)
        assert _is_one_deletion(inserted, "market")
        typo = perturb("Market", "keyboard_typo", 1.0, seed)
        diffs = [i for i in range(6) if typo[i] != "Market"[i]]
        assert len(diffs) == 1
        i = diffs[0]
        assert typo[i].lower() in KEYBOARD_NEIGHBOURS["Market"[i].lower()]
        assert typo[i].isupper() == "Market"[i].isupper()
    assert KEYBOARD_NEIGHBOURS["g"] == "fhtyvb" and KEYBOARD_NEIGHBOURS["q"] == "wa"
    # punctuation, digits and spacing around words survive character edits; single letters are never edited
    out = perturb("Oil, at $50 a barrel!", "char_drop", 1.0, 0)
    assert out.count(",") == 1 and "$50 a " in out and out.endswith("!") and len(out) == len("Oil, at $50 a barrel!") - 3


def test_word_perturbations_on_a_known_sentence():
    tokens = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10".split()
    text = " ".join(tokens)
    shuffled = perturb(text, "word_shuffle", 1.0, 0).split()
    assert sorted(shuffled) == sorted(tokens)
    for start in range(0, 11, 3):  # tokens move only within their window of 3
        assert sorted(shuffled[start : start + 3]) == sorted(tokens[start : start + 3])
        if start < 9:
            assert shuffled[start : start + 3] != tokens[start : start + 3]
    dropped = perturb(text, "word_drop", 0.5, 0).split()
    assert 0 < len(dropped) < len(tokens)
    assert dropped == [t for t in tokens if t in dropped]  # order kept

    table = synonym_table()
    out = perturb("Company profits rose as the firm said", "synonym", 1.0, 0).split()
    assert out[0] in {w.capitalize() for w in table["company"]}  # capitalisation kept
    assert out[1] in table["profits"] and out[2] in table["rose"] and out[5] in table["firm"] and out[6] in table["said"]
    assert out[3:5] == ["as", "the"]  # words outside the table stay
    custom = perturb("Shares rose", "synonym", 1.0, 0, table={"shares": ["equities"]})
    assert custom == "Equities rose"


def test_score_is_mean_relative_accuracy():
    texts = ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    labels = [0, 0, 1, 1]

    def score(batch):  # class 0 when the text still starts with its original first word
        return [0 if t.split()[0] in ("alpha", "gamma") else 1 for t in batch]

    report = evaluate_robustness(score, texts, labels, [("word_shuffle", 1.0), ("word_shuffle", 0.0)], seed=0)
    assert report["clean_accuracy"] == 1.0
    shuffled, untouched = report["perturbations"]
    assert untouched["accuracy"] == 1.0 and untouched["changed_fraction"] == 0.0
    assert shuffled["changed_fraction"] == 1.0 and shuffled["accuracy"] == 0.5  # the two class-0 texts now fail
    assert report["robustness_score"] == pytest.approx((0.5 + 1.0) / 2)
    assert report["worst"] == "word_shuffle"


def test_cli_writes_robustness_json_for_an_exported_run(tmp_path, make_ag_news_dir, compose_train_cfg):
    from omegaconf import open_dict

    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=40, test_per_class=10)
    cfg = compose_train_cfg(
        [
            "model=minilm", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", "logger=csv",
            f"data.data_dir={data}", "data.source=csv", "data.val_size=40", "data.max_length=32",
            "data.batch_size=16", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
            "trainer.max_epochs=2", "strategy.optimizer.lr=1e-2",
        ]
    )
    run_dir = tmp_path / "run"
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    train(cfg)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "agnews.evaluation.robustness", "--run", str(run_dir), "--limit", "24",
        "--rates", "0.0", "0.5", "--perturbations", "char_swap", "word_drop", "synonym", "--seed", "5",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "robustness.json").read_text())
    assert report["split"] == "test" and report["num_examples"] == 24 and report["seed"] == 5
    assert report["precision"] == "fp32"  # the default; the run trained in fp32 too
    # The clean accuracy is the run's own accuracy on those 24 test rows (same model, same inputs).
    with open(run_dir / "predictions" / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:24]
    assert report["clean_accuracy"] == pytest.approx(sum(r["pred"] == r["label"] for r in rows) / 24)
    entries = {(p["name"], p["rate"]): p for p in report["perturbations"]}
    assert set(entries) == {(n, r) for n in ("char_swap", "word_drop", "synonym") for r in (0.0, 0.5)}
    for name in ("char_swap", "word_drop", "synonym"):
        assert entries[(name, 0.0)]["accuracy"] == report["clean_accuracy"]
        assert entries[(name, 0.0)]["changed_fraction"] == 0.0
        assert entries[(name, 0.5)]["changed_fraction"] > 0.5
    relative = [p["accuracy"] / report["clean_accuracy"] for p in report["perturbations"]]
    assert report["robustness_score"] == pytest.approx(sum(relative) / len(relative))
    assert json.loads(result.stdout.strip().splitlines()[-1])["robustness_score"] == pytest.approx(report["robustness_score"])
    assert report["synonym_source"].startswith("built-in")

    # --sample-size: a seeded stratified sample (class proportions of the whole test split), scored on those ids.
    sample = subprocess.run(
        [*command[:5], "--sample-size", "20", "--perturbations", "char_swap", "--rates", "0.3", "--seed", "3",
         "--output", str(tmp_path / "sample.json")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    sampled = json.loads((tmp_path / "sample.json").read_text())
    assert sampled["num_examples"] == 20 and sampled["sample_size"] == 20 and len(set(sampled["ids"])) == 20
    with open(run_dir / "predictions" / "test.csv", newline="") as handle:
        by_id = {r["id"]: r for r in csv.DictReader(handle)}
    whole = collections.Counter(r["label"] for r in by_id.values())
    assert sum(sampled["label_counts"].values()) == 20
    for count, share in zip(sampled["label_counts"].values(), [whole[k] / len(by_id) for k in sorted(whole)]):
        assert abs(count - 20 * share) <= 1
    assert sampled["ids"] != [r for r in list(by_id)[:20]]  # not simply the first rows
    chosen = [by_id[i] for i in sampled["ids"]]
    assert sampled["clean_accuracy"] == pytest.approx(sum(r["pred"] == r["label"] for r in chosen) / 20)
    both = subprocess.run([*command[:5], "--limit", "5", "--sample-size", "5"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "exclude each other" in both.stderr
