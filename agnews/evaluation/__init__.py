"""Evaluation: metrics from per-example probabilities (later: calibration, significance, robustness)."""
