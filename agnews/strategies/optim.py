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
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR over ``warmup_steps`` (default ``round(warmup_ratio * total_steps)``), then linear
    decay to 0 at ``total_steps``: transformers' own schedule, so runs compare step for step with the HF Trainer."""
    from transformers import get_linear_schedule_with_warmup

    warmup = warmup_steps if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    return get_linear_schedule_with_warmup(optimizer, max(0, min(warmup, total_steps)), total_steps)


def constant_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    from transformers import get_constant_schedule

    return get_constant_schedule(optimizer)


def cosine_with_restarts(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    num_cycles: int = 3,
    warmup_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay restarted ``num_cycles`` times (transformers' hard-restarts schedule): the cyclic schedule whose
    cycle ends are the snapshots of a snapshot ensemble (Huang et al., 2017)."""
    from transformers import get_cosine_with_hard_restarts_schedule_with_warmup

    if num_cycles < 1:
        raise ValueError(f"num_cycles must be >= 1, got {num_cycles}")
    warmup = int(round(warmup_ratio * total_steps))
    return get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, warmup, total_steps, num_cycles=num_cycles)
