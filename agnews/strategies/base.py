"""The base LightningModule every strategy extends: forward, evaluation, prediction and the optimizer recipe.

A strategy changes how a training step turns a batch into a loss (override :meth:`training_loss`, or
:meth:`training_step` for methods that run their own backward passes); everything else is shared.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from agnews.errors import ConfigError
from agnews.models.layers import num_layers

from agnews.strategies.optim import (
    DEFAULT_NO_DECAY,
    apply_layerwise_lr,
    check_llrd,
    clip_unscaled_gradients,
    layerwise_parameter_groups,
    parameter_groups,
)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "global_attention_mask")


class ClassificationModule(L.LightningModule):
    def __init__(
        self,
        model: torch.nn.Module,
        label_names: Sequence[str],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        weight_decay: float = 0.01,
        no_decay: Sequence[str] = DEFAULT_NO_DECAY,
        label_smoothing: float = 0.0,
        seed: int = 42,
        llrd: float | None = None,
    ):
        super().__init__()
        # from_pretrained returns a model in eval mode, and Lightning keeps submodule modes as it finds them:
        # without this, dropout would silently stay off during training.
        self.model = model.train()
        self.label_names = list(label_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.weight_decay = weight_decay
        self.no_decay = tuple(no_decay)
        self.label_smoothing = label_smoothing
        self.seed = seed
        # Layer-wise LR decay factor (null: one LR for every parameter); checked here, applied in configure_optimizers.
        self.llrd = check_llrd(llrd)
        num_classes = len(self.label_names)
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=num_classes, average="macro")

    # ---- forward -------------------------------------------------------------------------------------------------
    @staticmethod
    def model_inputs(batch: dict) -> dict:
        return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}

    def forward(self, batch: dict, **kwargs) -> torch.Tensor:
        return self.model(**self.model_inputs(batch), **kwargs).logits

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    # ---- training ------------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> torch.Tensor:
        return self.classification_loss(self(batch), batch["labels"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].numel())
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout draws from the global RNG, which Lightning checkpoints do not store, and loader start-up consumes it
        # in a different order after a resume. Seeding per batch from (seed, epoch, batch) makes a resumed run draw
        # exactly what the uninterrupted run drew.
        torch.manual_seed(hash((self.seed, self.current_epoch, batch_idx)) & 0x7FFF_FFFF_FFFF_FFFF)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not clip_unscaled_gradients(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        labels = batch["labels"]
        loss = self.classification_loss(logits, labels)
        preds = logits.argmax(dim=-1)
        self.val_accuracy(preds, labels)
        self.val_f1(preds, labels)
        size = labels.numel()
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=size)
        self.log("val/f1_macro", self.val_f1, batch_size=size)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        logits = self(batch)
        return {
            "index": batch["index"].cpu(),
            "labels": batch["labels"].cpu(),
            "probs": torch.softmax(logits.float(), dim=-1).cpu(),
        }

    # ---- optimisation --------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        # Weight decay lives on the parameter groups (with exclusions), not on the optimizer's defaults.
        if self.llrd is None:
            optimizer = self.optimizer_factory(parameter_groups(self, self.weight_decay, self.no_decay))
        else:
            # Depths are read now, not in __init__: distillation's student_layers cuts the stack after construction.
            outside = [n for n, p in self.named_parameters() if p.requires_grad and not n.startswith("model.")]
            if outside:  # e.g. a strategy's own trainable module: it has no depth, and must not be dropped silently
                raise ConfigError(f"strategy.llrd: trainable parameters outside the model have no depth: {outside[:3]}")
            optimizer = self.optimizer_factory(layerwise_parameter_groups(self.model, self.weight_decay, self.no_decay))
            apply_layerwise_lr(optimizer, self.llrd, top_depth=num_layers(self.model) + 1)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
