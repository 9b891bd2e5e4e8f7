"""End-to-end runs of the training pipeline: artifacts, resume, the real MiniLM on the real data."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import lightning as L
import pytest
import torch

from tests.conftest import LABELS, REPO_ROOT, TINY, small_data_overrides as _small_data


def _read_predictions(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_run_writes_consumable_artifacts(tmp_path, make_ag_news_dir):
    """The real CLI, as a user runs it: every artifact the later stages consume is there and self-consistent."""
    data = make_ag_news_dir(train_per_class=60, test_per_class=10)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "agnews.train", *TINY, *_small_data(data),
        "trainer.max_epochs=3", "strategy.optimizer.lr=1e-2", f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    model_dir = run_dir / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")), "weights must be safetensors only"
    info = json.loads((model_dir / "agnews_model.json").read_text())
    assert info["label_names"] == LABELS and info["max_length"] == 32 and info["padding_side"] == "right"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split, size in (("val", 40), ("test", 40)):
        report = metrics[split]
        assert report["num_examples"] == size
        assert set(report["per_class"]) == set(LABELS)
        assert sum(map(sum, report["confusion_matrix"])) == size
        assert 0.0 <= report["accuracy"] <= 1.0
    # The synthetic classes are separable by vocabulary: a working pipeline learns them.
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]

    rows = _read_predictions(run_dir / "predictions" / "test.csv")
    assert [r["id"] for r in rows] == [f"test-{i:06d}" for i in range(40)]
    for row in rows:
        probs = [float(row[f"prob_{name}"]) for name in LABELS]
        assert abs(sum(probs) - 1.0) < 1e-4
        assert int(row["pred"]) == max(range(4), key=probs.__getitem__)
    correct = sum(int(r["pred"]) == int(r["label"]) for r in rows)
    assert correct / len(rows) == pytest.approx(metrics["test"]["accuracy"])

    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["data"]["sizes"] == {"train": 200, "val": 40, "test": 40}
    assert manifest["artifacts"]["model"] == "model"

    # The exported model alone (what export/serving will load) reproduces the run's test probabilities.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from agnews.data.sources import read_ag_news_csv

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = read_ag_news_csv(data / "test.csv", "test").texts[:8]
    with torch.inference_mode():
        encoded = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        probs = torch.softmax(model(**encoded).logits, dim=-1)
    expected = torch.tensor([[float(r[f"prob_{n}"]) for n in LABELS] for r in rows[:8]])
    assert torch.allclose(probs, expected, atol=1e-4)


class StopAfterFirstEpoch(L.Callback):
    """Simulates an interruption: the run is configured for 2 epochs (same LR schedule) but ends after the first."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def test_resumed_run_matches_uninterrupted_run(tmp_path, make_ag_news_dir, compose_train_cfg):
    """Stop after epoch 1, resume from last.ckpt to epoch 2: same metrics and predictions as one 2-epoch run."""
    from omegaconf import open_dict

    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=30, test_per_class=8)
    # lr high enough to learn, and a strictly improving monitor, so "best" changes epoch to epoch.
    common = [
        *TINY, *_small_data(data), "trainer.deterministic=true", "callbacks.early_stopping=null", "seed=3",
        "strategy.optimizer.lr=5e-3", "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min",
    ]

    def run(name, overrides, ckpt_path=None):
        cfg = compose_train_cfg(common + overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
            cfg.ckpt_path = ckpt_path
        return train(cfg)

    full = run("full", ["trainer.max_epochs=2"])
    run("first_half", ["trainer.max_epochs=2", f"+callbacks.interrupt._target_={__name__}.StopAfterFirstEpoch"])
    last = tmp_path / "first_half" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    resumed = run("resumed", ["trainer.max_epochs=2"], ckpt_path=str(last))

    assert resumed["test"]["accuracy"] == full["test"]["accuracy"]
    assert resumed["val"]["confusion_matrix"] == full["val"]["confusion_matrix"]
    full_rows = _read_predictions(tmp_path / "full" / "predictions" / "test.csv")
    resumed_rows = _read_predictions(tmp_path / "resumed" / "predictions" / "test.csv")
    for a, b in zip(full_rows, resumed_rows, strict=True):
        assert a["id"] == b["id"]
        for name in LABELS:
            assert float(a[f"prob_{name}"]) == pytest.approx(float(b[f"prob_{name}"]), abs=1e-5)
    # The run that was never interrupted must differ from a 1-epoch run (otherwise the comparison proves nothing).
    half_rows = _read_predictions(tmp_path / "first_half" / "predictions" / "test.csv")
    assert any(a["prob_World"] != h["prob_World"] for a, h in zip(full_rows, half_rows))


def test_real_minilm_learns_on_real_data(tmp_path, shared_data_dir, compose_train_cfg):
    """The shipped pretrained MiniLM, a handful of steps on the real shared AG News: loss drops, accuracy >> chance."""
    from agnews.pipeline import train

    cfg = compose_train_cfg(
        [
            "experiment=quickstart",
            f"data.data_dir={shared_data_dir}",
            "data.train_size=384",
            "data.val_size=200",
            "data.batch_size=16",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1",
            "scoring.splits=[val]",
            "scoring.export_model=false",
            "callbacks.progress_bar=null",
            "strategy.optimizer.lr=2e-4",
        ]
    )
    metrics = train(cfg)
    assert metrics["val"]["num_examples"] == 200
    assert metrics["val"]["accuracy"] > 0.6, metrics["val"]
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as handle:
        losses = [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.3, losses


def test_debug_trainer_smoke_run(tmp_path, make_ag_news_dir, compose_train_cfg):
    """trainer=debug (fast_dev_run) wires everything with one batch and still writes metrics."""
    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=10, test_per_class=4)
    cfg = compose_train_cfg(["model=xlnet", "model.tiny=true", "trainer=debug", *_small_data(data), "data.val_size=8"])
    metrics = train(cfg)
    assert metrics["best_checkpoint"] is None
    assert metrics["test"]["num_examples"] == 16
