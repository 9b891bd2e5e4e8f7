"""Stochastic Weight Averaging that averages the weights each epoch ENDS with (Izmailov et al., 2018).

Lightning's ``StochasticWeightAveraging`` updates its average at the START of every epoch from ``swa_epoch_start`` on,
so it averages the weights after epochs ``swa_epoch_start - 1 .. max_epochs - 1`` (1-based): the last epoch's
training never enters the average and, with ``swa_epoch_start=1``, the untrained pretrained weights do. This subclass
keeps Lightning's machinery (SWALR, the average model, weight transfer, checkpoint state) and moves the update to the
last training batch of each epoch ``swa_epoch_start .. max_epochs``: before that epoch's validation and checkpoint, so
a run resumed from an epoch-end checkpoint has the same average as the uninterrupted one.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import StochasticWeightAveraging

from agnews.errors import ConfigError

log = logging.getLogger(__name__)


class EpochEndSWA(StochasticWeightAveraging):
    _skip_update = False

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        # Lightning's average starts as a copy of the untrained model and is copied back at the end of fit even when no
        # epoch was averaged: a run shorter than swa_epoch_start would score and export the pretrained weights.
        if self._max_epochs != -1 and self.swa_start > self.swa_end:
            raise ConfigError(
                f"callbacks.swa.swa_epoch_start={self._swa_epoch_start} is after the last epoch "
                f"(trainer.max_epochs={self._max_epochs}): no epoch would be averaged. Train for more epochs or start "
                "averaging earlier"
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # A run resumed mid-epoch skips on_train_epoch_start, where SWALR and the running average are set up.
        if not self._initialized and self.swa_start <= trainer.current_epoch <= self.swa_end:
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._initialized and isinstance(self._swa_lrs, float) and trainer.optimizers:
            # One swa_lrs for every group would flatten layer-wise LR decay (strategy.llrd): keep each group's ratio
            # to the largest base learning rate (equal base rates give Lightning's own single value).
            groups = trainer.optimizers[0].param_groups
            base = [group.get("initial_lr", group["lr"]) for group in groups]
            top = max(base)
            if top > 0:
                self._swa_lrs = [self._swa_lrs * rate / top for rate in base]
        # Lightning's hook sets up SWALR and the average model, then updates the average with the weights the epoch
        # starts from: keep the set-up, skip that update.
        self._skip_update = True
        try:
            super().on_train_epoch_start(trainer, pl_module)
        finally:
            self._skip_update = False

    def update_parameters(self, average_model, model, n_averaged, avg_fn) -> None:  # type: ignore[override]
        if not self._skip_update:
            StochasticWeightAveraging.update_parameters(average_model, model, n_averaged, avg_fn)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        epoch = trainer.current_epoch
        if last_batch and self._average_model is not None and self.swa_start <= epoch <= self.swa_end:
            self.update_parameters(self._average_model, pl_module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer, pl_module) -> None:
        averaged = 0 if self.n_averaged is None else int(self.n_averaged)
        if averaged == 0:
            # Stopped (max_steps, max_time) before the first averaged epoch ended: keep the trained weights, not the
            # untrained copy Lightning would transfer.
            log.warning("SWA: no epoch was averaged before training stopped; the run keeps its last weights")
            return
        if trainer.current_epoch - 1 != self.swa_end and self._max_epochs != -1:
            log.warning("SWA: training stopped before epoch %d; the run keeps the average of %d epoch(s)",
                        self.swa_end + 1, averaged)
            self.transfer_weights(self._average_model, pl_module)
            return
        super().on_train_end(trainer, pl_module)
