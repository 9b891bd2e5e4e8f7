"""Lightning callback that reports the validation metric to an Optuna trial and stops the run when it is pruned.

The Optuna sweeper adds it to every trial's job by override (``+callbacks.optuna_pruning._target_=...``); the
pipeline instantiates every entry of ``cfg.callbacks``. The job may run in another process or on another machine:
it reaches its trial through the study's storage, name and trial number.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

PRUNED_ATTR = "agnews_pruned_at_step"


class OptunaPruningCallback(L.Callback):
    def __init__(self, storage: str, study_name: str, trial_number: int, monitor: str = "val/accuracy",
                 pruner: Any = None) -> None:
        import optuna

        from agnews.sweeps.storage import make_storage

        self.monitor = monitor
        self.trial_number = int(trial_number)
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage),
                                  pruner=pruner if pruner is not None else optuna.pruners.NopPruner())
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.trial_number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.step = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            log.warning("Pruning: metric %r was not logged; nothing reported to trial %d", self.monitor, self.trial_number)
            return
        value = float(value)
        step = self.step
        self.step += 1
        self.trial.report(value, step)
        if self.trial.should_prune():
            import optuna

            self.trial.set_user_attr(PRUNED_ATTR, step)
            message = f"Trial {self.trial_number} pruned at validation {step} ({self.monitor}={value:.4f})"
            log.info(message)
            raise optuna.TrialPruned(message)
