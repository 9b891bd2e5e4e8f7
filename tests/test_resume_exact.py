"""Exact resume from any step: a run killed with SIGKILL mid-epoch and resumed from last.ckpt ends like an uninterrupted
run (same global step, metrics and test probabilities); the batch sampler's saved position; atomic checkpoint writes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from agnews.data.batching import LengthGroupedBatchSampler
from agnews.errors import ConfigError
from tests.conftest import LABELS, REPO_ROOT, TINY, small_data_overrides

LENGTHS = np.random.default_rng(0).integers(4, 128, size=203)


class SlowTrainingSteps(L.Callback):
    """Only changes timing: gives the test time to kill the run between two step checkpoints."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


# ---- the batch sampler's position ---------------------------------------------------------------------------------
@pytest.mark.parametrize("group_by_length", [True, False])
def test_sampler_resumed_at_batch_k_yields_the_rest_of_that_epoch_then_the_next_epoch_unchanged(group_by_length):
    def sampler():
        return LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5, group_by_length=group_by_length)

    reference = sampler()
    reference.set_epoch(1)
    epoch1 = list(reference)
    reference.set_epoch(2)
    epoch2 = list(reference)
    assert len(epoch1) == 13 and epoch1 != epoch2

    running = sampler()
    running.set_epoch(1)
    iterator = iter(running)
    used = [next(iterator) for _ in range(5)]
    state = running.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 5 and state["num_batches"] == 13

    resumed = sampler()  # a fresh process: epoch 0, no position
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert used + rest == epoch1  # exactly the remaining batches, in order
    assert resumed.state_dict()["batches_done"] == 13
    resumed.set_epoch(2)
    assert list(resumed) == epoch2  # the skip applied once; the next epoch starts from its first batch
    resumed.set_epoch(1)
    assert list(resumed) == epoch1


def test_a_position_handed_in_by_the_training_loop_overrides_what_the_sampler_prefetched():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5)
    iterator = iter(sampler)
    for _ in range(4):  # the loader fetched 4 batches ahead, the loop trained on 2
        next(iterator)
    state = sampler.state_dict(batches_done=2)
    resumed = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5)
    resumed.load_state_dict(state)
    assert list(resumed) == list(LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5))[2:]


def test_a_finished_epoch_resumes_into_the_next_one():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5)
    sampler.set_epoch(3)
    state = sampler.state_dict(batches_done=len(sampler))
    resumed = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5)
    resumed.load_state_dict(state)
    # workers draw batches before Lightning calls set_epoch: the sampler must already be at the next epoch
    reference = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5)
    reference.set_epoch(4)
    assert resumed.epoch == 4 and list(resumed) == list(reference)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lengths=LENGTHS[:150]), "dataset_size: checkpoint 203, now 150"),
        (dict(batch_size=8), "batch_size: checkpoint 16, now 8"),
        (dict(seed=6), "seed: checkpoint 5, now 6"),
    ],
)
def test_a_position_saved_for_other_data_or_batching_is_refused(change, message):
    state = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5).state_dict(batches_done=3)
    other = LengthGroupedBatchSampler(**{"lengths": LENGTHS, "batch_size": 16, "seed": 5, **change})
    with pytest.raises(ValueError, match="cannot resume the training data position") as error:
        other.load_state_dict(state)
    assert message in str(error.value)


def test_a_malformed_position_is_refused():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=5)
    state = sampler.state_dict(batches_done=3)
    with pytest.raises(ValueError, match="14 batches of epoch 0 were used, but an epoch has 13"):
        sampler.load_state_dict({**state, "batches_done": 14})
    with pytest.raises(ValueError, match="lacks"):
        sampler.load_state_dict({"epoch": 0})


def test_the_data_module_applies_a_restored_position_to_its_next_train_loader(tmp_path, make_ag_news_dir):
    """Lightning restores the data module before it builds the train loader: the loader starts at the position."""
    from agnews.data.datamodule import AGNewsDataModule
    from agnews.models.factory import offline_tokenizer

    folder = make_ag_news_dir(train_per_class=20, test_per_class=2)

    def datamodule(batch_size=8):
        dm = AGNewsDataModule(
            offline_tokenizer("right"), source="csv", data_dir=str(folder), label_names=LABELS, val_size=8,
            max_length=32, batch_size=batch_size, cache_dir=str(tmp_path / "cache"), seed=3,
        )
        dm.setup("fit")
        return dm

    reference = datamodule().train_dataloader().batch_sampler
    reference.set_epoch(2)
    epoch2 = list(reference)
    assert len(epoch2) == 9  # 72 train rows
    position = reference.state_dict(batches_done=4)

    resumed = datamodule()
    resumed.load_state_dict({"train_batch_sampler": position})
    loader = resumed.train_dataloader()
    assert [batch["index"].tolist() for batch in loader] == epoch2[4:]

    other = datamodule(batch_size=16)
    other.load_state_dict({"train_batch_sampler": position})
    with pytest.raises(ConfigError, match="batch_size: checkpoint 8, now 16"):
        other.train_dataloader()
    with pytest.raises(ConfigError, match="no training data position"):
        datamodule().load_state_dict({"something_else": 1})


# ---- checkpoint writes -------------------------------------------------------------------------------------------
def test_last_every_n_train_steps_is_validated():
    from agnews.callbacks.checkpoint import RunCheckpoint

    with pytest.raises(ConfigError, match="integer >= 1"):
        RunCheckpoint(last_every_n_train_steps=0, save_last=True)
    with pytest.raises(ConfigError, match="needs save_last"):
        RunCheckpoint(last_every_n_train_steps=5, save_last=False)


def test_a_checkpoint_taken_before_any_best_resumes_into_a_new_run_directory(tmp_path):
    """A step checkpoint written before the first validation has no best yet: the new run starts tracking afresh."""
    from agnews.callbacks.checkpoint import RunCheckpoint

    old = RunCheckpoint(dirpath=str(tmp_path / "old"), monitor="val/loss", mode="min", save_last=True)
    state = old.state_dict()
    assert state["best_model_path"] == "" and state["best_model_score"] is None
    new = RunCheckpoint(dirpath=str(tmp_path / "new"), monitor="val/loss", mode="min", save_last=True)
    new.load_state_dict(state)
    assert new.best_model_path == "" and new.best_model_score is None and new.best_k_models == {}
    assert new.kth_value == float("inf") and new.dirpath == str(tmp_path / "new")


# A fit that rewrites a fat last.ckpt at every step, with the temp folder on another file system than the checkpoint
# (Lightning then copies into place, which is not atomic by itself): the copy takes long enough to be killed during it.
_SAVE_FOREVER = """
import sys, torch, lightning as L
from torch.utils.data import DataLoader
from agnews.callbacks.checkpoint import RunCheckpoint

class Fat(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("ballast", torch.randn(24 * 1024 * 1024))  # ~100 MB per checkpoint

    def training_step(self, batch, batch_idx):
        return (self.weight * batch).sum() ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

checkpoint = RunCheckpoint(dirpath=sys.argv[1], save_last=True, save_top_k=0, last_every_n_train_steps=1)
trainer = L.Trainer(max_steps=400, accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[checkpoint], limit_val_batches=0)
trainer.fit(Fat(), DataLoader(torch.ones(4000, 1), batch_size=1))
"""


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second file system (/dev/shm) for the temp folder")
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_intact(tmp_path):
    folder = tmp_path / "checkpoints"
    last, partial = folder / "last.ckpt", folder / "last.ckpt.partial"
    env = {**os.environ, "TMPDIR": "/dev/shm"}
    process = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(folder)], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        caught = False
        while time.monotonic() < deadline and process.poll() is None:
            # a complete last.ckpt exists and the next one is being copied into place right now
            if last.is_file() and partial.is_file() and partial.stat().st_size > 0:
                process.send_signal(signal.SIGKILL)
                caught = True
                break
            time.sleep(0.002)
        process.wait(timeout=30)
        assert caught, f"never saw a save in progress: {process.stderr.read()[-2000:]}"
    finally:
        if process.poll() is None:
            process.kill()
    restored = torch.load(last, map_location="cpu", weights_only=False)
    assert restored["global_step"] >= 1 and restored["state_dict"]["ballast"].numel() == 24 * 1024 * 1024


# ---- the real CLI, killed mid-epoch ------------------------------------------------------------------------------
def _ckpt_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _loader_position(checkpoint: dict) -> dict:
    position = checkpoint["AGNewsDataModule"]["train_batch_sampler"]
    # Lightning keeps the train loader's copy with the fit loop: the same position
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"train_batch_sampler": position}]
    return position


def _checkpoint_callback_state(checkpoint: dict) -> dict:
    (state,) = [value for key, value in checkpoint["callbacks"].items() if key.startswith("RunCheckpoint")]
    return state


def _numbers(tree, prefix=""):
    """Every number in metrics.json by its path (paths to checkpoint files differ between run directories)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{prefix}/{key}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _numbers(value, f"{prefix}[{index}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


def _probabilities(run_dir: Path) -> list[tuple[str, list[float]]]:
    with (run_dir / "predictions" / "test.csv").open(newline="") as handle:
        return [(row["id"], [float(row[f"prob_{name}"]) for name in LABELS]) for row in csv.DictReader(handle)]


def _command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "agnews.train", *overrides, f"hydra.run.dir={run_dir}"]


def _kill_resume_compare(tmp_path: Path, common: list[str], steps_per_epoch: int, epochs: int, kill_after_step: int,
                         slow_seconds: float = 0.2) -> Path:
    """Run ``common`` uninterrupted and, in parallel, slowed down and SIGKILLed once last.ckpt holds step
    ``kill_after_step`` or later; resume that from its last.ckpt; assert both end alike. Returns the last.ckpt used."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}

    def start(name, extra=()):
        return subprocess.Popen(
            _command(tmp_path / name, [*common, *extra]), cwd=REPO_ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    full = start("full")
    killed = start("killed", [
        "+callbacks.slow._target_=tests.test_resume_exact.SlowTrainingSteps", f"+callbacks.slow.seconds={slow_seconds}",
    ])
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and killed.poll() is None:
            if last.is_file() and _ckpt_state(last)["global_step"] >= kill_after_step:
                break
            time.sleep(0.05)
        assert killed.poll() is None, f"the run ended before it could be killed: {killed.stderr.read()[-3000:]}"
        time.sleep(slow_seconds * 1.5)  # a step or two past the checkpoint: work the resumed run has to redo
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists()

    checkpoint = _ckpt_state(last)  # a SIGKILL never leaves a half-written last.ckpt (the write is a rename)
    position = _loader_position(checkpoint)
    assert 0 < position["batches_done"] < steps_per_epoch, position  # really mid-epoch
    assert checkpoint["global_step"] == position["epoch"] * steps_per_epoch + position["batches_done"]

    resumed = subprocess.run(
        _command(tmp_path / "resumed", [*common, f"ckpt_path={last}"]), cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert full.wait(timeout=600) == 0, full.stderr.read()[-3000:]

    manifests = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in ("full", "resumed")}
    assert manifests["resumed"]["global_step"] == manifests["full"]["global_step"] == epochs * steps_per_epoch
    metrics = {name: dict(_numbers(json.loads((tmp_path / name / "metrics.json").read_text()))) for name in manifests}
    assert metrics["full"].keys() == metrics["resumed"].keys()
    for key, value in metrics["full"].items():
        assert metrics["resumed"][key] == pytest.approx(value, abs=1e-6), key
    # the same checkpoint was chosen as best, with the same score
    best = {name: _ckpt_state(tmp_path / name / "checkpoints" / "best.ckpt") for name in manifests}
    assert best["resumed"]["global_step"] == best["full"]["global_step"]
    scores = {name: _checkpoint_callback_state(_ckpt_state(tmp_path / name / "checkpoints" / "last.ckpt"))
              for name in manifests}
    assert float(scores["resumed"]["best_model_score"]) == pytest.approx(float(scores["full"]["best_model_score"]))
    full_rows, resumed_rows = _probabilities(tmp_path / "full"), _probabilities(tmp_path / "resumed")
    assert [i for i, _ in full_rows] == [i for i, _ in resumed_rows]
    for (_, a), (_, b) in zip(full_rows, resumed_rows, strict=True):
        assert b == pytest.approx(a, abs=1e-5)
    return last


def test_a_run_killed_mid_epoch_resumes_exactly(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=60, test_per_class=8)  # 200 train rows: 13 batches of 16 per epoch
    common = [
        *TINY, *small_data_overrides(data), "trainer.max_epochs=2", "trainer.deterministic=true", "torch_threads=1",
        "seed=7", "strategy.optimizer.lr=5e-3", "callbacks.progress_log=null",
        # early stopping stays on (its patience counter is part of the state to restore) but never fires here
        "callbacks.early_stopping.monitor=val/loss", "callbacks.early_stopping.mode=min",
        # validation twice an epoch (after batches 6 and 12) and at the epoch end; val/loss improves nearly every time,
        # so "best" moves during the run and the resumed run must track it like the uninterrupted one
        "trainer.val_check_interval=0.5", "callbacks.model_checkpoint.monitor=val/loss",
        "callbacks.model_checkpoint.mode=min", "callbacks.model_checkpoint.last_every_n_train_steps=4",
    ]
    # step checkpoints at steps 4 and 8 of epoch 0 (12 is followed by a validation): killed after step 8, the resumed
    # run redoes part of epoch 0, a mid-epoch validation, the epoch end and all of epoch 1
    # (0.5 s per step in the killed run: the next save, at step 12, is 2 s away even on a loaded machine)
    last = _kill_resume_compare(tmp_path, common, steps_per_epoch=13, epochs=2, kill_after_step=8, slow_seconds=0.5)

    # Resuming that checkpoint with another batch size is refused, naming the difference (in-process: the error type)
    from tests.conftest import train_run

    with pytest.raises(ConfigError, match=r"batch_size: checkpoint 16, now 8"):
        train_run(tmp_path / "wrong", [c for c in common if c != "torch_threads=1"] + ["data.batch_size=8",
                                                                                       f"ckpt_path={last}"])


@pytest.mark.slow
def test_the_real_minilm_killed_mid_epoch_resumes_exactly(tmp_path, shared_data_dir):
    """The shipped pretrained MiniLM on real rows, bf16 autocast on CPU as the quickstart trains (about 2 minutes)."""
    from tests.conftest import real_rows_dir

    data = real_rows_dir(tmp_path / "data", shared_data_dir, train_rows=420, test_rows=200)
    common = [
        "experiment=quickstart", f"data.data_dir={data}", "data.train_size=null", "data.val_size=100",
        "data.batch_size=16", "strategy.optimizer.lr=2e-4", "callbacks.progress_bar=null",
        "callbacks.progress_log=null", "trainer.deterministic=true", "torch_threads=1", "scoring.export_model=false",
        "trainer.val_check_interval=0.5", "callbacks.model_checkpoint.last_every_n_train_steps=5",
    ]
    # 320 train rows: 20 steps, validations after steps 10 and 20, step checkpoints at 5 and 15
    _kill_resume_compare(tmp_path, common, steps_per_epoch=20, epochs=1, kill_after_step=5, slow_seconds=0.5)
