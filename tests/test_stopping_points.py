"""Every way a run can stop ends in a scored, exported run; the CLI reports it; a sweep of failures fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LABELS, REPO_ROOT, TINY, small_data_overrides, train_run


def _env(tmp_path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}


def _assert_scored_and_exported(run_dir, val_size: int, test_size: int) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split, size in (("val", val_size), ("test", test_size)):
        assert metrics[split]["num_examples"] == size, (split, metrics[split]["num_examples"])
        lines = (run_dir / "predictions" / f"{split}.csv").read_text().strip().splitlines()
        assert len(lines) == size + 1  # header + every example
    info = json.loads((run_dir / "model" / "agnews_model.json").read_text())
    assert info["label_names"] == LABELS
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert (run_dir / "run.json").is_file()  # written last: the run is marked finished
    return metrics


def test_debug_trainer_scores_every_example(tmp_path, make_ag_news_dir):
    """trainer=debug (fast_dev_run: one batch of train/val) still scores all val/test rows, not one eval batch."""
    data = make_ag_news_dir(train_per_class=10, test_per_class=6)
    run_dir = train_run(
        tmp_path / "run",
        ["model=minilm", "model.tiny=true", "trainer=debug", "logger=csv", *small_data_overrides(data),
         "data.val_size=12", "data.eval_batch_size=4"],
    )
    metrics = _assert_scored_and_exported(run_dir, val_size=12, test_size=24)
    assert metrics["best_checkpoint"] is None  # fast_dev_run saves no checkpoint: the last weights are scored


# 200 train rows at batch size 16 = 13 batches per epoch: each limit stops training before the epoch's validation.
@pytest.mark.parametrize(
    "limits",
    [
        ["trainer.max_steps=2", "trainer.max_epochs=1"],
        ["trainer.limit_train_batches=2", "trainer.max_epochs=1"],
        ["trainer.val_check_interval=3", "trainer.max_steps=4", "trainer.max_epochs=1"],
        ["trainer.max_epochs=2", "trainer.limit_train_batches=1"],
    ],
    ids=["max_steps", "limit_train_batches", "val_check_interval", "epochs_of_one_batch"],
)
def test_shortened_run_ends_scored_and_exported(tmp_path, make_ag_news_dir, limits):
    data = make_ag_news_dir(train_per_class=50, test_per_class=10)
    run_dir = train_run(tmp_path / "run", [*TINY, *small_data_overrides(data), *limits])
    metrics = _assert_scored_and_exported(run_dir, val_size=40, test_size=40)
    manifest = json.loads((run_dir / "run.json").read_text())
    assert 1 <= manifest["global_step"] <= 4
    # The run validated (during fit or once at its end): val metrics reach the training log too.
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0]
    assert "val/accuracy" in header.split(",")
    assert metrics["val"]["accuracy"] >= 0.0


def test_quickstart_shortened_by_max_steps_finishes(tmp_path, make_ag_news_dir):
    """The reported crash: experiment=quickstart trainer.max_steps=4 (validation only at the epoch end)."""
    data = make_ag_news_dir(train_per_class=50, test_per_class=10)
    run_dir = train_run(
        tmp_path / "run",
        ["experiment=quickstart", "model=minilm", "model.tiny=true", "logger=csv", *small_data_overrides(data),
         "data.train_size=null", "data.val_size=40", "trainer.max_steps=4", "trainer.precision=32-true"],
    )
    _assert_scored_and_exported(run_dir, val_size=40, test_size=40)


def test_cli_run_prints_where_it_is_and_what_next(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=20, test_per_class=5)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "agnews.train", *TINY, *small_data_overrides(data), "trainer.max_steps=2",
               f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = result.stdout
    resolved = run_dir.resolve()
    assert f"Run directory: {resolved}" in out
    for split in ("val", "test"):
        assert f"{split:<4} accuracy {metrics[split]['accuracy']:.4f}  macro-F1 {metrics[split]['f1_macro']:.4f}" in out
    assert f"python -m agnews.export run={resolved} quantize=int8" in out
    assert f"python -m agnews.serve run={resolved}" in out
    assert f"python -m agnews.evaluation.robustness --run {resolved}" in out


def _multirun(tmp_path, data_dirs: str, name: str) -> subprocess.CompletedProcess:
    sweep_dir = tmp_path / name
    command = [sys.executable, "-m", "agnews.train", "-m", *TINY,
               *[o for o in small_data_overrides("x") if not o.startswith("data.data_dir=")], f"data.data_dir={data_dirs}", "trainer.max_steps=2", f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=REPO_ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_multirun_with_every_job_failed_exits_nonzero(tmp_path):
    missing = tmp_path / "no_such_data"
    result = _multirun(tmp_path, f"{missing}_a,{missing}_b", "failed_sweep")
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Every job failed" in result.stderr
    assert len(list((tmp_path / "failed_sweep").rglob("error.txt"))) == 2


def test_multirun_with_one_good_job_exits_zero(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=20, test_per_class=4)
    result = _multirun(tmp_path, f"{data},{tmp_path / 'no_such_data'}", "mixed_sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "mixed_sweep"
    assert len(list(sweep.rglob("error.txt"))) == 1 and len(list(sweep.rglob("metrics.json"))) == 1
    assert "Run directory:" in result.stdout


# The same limits on the shipped MiniLM and real rows (quickstart recipe: validation only at the epoch's end, early
# stopping and best-checkpoint selection on val/accuracy): each run must still validate, score and export.
@pytest.mark.parametrize(
    "limits",
    [
        ["trainer.max_steps=3"],
        ["trainer.limit_train_batches=2"],
        ["trainer.val_check_interval=2", "trainer.max_steps=3"],
    ],
    ids=["max_steps", "limit_train_batches", "val_check_interval"],
)
def test_real_minilm_shortened_runs_end_scored(tmp_path, shared_data_dir, limits):
    from tests.conftest import real_rows_dir

    data = real_rows_dir(tmp_path / "data", shared_data_dir, train_rows=200, test_rows=80)
    run_dir = train_run(
        tmp_path / "run",
        ["experiment=quickstart", f"data.data_dir={data}", "data.train_size=null", "data.val_size=40",
         "data.max_length=32", "data.batch_size=16", "logger=csv", *limits],
    )
    metrics = _assert_scored_and_exported(run_dir, val_size=40, test_size=80)
    assert 1 <= json.loads((run_dir / "run.json").read_text())["global_step"] <= 3
    assert metrics["monitor"] == "val/accuracy" and 0.0 <= metrics["val"]["accuracy"] <= 1.0
    # Validation inside fit saved a best checkpoint (scored); stopped before one, the final weights are validated once
    # and scored, with no checkpoint to point at.
    best = metrics["best_checkpoint"]
    assert best is None or Path(best).is_file()
    assert best is not None or "max_steps=3" in limits[-1]
