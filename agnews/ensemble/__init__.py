"""Ensembles over finished runs: ``python -m agnews.ensemble members=[<run>,<run>,...] method=<name>``.

Members are joined by example id from their stored ``predictions/{val,test}.csv``; the combiner is fitted on the
validation predictions only and scores test from the stored test predictions (no model is re-run). The result is a
normal run directory (``config.yaml``, ``metrics.json``, ``predictions/``, ``run.json``) plus ``bundle/``, a
self-contained, checksummed serving bundle that ``Predictor.from_path`` loads. Modules: :mod:`.members` (load, check,
join), :mod:`.combiners` (voting, optimised weights, BMA), :mod:`.stacking` (cross-fitted meta-learners),
:mod:`.write` (run directory and bundle), :mod:`.run` (the pipeline). Docs: docs/ensembles.md.

Nothing heavy is imported here: the CLI composes its config before numpy, scikit-learn, xgboost or catboost load.
"""

from __future__ import annotations


def run_ensemble(config: dict) -> dict:
    """Fit, score and write one ensemble run (see :func:`agnews.ensemble.run.run_ensemble`)."""
    from agnews.ensemble.run import run_ensemble as run

    return run(config)


__all__ = ["run_ensemble"]
