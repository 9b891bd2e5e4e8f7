"""Experiment tracking helpers (Weights & Biases) shared by the configs in conf/logger/ and by the pipeline."""

from agnews.tracking.wandb_logger import (
    AGNewsWandbLogger,
    default_group,
    default_run_name,
    finish_loggers,
    has_api_key,
    log_evaluation,
    resolve_mode,
)

__all__ = [
    "AGNewsWandbLogger",
    "default_group",
    "default_run_name",
    "finish_loggers",
    "has_api_key",
    "log_evaluation",
    "resolve_mode",
]
