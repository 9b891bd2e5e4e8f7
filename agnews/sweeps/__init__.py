"""Multirun sweeps: the summary table written after every ``-m`` run, and the Optuna sweeper (docs/sweeps.md).

Nothing here imports optuna or torch at module level: the Hydra callback in :mod:`agnews.sweeps.summary` is
instantiated on every CLI start.
"""
