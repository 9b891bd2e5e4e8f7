"""A measurement-only Lightning callback: wall time of every training step and the trainable parameter count.

Added to a run with ``+callbacks.step_timer={_target_:experiments.strategies.step_timer.StepTimer}`` (the repository root
is on ``sys.path`` under ``python -m agnews.train``). Writes ``<run>/step_times.json``. It changes nothing in training.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self.trainable = 0
        self.total = 0
        self._start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        self.total = sum(p.numel() for p in pl_module.parameters())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None:
            self.durations.append(time.perf_counter() - self._start)
            self._start = None

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        steady = self.durations[1:] or self.durations  # the first step pays one-off warm-up costs
        report = {
            "steps": len(self.durations),
            "step_s": [round(d, 4) for d in self.durations],
            "first_step_s": round(self.durations[0], 4) if self.durations else None,
            "median_step_s_excl_first": round(statistics.median(steady), 4) if steady else None,
            "mean_step_s_excl_first": round(statistics.fmean(steady), 4) if steady else None,
            "trainable_parameters": self.trainable,
            "total_parameters": self.total,
        }
        Path(trainer.default_root_dir, "step_times.json").write_text(json.dumps(report, indent=2) + "\n")
