"""The masked-LM LightningModule: the model's own MLM loss, logged as ``train/mlm_loss`` and ``val/mlm_loss``."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F

from agnews.strategies.optim import DEFAULT_NO_DECAY, clip_unscaled_gradients, parameter_groups

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")
IGNORE_INDEX = -100  # DataCollatorForLanguageModeling's label for tokens that are not predicted


def masked_lm_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module mapping hidden states to vocabulary logits, when the model is ``base model + one head`` (BERT's
    ``cls``, RoBERTa's and Longformer's ``lm_head``, DeBERTa's ``cls``); None otherwise (the model's own forward)."""
    heads = [module for name, module in model.named_children() if name != model.base_model_prefix]
    return heads[0] if len(heads) == 1 else None


class MaskedLanguageModeling(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        weight_decay: float = 0.01,
        no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    ):
        super().__init__()
        self.model = model.train()  # from_pretrained hands back eval mode: dropout would stay off
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        self.no_decay = tuple(no_decay)
        # Summed over masked tokens: the loss over all held-out masked tokens, whatever the batch boundaries. Plain
        # floats: validation runs before, inside and after fit, under inference mode (metric states would clash).
        self._val_sum, self._val_count = 0.0, 0

    def loss(self, batch: dict) -> tuple[torch.Tensor, int]:
        labels = batch["labels"]
        masked = labels != IGNORE_INDEX
        head = masked_lm_head(self.model)
        if head is None:
            return self.model(**{key: batch[key] for key in INPUT_KEYS if key in batch}).loss, int(masked.sum())
        # The vocabulary projection costs as much as the whole encoder (MiniLM: 384 x 30,522 per token): apply the
        # head to the ~15 % masked positions only. Same loss as the model's own (mean cross-entropy over them).
        hidden = self.model.base_model(**{key: batch[key] for key in INPUT_KEYS[:-1] if key in batch})[0]
        logits = head(hidden[masked])
        return F.cross_entropy(logits.float(), labels[masked]), int(masked.sum())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, masked = self.loss(batch)
        self.log("train/mlm_loss", loss, prog_bar=True, batch_size=max(masked, 1))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, masked = self.loss(batch)
        self._val_sum += float(loss) * masked
        self._val_count += masked

    def on_validation_epoch_end(self) -> None:
        loss = self._val_sum / self._val_count if self._val_count else float("nan")
        self.log("val/mlm_loss", loss, prog_bar=True, sync_dist=True)
        self._val_sum, self._val_count = 0.0, 0

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_unscaled_gradients(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(parameter_groups(self, self.weight_decay, self.no_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
