"""Experiment tracking helpers (Weights & Biases) shared by the configs in conf/logger/ and by the pipeline.

Names load lazily: :mod:`agnews.tracking.evaluation` and :mod:`agnews.tracking.mode` need no Lightning, so the
evaluation entry point and the sweep callback can use them without importing the training stack
(:mod:`agnews.tracking.wandb_logger` subclasses Lightning's logger).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AGNewsWandbLogger": "wandb_logger",
    "default_group": "wandb_logger",
    "default_run_name": "wandb_logger",
    "finish_loggers": "wandb_logger",
    "log_evaluation": "wandb_logger",
    "has_api_key": "mode",
    "resolve_mode": "mode",
    "log_report_to_wandb": "evaluation",
    "log_split_diagnostics": "evaluation",
    "log_sweep_summary": "evaluation",
    "evaluation_to_wandb": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'agnews.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"agnews.tracking.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
