"""Evaluation: metrics from per-example probabilities, calibration, significance, error analysis, robustness and the
evaluation report (``python -m agnews.evaluate``; see docs/evaluation.md).

Submodules import their heavy dependencies (torch, matplotlib, captum, shap) lazily: the CLI imports this package to
compose its config.
"""

from agnews.errors import AGNewsError


class EvaluationError(AGNewsError):
    """An evaluation input is unusable (not a run/bundle, unfinished run, missing predictions, bad data folder, ...)."""
