"""Hydra Sweeper plugin ``hydra/sweeper=agnews_optuna``: Optuna >= 4 via ask-and-tell (see docs/sweeps.md).

Hydra imports every module under the ``hydra_plugins`` namespace at start-up, so these modules stay light: optuna is
imported only when a sweep actually runs (in :mod:`agnews.sweeps.optuna_sweeper`).
"""
