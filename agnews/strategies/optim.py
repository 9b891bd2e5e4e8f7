"""Optimizer parameter groups and learning-rate schedules shared by every strategy."""

from __future__ import annotations

from typing import Iterable

import torch

# Norm weights and biases are not decayed (standard BERT/RoBERTa recipe): decaying them hurts and buys nothing.
DEFAULT_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight")


def parameter_groups(model: torch.nn.Module, weight_decay: float, no_decay: Iterable[str] = DEFAULT_NO_DECAY) -> list[dict]:
    no_decay = tuple(no_decay)
    decay, skip = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (skip if name.endswith(no_decay) or param.ndim < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": skip, "weight_decay": 0.0},
    ]


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_ratio: float = 0.06,
    warmup_steps: int | None = None,
    final_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR, then linear decay to ``final_lr_ratio`` × base LR at ``total_steps``."""
    warmup = warmup_steps if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    warmup = max(0, min(warmup, total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        remaining = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / remaining)
        return final_lr_ratio + (1.0 - final_lr_ratio) * (1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def constant_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
