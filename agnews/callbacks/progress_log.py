"""Progress as plain log lines when stdout is not a terminal (a log file, SLURM, CI).

The rich progress bar draws nothing there, so a long run would show nothing until it ends. :class:`ProgressLog`
(``callbacks.progress_log`` in conf/callbacks/progress_log.yaml) logs one line every ``every_n_seconds`` and/or every
``every_n_steps`` optimizer steps, and at the end of each training epoch::

    progress: epoch 1/3 step 120/900 (13%) loss 0.4321 samples/s 85.2 elapsed 0:01:10 ETA 0:07:35

On a terminal it stays quiet (the bar shows the same), unless ``enabled=true``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)

ENABLED_CHOICES = ("auto", True, False)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for key in ("labels", "input_ids"):
            if key in batch and hasattr(batch[key], "shape"):
                return int(batch[key].shape[0])
    if isinstance(batch, (list, tuple)) and batch and hasattr(batch[0], "shape"):
        return int(batch[0].shape[0])
    return 0


class ProgressLog(L.Callback):
    def __init__(self, every_n_seconds: float | None = 30.0, every_n_steps: int | None = None,
                 at_epoch_end: bool = True, enabled: str | bool = "auto"):
        if every_n_seconds is not None and not (isinstance(every_n_seconds, (int, float)) and every_n_seconds > 0):
            raise ValueError(f"callbacks.progress_log.every_n_seconds must be a positive number or null, got {every_n_seconds!r}")
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps > 0):
            raise ValueError(f"callbacks.progress_log.every_n_steps must be a positive integer or null, got {every_n_steps!r}")
        if enabled not in ENABLED_CHOICES or isinstance(enabled, int) and not isinstance(enabled, bool):
            raise ValueError(f"callbacks.progress_log.enabled must be auto (only when stdout is not a terminal), "
                             f"true or false, got {enabled!r}")
        self.every_n_seconds = every_n_seconds
        self.every_n_steps = every_n_steps
        self.at_epoch_end = at_epoch_end
        self.enabled = enabled
        self._active = False

    def _stdout_is_terminal(self) -> bool:
        try:
            return sys.stdout.isatty()
        except (AttributeError, ValueError):  # a closed or exotic stream is not a terminal
            return False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wanted = not self._stdout_is_terminal() if self.enabled == "auto" else bool(self.enabled)
        self._active = wanted and trainer.is_global_zero  # one line per run, not one per rank
        now = time.monotonic()
        self._start = self._last_time = now
        self._start_step = self._last_step = trainer.global_step
        self._samples = self._last_samples = 0
        self._loss: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._active:
            return
        # Every rank trains on its own batches: the run's throughput is world_size times this rank's.
        self._samples += _batch_size(batch) * trainer.world_size
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:  # manual optimisation returns nothing: use what the module logged
            loss = trainer.callback_metrics.get("train/loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._loss = float(loss.detach())
        now, step = time.monotonic(), trainer.global_step
        due = (self.every_n_seconds is not None and now - self._last_time >= self.every_n_seconds) or (
            self.every_n_steps is not None and step > self._last_step and step % self.every_n_steps == 0)
        if due:
            self._report(trainer, now)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active and self.at_epoch_end:
            self._report(trainer, time.monotonic(), prefix=f"epoch {trainer.current_epoch + 1} done: ")

    def _report(self, trainer: L.Trainer, now: float, prefix: str = "") -> None:
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        total_known = isinstance(total, (int, float)) and math.isfinite(total) and total > 0
        elapsed = now - self._start
        # Rate since the previous line (what the run does now); ETA from the average step time so far.
        window = now - self._last_time
        rate = (self._samples - self._last_samples) / window if window > 0 else float("nan")
        done = step - self._start_step
        eta = (total - step) * elapsed / done if total_known and done > 0 else float("inf")
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = [
            f"epoch {trainer.current_epoch + 1}/{max_epochs}",
            f"step {step}/{int(total) if total_known else '?'}" + (f" ({100 * step / total:.0f}%)" if total_known else ""),
            f"loss {self._loss:.4f}" if self._loss is not None else "loss ?",
            f"samples/s {rate:.1f}" if math.isfinite(rate) else "samples/s ?",
            f"elapsed {_duration(elapsed)}",
            f"ETA {_duration(eta)}",
        ]
        log.info("progress: %s%s", prefix, " ".join(parts))
        self._last_time, self._last_step, self._last_samples = now, step, self._samples
