"""R-Drop (Liang et al., 2021): each training batch goes through the model twice with different dropout masks.

loss = ½·(CE(z₁, y) + CE(z₂, y)) + α·½·(KL(p₁‖p₂) + KL(p₂‖p₁)),   p_i = softmax(z_i), KL averaged over examples.

This is the form of the authors' reference snippet (mean of the two cross-entropies plus α times the mean of the two KL
directions), except that the KL is a per-example mean where the snippet sums it over the batch, so α does not change
meaning with the batch size. Both gradients flow through both passes (no stop-gradient), as in the paper.

The two passes are one forward of the batch stacked on itself ([x; x], 2B rows): one dropout call over 2B rows draws
independent masks for the two copies, whatever seed ``on_train_batch_start`` set, and it is one (larger) forward
instead of two. Evaluation and prediction are the base module's single pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from agnews.errors import ConfigError
from agnews.strategies.base import ClassificationModule


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """½·(KL(p_a‖p_b) + KL(p_b‖p_a)), averaged over examples, in float32."""
    log_a = F.log_softmax(logits_a.float(), dim=-1)
    log_b = F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")  # KL(p_a ‖ p_b)
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")  # KL(p_b ‖ p_a)
    return 0.5 * (kl_ab + kl_ba)


class RDrop(ClassificationModule):
    """Two dropout passes per batch; cross-entropy on both plus ``alpha`` × their symmetric KL."""

    def __init__(self, *args, alpha: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)  # model, label_names, optimizer, ...: ClassificationModule's arguments
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ConfigError(f"strategy=rdrop: strategy.alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = float(alpha)

    def two_pass_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the two dropout passes, from one forward of the batch stacked on itself."""
        inputs = self.model_inputs(batch)
        doubled = {key: torch.cat([value, value], dim=0) for key, value in inputs.items()}
        logits = self.model(**doubled).logits
        size = batch["labels"].shape[0]
        return logits[:size], logits[size:]

    def training_loss(self, batch: dict) -> torch.Tensor:
        first, second = self.two_pass_logits(batch)
        labels = batch["labels"]
        ce = 0.5 * (self.classification_loss(first, labels) + self.classification_loss(second, labels))
        kl = symmetric_kl(first, second)
        size = labels.numel()
        self.log("train/loss_ce", ce.detach(), batch_size=size)
        self.log("train/kl", kl.detach(), batch_size=size)
        return ce + self.alpha * kl
