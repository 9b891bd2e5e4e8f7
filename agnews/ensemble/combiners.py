"""Fitting each combiner on the members' validation probabilities ([members, n, classes]).

* ``hard_vote``: majority vote (ties: higher mean probability, then lower class index); nothing to fit.
* ``soft_vote``: the mean of the members' probabilities; nothing to fit.
* ``weighted``: a weighted mean with weights on the simplex minimising validation log-loss (scipy SLSQP). The
  log-loss of a mixture is convex in the weights, so the optimum is no worse than uniform weights or any single member.
* ``bma``: Bayesian model averaging with a uniform prior: weights proportional to each member's validation likelihood
  prod_i p(y_i | x_i). Likelihoods of n examples differ by factors exponential in n, so with a validation split of any
  size the weights concentrate on the member with the best validation log-loss (BMA picks a model; it does not blend).
* ``stacking_<logreg|xgboost|catboost>``: a meta-learner with k-fold cross-fitting (:mod:`agnews.ensemble.stacking`).

Every fit returns a :class:`Fitted` whose :class:`~agnews.inference.ensemble.Combination` is the exact object the
bundle rebuilds from its files, so the run's stored test probabilities are what the bundle serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.errors import ConfigError
from agnews.inference.ensemble import LOG_EPS, METHODS, STACKING_METHODS, Combination, stacking_features
from agnews.runs.metrics import log_loss


@dataclass
class Fitted:
    combination: Combination
    val_probs: np.ndarray  # the ensemble on val: in-sample for voting, out-of-fold for fitted combiners
    val_source: str
    files: dict[str, Path] = field(default_factory=dict)  # combiner files for the bundle (name -> path)
    summary: dict = field(default_factory=dict)  # what run.json records about the fit


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not an ensemble method; choose one of: {', '.join(METHODS)}")
    return method


def gold_probabilities(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[n, members]: each member's probability of the gold class."""
    return probs[:, np.arange(probs.shape[1]), labels].T


def optimise_weights(
    probs: np.ndarray, labels: np.ndarray, maxiter: int = 1000, ftol: float = 1e-12
) -> tuple[np.ndarray, dict]:
    """Weights on the simplex minimising the validation log-loss of the weighted mean (SLSQP, analytic gradient)."""
    from scipy.optimize import minimize

    gold = gold_probabilities(probs, labels)
    members = gold.shape[1]

    def loss(w: np.ndarray) -> float:
        return float(-np.log(np.clip(gold @ w, LOG_EPS, None)).mean())

    def grad(w: np.ndarray) -> np.ndarray:
        return -(gold / np.clip(gold @ w, LOG_EPS, None)[:, None]).mean(axis=0)

    uniform = np.full(members, 1.0 / members)
    result = minimize(
        loss, uniform, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * members,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": maxiter, "ftol": ftol},
    )
    weights = np.clip(result.x, 0.0, None)
    weights = weights / weights.sum()
    if loss(weights) > loss(uniform):  # never hand back something worse than the starting point
        weights = uniform
    return weights, {
        "optimizer": "scipy SLSQP",
        "success": bool(result.success),
        "message": str(result.message),
        "iterations": int(result.nit),
        "val_log_loss_uniform": loss(uniform),
        "val_log_loss_fitted": loss(weights),
    }


def bma_weights(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights, log-likelihoods): w_k ∝ exp(sum_i log p_k(y_i | x_i)) with a uniform prior, via log-sum-exp."""
    from scipy.special import logsumexp

    log_likelihood = np.log(np.clip(gold_probabilities(probs, labels), LOG_EPS, None)).sum(axis=0)
    return np.exp(log_likelihood - logsumexp(log_likelihood)), log_likelihood


def fit_stacking(
    method: str, probs: np.ndarray, labels: np.ndarray, names: Sequence[str], label_names: Sequence[str],
    settings: dict, seed: int, workdir: Path,
) -> Fitted:
    from agnews.ensemble import stacking

    kind = method.removeprefix("stacking_")
    folds, features_kind = int(settings.get("folds", 5)), str(settings.get("features", "probs"))
    n_jobs = int(settings.get("n_jobs", 1))
    hyper = dict(settings.get(kind) or {})
    num_classes = probs.shape[2]
    stacking.check_fold_counts(labels, num_classes, folds, label_names)
    features = stacking_features(probs, features_kind)

    def make():
        return stacking.make_meta(kind, hyper, seed, n_jobs)

    oof, fold_of = stacking.cross_fit(features, labels, make, folds, seed, num_classes)
    final = make()
    final.fit(features, labels)
    meta_file = stacking.save_meta(kind, final, workdir)
    params = {
        "members": list(names),
        "features": features_kind,
        "meta": kind,
        "meta_file": meta_file,
        "classes": [int(c) for c in np.asarray(final.classes_).ravel()],
        "folds": folds,
        "seed": seed,
        "hyperparameters": hyper,
    }
    # The run is scored through the saved file, exactly as the bundle will load it.
    combination = Combination.from_files(method, params, workdir)
    in_memory = stacking.full_proba(final, features, num_classes)
    return Fitted(
        combination,
        oof,
        f"out-of-fold ({folds}-fold stratified cross-fitting)",
        {meta_file: workdir / meta_file},
        {
            "fold_sizes": np.bincount(fold_of, minlength=folds).tolist(),
            "val_log_loss_out_of_fold": log_loss(oof, labels, LOG_EPS),
            "val_log_loss_in_sample": log_loss(in_memory, labels, LOG_EPS),
            "saved_vs_in_memory_max_abs_diff": float(np.abs(combination(probs) - in_memory).max()),
        },
    )


def fit_combiner(
    method: str, probs: np.ndarray, labels: np.ndarray, names: Sequence[str], label_names: Sequence[str],
    config: dict, workdir: Path,
) -> Fitted:
    """Fit ``method`` on validation probabilities ``probs`` [members, n, classes] with gold ``labels``."""
    check_method(method)
    seed = int(config.get("seed", 42))
    if method in STACKING_METHODS:
        return fit_stacking(method, probs, labels, names, label_names, config.get("stacking") or {}, seed, workdir)
    members = probs.shape[0]
    summary: dict = {}
    if method == "hard_vote":
        params = {
            "members": list(names),
            "tie_break": "most votes, then highest mean probability, then lowest class index",
        }
    elif method == "soft_vote":
        params = {"members": list(names), "weights": [1.0 / members] * members}
    elif method == "weighted":
        settings = config.get("weights") or {}
        maxiter, ftol = int(settings.get("maxiter", 1000)), float(settings.get("ftol", 1e-12))
        weights, summary = optimise_weights(probs, labels, maxiter, ftol)
        params = {"members": list(names), "weights": weights.tolist()}
    else:  # bma
        weights, log_likelihood = bma_weights(probs, labels)
        params = {"members": list(names), "weights": weights.tolist(), "prior": "uniform"}
        summary = {"val_log_likelihood": dict(zip(names, log_likelihood.tolist()))}
    combination = Combination(method, params)
    in_sample = combination(probs)
    if method in ("hard_vote", "soft_vote"):
        summary = {**summary, "val_log_loss": log_loss(in_sample, labels, LOG_EPS)}
        return Fitted(combination, in_sample, "in-sample (nothing fitted)", {}, summary)
    # Weights fitted on val would score val optimistically, and a method chosen by val accuracy would then be chosen
    # for that optimism: report val out-of-fold, as stacking does (each fold scored with weights fitted without it).
    folds = int((config.get("stacking") or {}).get("folds", 5))
    if method == "weighted":
        fit_weights = lambda p, y: optimise_weights(p, y, maxiter, ftol)[0]  # noqa: E731
    else:
        fit_weights = lambda p, y: bma_weights(p, y)[0]  # noqa: E731
    val_probs = cross_fitted_weighting(probs, labels, fit_weights, folds, seed, label_names)
    summary = {
        **summary,
        "val_log_loss_out_of_fold": log_loss(val_probs, labels, LOG_EPS),
        "val_log_loss_in_sample": log_loss(in_sample, labels, LOG_EPS),
    }
    return Fitted(combination, val_probs, f"out-of-fold ({folds}-fold stratified cross-fitting of the weights)", {},
                  summary)


def cross_fitted_weighting(
    probs: np.ndarray, labels: np.ndarray, fit_weights, folds: int, seed: int, label_names: Sequence[str]
) -> np.ndarray:
    """Out-of-fold ensemble probabilities [n, classes]: each fold weighted with weights fitted on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    from agnews.ensemble import stacking

    stacking.check_fold_counts(labels, probs.shape[2], folds, label_names)
    out = np.full(probs.shape[1:], np.nan)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_out in splitter.split(np.zeros(len(labels)), labels):
        weights = fit_weights(probs[:, fit_rows], labels[fit_rows])
        out[held_out] = np.tensordot(weights, probs[:, held_out], axes=1)
    return out
