"""SWA (conf/callbacks/swa.yaml) and snapshot ensembles (agnews/callbacks/snapshot_ensemble.py) on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, REPO_ROOT, TINY, small_data_overrides, synthetic_rows, train_run, write_ag_news_csv
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from agnews import runs
from agnews.callbacks.snapshot_ensemble import cycle_ends
from agnews.data.run_splits import load_run_split
from agnews.errors import ConfigError
from agnews.inference import Predictor


class EpochWeights(Callback):
    """Saves the model's weights at the end of every training epoch and after fit (files, so a subprocess works too)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def _save(self, pl_module, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.folder / f"{name}.pt")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(pl_module, f"epoch{trainer.current_epoch}")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._save(pl_module, "fit_end")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # The learning rate the epoch trains with (after any scheduler swap at its start).
        self.folder.mkdir(parents=True, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with (self.folder / "lr.txt").open("a") as handle:
            handle.write(f"{trainer.current_epoch} {lr}\n")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("swa_snapshot_data")
    write_ag_news_csv(folder / "train.csv", synthetic_rows(30, seed=1))
    write_ag_news_csv(folder / "test.csv", synthetic_rows(8, seed=2, empty_title_every=0))
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# ---- SWA -------------------------------------------------------------------------------------------------------------
def test_swa_run_scores_and_exports_the_averaged_weights(tmp_path, tiny_data):
    weights = tmp_path / "weights"
    run = train_run(
        tmp_path / "run",
        [
            *TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=4", "strategy.optimizer.lr=2e-2",
            "callbacks=swa", "callbacks.swa.swa_lrs=0.01", "callbacks.swa.swa_epoch_start=2",
            f"+callbacks.capture._target_={__name__}.EpochWeights", f"+callbacks.capture.folder={weights}",
        ],
    )
    epoch_end = [_weights(weights / f"epoch{e}.pt") for e in range(4)]
    final = _weights(weights / "fit_end.pt")
    # The average of the weights that epochs 2, 3 and 4 (swa_epoch_start=2, 1-based) end with: the last epoch's
    # training counts, the weights before epoch 2 do not (Lightning's own callback would average epochs 1-3).
    average = {k: sum(w[k].double() for w in epoch_end[1:]) / 3 for k in final}
    assert _max_difference(average, final) < 1e-6
    assert _max_difference(epoch_end[3], final) > 1e-3  # not simply the last weights
    # SWALR replaced the linear schedule: annealed over epoch 2, constant swa_lrs after.
    lrs = dict(line.split() for line in (weights / "lr.txt").read_text().splitlines())
    assert float(lrs["2"]) == pytest.approx(0.01) and float(lrs["3"]) == pytest.approx(0.01)

    # No "best" checkpoint to reload: the pipeline scored and exported the weights in memory, the average.
    metrics = json.loads((run / runs.METRICS_FILE).read_text())
    assert metrics["best_checkpoint"] is None and (run / "checkpoints" / "last.ckpt").is_file()
    exported = load_file(run / runs.MODEL_DIR / "model.safetensors")
    assert _max_difference({k: exported[k] for k in final}, final) == 0.0
    stored = runs.read_predictions(runs.predictions_path(run, "val"))
    split = load_run_split(run, "val")
    texts = dict(zip(split.ids, split.texts))
    predicted = Predictor.from_path(run).predict_proba([texts[i] for i in stored.ids])
    np.testing.assert_allclose(predicted, stored.probs, atol=2e-5)


# ---- snapshot ensembles ----------------------------------------------------------------------------------------------
SNAPSHOT = ["+strategy/scheduler=cosine_restarts", "strategy.scheduler.num_cycles=3", "callbacks=snapshot_ensemble"]


def test_cycle_ends_match_transformers_restarts():
    from torch.optim import SGD

    from agnews.strategies.optim import cosine_with_restarts

    for total, cycles, warmup_ratio in [(15, 3, 0.0), (100, 4, 0.1), (7, 2, 0.0), (33, 5, 0.06)]:
        scheduler = cosine_with_restarts(SGD([torch.zeros(1)], lr=1.0), total, cycles, warmup_ratio)
        factor = scheduler.lr_lambdas[0]
        warmup = int(round(warmup_ratio * total))
        restarts = [s for s in range(warmup + 1, total) if factor(s) > factor(s - 1)]
        assert cycle_ends(total, cycles, warmup) == restarts


def test_snapshots_are_finished_runs_that_the_ensemble_command_combines(tmp_path, tiny_data):
    weights = tmp_path / "weights"
    run = train_run(
        tmp_path / "run",
        [
            *TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=3", "strategy.optimizer.lr=2e-2", *SNAPSHOT,
            f"+callbacks.capture._target_={__name__}.EpochWeights", f"+callbacks.capture.folder={weights}",
        ],
    )
    # 80 training rows, batch 16: 5 steps per epoch, 15 in all; 3 cycles restart after steps 5 and 10.
    lr = _logged_lr(run)
    assert max(lr.values()) == pytest.approx(2e-2) and len(lr) == 15
    for end in (5, 10):
        assert lr[end] == pytest.approx(2e-2) and lr[end - 1] < 0.2 * lr[end]  # the restart
    snapshots = [run / "snapshots" / str(k) for k in range(3)]
    manifests = [runs.load_run(s).manifest for s in snapshots]
    assert [m["global_step"] for m in manifests] == [5, 10, 15]
    assert all(m["snapshot"]["complete"] for m in manifests)
    members = [load_file(s / runs.MODEL_DIR / "model.safetensors") for s in snapshots]
    assert min(_max_difference(members[i], members[j]) for i, j in [(0, 1), (1, 2), (0, 2)]) > 1e-3
    # Snapshot 2 is the final weights: the same as the epoch-3 weights and the run's own export (no better best.ckpt
    # here: the tiny model learns the separable data in the first cycle, so best.ckpt may be an earlier epoch).
    final = _weights(weights / "epoch2.pt")
    assert _max_difference({k: members[2][k] for k in final}, final) == 0.0
    # Each snapshot's stored predictions are what its exported model predicts.
    split = load_run_split(run, "val")
    for snapshot in snapshots:
        stored = runs.read_predictions(runs.predictions_path(snapshot, "val"))
        assert stored.ids == split.ids and runs.load_run(snapshot).splits == ["test", "val"]
        np.testing.assert_allclose(Predictor.from_path(snapshot).predict_proba(split.texts), stored.probs, atol=2e-5)

    listed = ",".join(str(s) for s in snapshots)
    done = subprocess.run(
        [sys.executable, "-m", "agnews.ensemble", f"members=[{listed}]", "method=hard_vote",
         f"paths.output_dir={tmp_path / 'ensemble'}"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ensemble = runs.load_run(tmp_path / "ensemble")
    assert ensemble.has_bundle and set(ensemble.splits) == {"val", "test"}
    probs = Predictor.from_path(tmp_path / "ensemble").predict_proba(split.texts[:4])
    assert probs.shape == (4, 4)


def test_a_resumed_snapshot_run_brings_the_earlier_snapshots_along_and_matches_the_uninterrupted_run(tmp_path,
                                                                                                     tiny_data):
    mid = tmp_path / "mid"
    base = [*TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=3", "strategy.optimizer.lr=2e-2", *SNAPSHOT]
    full = train_run(tmp_path / "full", [
        *base, "+callbacks.mid._target_=lightning.pytorch.callbacks.ModelCheckpoint", f"+callbacks.mid.dirpath={mid}",
        "+callbacks.mid.every_n_train_steps=7", "+callbacks.mid.save_top_k=-1", "+callbacks.mid.filename='step{step}'",
    ])
    [checkpoint] = mid.glob("*step=7*.ckpt")  # after snapshot 0 (step 5), before snapshot 1 (step 10)
    resumed = train_run(tmp_path / "resumed", [*base, f"ckpt_path='{checkpoint}'"])
    for k in range(3):
        expected = load_file(full / "snapshots" / str(k) / runs.MODEL_DIR / "model.safetensors")
        got = load_file(resumed / "snapshots" / str(k) / runs.MODEL_DIR / "model.safetensors")
        assert _max_difference(expected, got) < 1e-6, k
        manifest = runs.load_run(resumed / "snapshots" / str(k)).manifest
        assert manifest["global_step"] == 5 * (k + 1) and manifest["snapshot"]["complete"]
        assert runs.read_predictions(runs.predictions_path(resumed / "snapshots" / str(k), "val")).ids
    # The snapshot exported before the checkpoint is gone: refused before any training, naming it.
    import shutil

    shutil.rmtree(full / "snapshots" / "0")
    with pytest.raises(ConfigError, match="snapshot 0 was exported to .* but its model is gone"):
        train_run(tmp_path / "again", [*base, f"ckpt_path='{checkpoint}'"])
    assert not (tmp_path / "again" / "snapshots").exists()


def test_snapshot_ensemble_without_the_cyclic_schedule_is_refused(compose_train_cfg, tmp_path, tiny_data):
    from hydra.errors import InstantiationException

    from agnews.pipeline import train

    base = [*TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=1", "callbacks=snapshot_ensemble"]
    cfg = compose_train_cfg(base)
    hint = r"num_cycles must be .*strategy/scheduler=cosine_restarts"
    with pytest.raises(InstantiationException, match=hint) as info:
        train(cfg)
    assert isinstance(info.value.__cause__, ConfigError)
    # Cycles given but the default linear schedule kept: the learning rate never restarts.
    cfg = compose_train_cfg([*base, "callbacks.snapshot_ensemble.num_cycles=2"])
    with pytest.raises(ConfigError, match="does not restart after steps"):
        train(cfg)


def _logged_lr(run: Path) -> dict[int, float]:
    """The learning rate LearningRateMonitor logged per optimizer step (the lr used by the step after that count)."""
    import csv

    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = next(name for name in rows[0] if name.startswith("lr-"))
    return {int(row["step"]): float(row[column]) for row in rows if row.get(column)}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_cycles": 1}, "num_cycles must be an integer >= 2"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\)"),
        ({"splits": ["test"]}, "splits must include val"),
    ],
)
def test_bad_snapshot_settings_are_config_errors(options, message):
    from agnews.callbacks.snapshot_ensemble import SnapshotEnsemble

    with pytest.raises(ConfigError, match=message):
        SnapshotEnsemble(**{"num_cycles": 3, "max_length": 32, **options})


class GroupLearningRates(Callback):
    """Writes every parameter group's learning rate at each epoch's first batch (after SWALR has set them)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            rates = [group["lr"] for group in trainer.optimizers[0].param_groups]
            with self.path.open("a") as handle:
                handle.write(json.dumps({"epoch": trainer.current_epoch, "lrs": rates}) + "\n")


def test_swa_keeps_the_layer_wise_decay_of_the_learning_rates(tmp_path, tiny_data):
    # One swa_lrs for every group would flatten strategy.llrd: the averaging phase keeps each depth's ratio.
    log = tmp_path / "lrs.jsonl"
    train_run(
        tmp_path / "run",
        [
            *TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=3", "strategy.llrd=0.5",
            "callbacks=swa", "callbacks.swa.swa_lrs=0.01", "callbacks.swa.swa_epoch_start=2",
            f"+callbacks.rates._target_={__name__}.GroupLearningRates", f"+callbacks.rates.path={log}",
        ],
    )
    epochs = [json.loads(line) for line in log.read_text().splitlines()]
    swa_rates = epochs[-1]["lrs"]  # epoch 3: annealing done, constant swa_lrs
    assert max(swa_rates) == pytest.approx(0.01)
    # The tiny model has 2 blocks: depths 0..3, two groups (decay / no decay) per depth, the head at the full rate.
    distinct = sorted(set(round(rate, 12) for rate in swa_rates))
    assert distinct == pytest.approx([0.01 * 0.5**k for k in (3, 2, 1, 0)])


def test_swa_refuses_a_run_that_would_average_no_epoch(tmp_path, tiny_data):
    # Lightning would copy its untouched average (the pretrained weights) back into the model: refused up front.
    with pytest.raises(ConfigError, match="no epoch would be averaged"):
        train_run(tmp_path / "run", [*TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=1", "callbacks=swa",
                                     "callbacks.swa.swa_epoch_start=2"])


def test_swa_resumed_mid_epoch_ends_with_the_uninterrupted_average(tmp_path, tiny_data):
    # A mid-epoch resume skips on_train_epoch_start, where SWALR and the average are set up.
    mid = tmp_path / "mid"
    base = [*TINY, *small_data_overrides(tiny_data), "trainer.max_epochs=4", "strategy.optimizer.lr=2e-2",
            "callbacks=swa", "callbacks.swa.swa_lrs=0.01", "callbacks.swa.swa_epoch_start=2"]
    full = train_run(tmp_path / "full", [
        *base, "+callbacks.mid._target_=lightning.pytorch.callbacks.ModelCheckpoint", f"+callbacks.mid.dirpath={mid}",
        "+callbacks.mid.every_n_train_steps=12", "+callbacks.mid.save_top_k=-1", "+callbacks.mid.filename='step{step}'",
    ])
    [checkpoint] = mid.glob("*step=12*.ckpt")  # 5 steps an epoch: step 12 is inside epoch 3, after averaging began
    resumed = train_run(tmp_path / "resumed", [*base, f"ckpt_path='{checkpoint}'"])
    expected = load_file(full / runs.MODEL_DIR / "model.safetensors")
    got = load_file(resumed / runs.MODEL_DIR / "model.safetensors")
    assert _max_difference(expected, got) < 1e-6
