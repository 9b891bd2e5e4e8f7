"""Plain progress lines when stdout is not a terminal (agnews.callbacks.progress_log), quiet on a terminal."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import lightning as L
import pytest
import torch

from agnews.callbacks.progress_log import ProgressLog
from tests.conftest import REPO_ROOT, TINY, small_data_overrides

LINE = re.compile(r"progress: (epoch \d+ done: )?epoch (\d+)/(\d+) step (\d+)/(\d+) \(\d+%\) loss (\d+\.\d+) "
                  r"samples/s (\d+\.\d) elapsed \d+:\d\d:\d\d ETA \d+:\d\d:\d\d")


def test_train_cli_with_piped_stdout_prints_progress_lines(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=12, test_per_class=2)  # 48 rows - 12 val = 36 train: 3 steps of 16
    command = [sys.executable, "-m", "agnews.train", *TINY, *small_data_overrides(data), "data.val_size=12",
               "trainer.max_epochs=2", "scoring.export_model=false", "callbacks.progress_log.every_n_steps=1",
               f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [m for m in map(LINE.search, result.stdout.splitlines()) if m]
    step_lines = [m for m in lines if not m.group(1)]
    epoch_lines = [m for m in lines if m.group(1)]
    # every optimizer step of 2 epochs x 3 steps, each against the run's 6 steps, plus one line per epoch end
    assert [int(m.group(4)) for m in step_lines] == [1, 2, 3, 4, 5, 6], result.stdout[-3000:]
    assert {int(m.group(5)) for m in lines} == {6} and {m.group(3) for m in lines} == {"2"}
    assert [(m.group(1), int(m.group(4))) for m in epoch_lines] == [("epoch 1 done: ", 3), ("epoch 2 done: ", 6)]
    assert all(float(m.group(7)) > 0 and float(m.group(6)) > 0 for m in step_lines[1:])


class _Toy(L.LightningModule):
    """A linear classifier on random features: a real Lightning loop, seconds to run."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callback: ProgressLog) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(_Toy(), torch.utils.data.DataLoader(data, batch_size=8))


def _progress(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agnews.callbacks.progress_log"]


def test_quiet_on_a_terminal_unless_forced(caplog, monkeypatch):
    primary, secondary = os.openpty()  # a real terminal as stdout, as in an interactive shell
    terminal = os.fdopen(secondary, "w")
    try:
        monkeypatch.setattr(sys, "stdout", terminal)
        with caplog.at_level(logging.INFO, logger="agnews.callbacks.progress_log"):
            _fit(ProgressLog(every_n_seconds=None, every_n_steps=1))
            assert _progress(caplog) == []
            _fit(ProgressLog(every_n_seconds=None, every_n_steps=1, enabled=True))
            assert len(_progress(caplog)) == 4 + 1  # 4 steps + the epoch end
    finally:
        monkeypatch.undo()
        terminal.close()
        os.close(primary)


def test_time_interval_and_samples_per_second(caplog, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # not a terminal
    with caplog.at_level(logging.INFO, logger="agnews.callbacks.progress_log"):
        _fit(ProgressLog(every_n_seconds=1e-9, at_epoch_end=False))  # every batch is past the interval
    lines = _progress(caplog)
    assert len(lines) == 4 and all("samples/s" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("progress: epoch 1/1 step 4/4 (100%)") and "ETA 0:00:00" in lines[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"every_n_seconds": 0}, "every_n_seconds must be a positive number"),
     ({"every_n_steps": 0}, "every_n_steps must be a positive integer"),
     ({"every_n_steps": 2.5}, "every_n_steps must be a positive integer"),
     ({"enabled": "sometimes"}, "enabled must be auto")],
)
def test_bad_settings_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProgressLog(**kwargs)
