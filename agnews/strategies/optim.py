"""Optimizer parameter groups and learning-rate schedules shared by every strategy."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from agnews.errors import ConfigError

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


def check_llrd(llrd) -> float | None:
    """``strategy.llrd``: null (off) or a decay factor in (0, 1]."""
    if llrd is None:
        return None
    if isinstance(llrd, bool) or not isinstance(llrd, (int, float)) or not math.isfinite(llrd) or not 0 < llrd <= 1:
        raise ConfigError(
            f"strategy.llrd must be null (off) or a layer-wise LR decay factor in (0, 1] (e.g. 0.9), got {llrd!r}"
        )
    return float(llrd)


def layerwise_parameter_groups(
    model: torch.nn.Module, weight_decay: float, no_decay: Iterable[str] = DEFAULT_NO_DECAY
) -> list[dict]:
    """:func:`parameter_groups` split by depth (:mod:`agnews.models.layers`): one decay and one no-decay group per
    depth that has trainable parameters, each tagged with its ``depth`` and a ``name`` (LearningRateMonitor logs
    ``lr-AdamW/depth03``). The LRs are set by :func:`apply_layerwise_lr` once the optimizer knows its base LR."""
    from agnews.models.layers import parameter_depths

    no_decay = tuple(no_decay)
    depths = parameter_depths(model)
    groups: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = name.endswith(no_decay) or param.ndim < 2
        groups.setdefault((depths[name], skip), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if skip else weight_decay,
            "depth": depth,
            "name": f"depth{depth:02d}" + ("_no_decay" if skip else ""),
        }
        for (depth, skip), params in sorted(groups.items())
    ]


def apply_layerwise_lr(optimizer: torch.optim.Optimizer, llrd: float, top_depth: int) -> None:
    """Group at depth d gets ``base_lr * llrd ** (top_depth - d)``: the head (``top_depth``) keeps the optimizer's LR,
    each block below it one more factor. Called before the scheduler is built, so its ``base_lrs`` are these."""
    base_lr = optimizer.defaults["lr"]
    for group in optimizer.param_groups:
        group["lr"] = base_lr * llrd ** (top_depth - group["depth"])


def clip_unscaled_gradients(trainer, optimizer, gradient_clip_val, gradient_clip_algorithm) -> bool:
    """Clip the gradients here when no GradScaler is in play; False leaves it to Lightning.

    Lightning refuses to clip for fused optimizers under any mixed precision, a guard for fp16's GradScaler (the fused
    step unscales internally). Without a scaler (bf16, fp32) gradients are unscaled and can be clipped as they are."""
    if not gradient_clip_val or getattr(trainer.precision_plugin, "scaler", None) is not None:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if gradient_clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
    return True


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
