"""One name per metric: ``<split>/<metric>`` (metric as in metrics.json) in the training log, metrics.json, the sweep
summary and every config that names a metric (checkpoint / early-stopping monitor, pruning monitor, objective)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, REPO_ROOT, TINY, small_data_overrides

LOGGED = {"train/loss", "val/loss", "val/accuracy", "val/f1_macro", "test/accuracy", "test/f1_macro"}
SUMMARY_COLUMNS = ["val/accuracy", "val/f1_macro", "test/accuracy", "test/f1_macro"]


def _lookup(metrics: dict, name: str):
    """``val/accuracy`` -> metrics["val"]["accuracy"]: the name is the path in metrics.json."""
    split, metric = name.split("/")
    return metrics[split][metric]


def test_tiny_sweep_uses_the_same_names_in_log_metrics_json_and_summary(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=8, test_per_class=3)
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "agnews.train", "-m", *TINY, *small_data_overrides(data), "data.val_size=12",
               "trainer.max_epochs=1", "scoring.export_model=false", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    for job in ("0", "1"):
        job_dir = sweep / job
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["monitor"] == "val/accuracy"  # the checkpoint monitor is one of the logged names
        with open(job_dir / "csv" / "metrics.csv", newline="") as handle:
            log_rows = list(csv.DictReader(handle))
        columns = set(log_rows[0])
        assert LOGGED <= columns, columns
        # No second spelling of the same metric (val/acc, test/final_accuracy, val_accuracy, ...).
        assert not {c for c in columns if c.endswith("/acc") or "final_" in c or "_accuracy" in c}, columns
        # The final row carries the metrics.json scores under the same names.
        (final,) = [r for r in log_rows if r["test/accuracy"]]
        for name in ("val/accuracy", "val/f1_macro", "test/accuracy", "test/f1_macro"):
            assert float(final[name]) == pytest.approx(_lookup(metrics, name), abs=1e-6), name
        assert any(r["val/accuracy"] and r["val/loss"] for r in log_rows)  # logged during training too

    with open(sweep / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert set(SUMMARY_COLUMNS) <= set(reader.fieldnames)
        rows = list(reader)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        for name in SUMMARY_COLUMNS:
            assert float(row[name]) == pytest.approx(_lookup(metrics, name), abs=1e-4), name
    with open(sweep / "summary_by_config.csv", newline="") as handle:
        fields = csv.DictReader(handle).fieldnames
    assert [f for f in fields if "/" in f] == [f"{c}_{s}" for c in SUMMARY_COLUMNS for s in ("mean", "std")]


def test_every_configured_metric_name_is_a_logged_name():
    """Monitors, the pruning monitor and the Optuna objective name metrics that really exist under that name."""
    import inspect

    from agnews.sweeps.optuna_sweeper import OptunaSweeperImpl
    from agnews.sweeps.pruning import OptunaPruningCallback
    from hydra_plugins.agnews_optuna_sweeper.config import AgnewsOptunaSweeperConf

    named = {
        "callbacks/model_checkpoint": OmegaConf.load(CONF_DIR / "callbacks" / "model_checkpoint.yaml").model_checkpoint.monitor,
        "callbacks/early_stopping": OmegaConf.load(CONF_DIR / "callbacks" / "early_stopping.yaml").early_stopping.monitor,
        "sweeper default": AgnewsOptunaSweeperConf.pruning_monitor,
        "sweeper __init__": inspect.signature(OptunaSweeperImpl.__init__).parameters["pruning_monitor"].default,
        "pruning callback": inspect.signature(OptunaPruningCallback.__init__).parameters["monitor"].default,
    }
    for search in sorted((CONF_DIR / "hparams_search").glob("*.yaml")):
        cfg = OmegaConf.load(search)
        named[f"{search.name} objective"] = cfg.optimized_metric
        named[f"{search.name} pruning"] = cfg.hydra.sweeper.pruning_monitor
    wrong = {where: name for where, name in named.items() if name not in LOGGED}
    assert not wrong, f"metric names outside the <split>/<metric> scheme: {wrong}"
