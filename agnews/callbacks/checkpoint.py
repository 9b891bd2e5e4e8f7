"""Checkpointing that survives resuming into a new run directory, a kill at any moment, and a kill mid-epoch."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from weakref import proxy

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint

from agnews.errors import ConfigError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


def _replace_atomically(partial: str, target: str) -> None:
    """Flush ``partial`` to disk and rename it over ``target``: readers see the old file or the new one, never half."""
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    directory = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


class RunCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` that keeps the best-so-far across ``ckpt_path=`` resumes.

    Every Hydra run has its own directory, so a resumed run writes checkpoints somewhere new. Stock Lightning then drops
    the best score it restored ("dirpath has changed"), and the first checkpoint after the resume becomes "best" even
    when it is worse. Here the best checkpoint files are copied into the new directory and the scores kept, so the
    resumed run selects and exports the same model an uninterrupted run would.

    Every checkpoint file is written beside its target as ``<name>.partial`` and renamed over it, so a process killed
    while saving leaves the previous ``last.ckpt``/``best.ckpt`` intact (Lightning's own write is not atomic when the
    temp folder is on another file system: it copies into place).

    ``last_every_n_train_steps=N`` also refreshes ``last.ckpt`` every N optimizer steps, mid-epoch included, so a killed
    run loses at most N steps. Steps that a validation or the epoch end follows are left to the usual save there
    (Lightning resumes a checkpoint taken before a due validation by skipping that validation).
    """

    def __init__(self, *args, last_every_n_train_steps: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if last_every_n_train_steps is not None:
            if isinstance(last_every_n_train_steps, bool) or not isinstance(last_every_n_train_steps, int) or (
                last_every_n_train_steps < 1
            ):
                raise ConfigError(
                    f"last_every_n_train_steps must be null or an integer >= 1, got {last_every_n_train_steps!r}"
                )
            if not self.save_last:
                raise ConfigError("last_every_n_train_steps refreshes last.ckpt: it needs save_last: true")
        self.last_every_n_train_steps = last_every_n_train_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        every = self.last_every_n_train_steps
        if not every or trainer.global_step == 0 or trainer.global_step % every != 0:
            return
        if self._should_skip_saving_checkpoint(trainer):
            return
        epoch_loop = trainer.fit_loop.epoch_loop
        if pl_module.automatic_optimization and epoch_loop._should_accumulate():
            return  # mid-accumulation: the accumulated gradients are not in a checkpoint
        if epoch_loop._num_ready_batches_reached() or epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return  # the epoch end / validation after this batch saves (and must not find this step already saved)
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return
        saved_step = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # This refresh must not count as "this step is saved": a validation at the same step still saves best/last.
        self._last_global_step_saved = saved_step

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not _is_local_file_protocol(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        partial = filepath + PARTIAL_SUFFIX
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero and os.path.isfile(partial):
            _replace_atomically(partial, filepath)
        elif trainer.is_global_zero and os.path.exists(partial):
            # A sharded (FSDP) checkpoint is a folder: swap it in as quickly as a folder allows.
            if os.path.isdir(filepath):
                shutil.rmtree(filepath)
            elif os.path.exists(filepath):
                os.remove(filepath)
            os.replace(partial, filepath)
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def load_state_dict(self, state_dict: dict) -> None:
        old_dir = state_dict.get("dirpath")
        if not old_dir or self.dirpath is None or Path(old_dir).resolve() == Path(self.dirpath).resolve():
            super().load_state_dict(state_dict)
            return
        new_dir = Path(self.dirpath)
        new_dir.mkdir(parents=True, exist_ok=True)
        moved: dict[str, str] = {}
        for old_path in state_dict.get("best_k_models", {}):
            if Path(old_path).is_file():
                target = new_dir / Path(old_path).name
                shutil.copy2(old_path, target)
                moved[old_path] = str(target)
            else:
                log.warning("Best checkpoint %s from the resumed run is gone; its score is dropped", old_path)
        state = dict(state_dict)
        state["dirpath"] = str(new_dir)
        state["best_k_models"] = {moved[p]: score for p, score in state_dict.get("best_k_models", {}).items() if p in moved}
        state["best_model_path"] = moved.get(state_dict.get("best_model_path", ""), "")
        state["kth_best_model_path"] = moved.get(state_dict.get("kth_best_model_path", ""), "")
        state["last_model_path"] = ""
        if not state["best_model_path"]:
            # No best yet (a step checkpoint before the first validation) or its file is gone: start the tracking
            # afresh. Lightning reads best_model_score unconditionally, so it must be present.
            state["best_model_score"] = None
            state["kth_value"] = self.kth_value
        super().load_state_dict(state)
        log.info("Resumed checkpoint tracking: best so far %s", state["best_model_path"] or "(none)")
