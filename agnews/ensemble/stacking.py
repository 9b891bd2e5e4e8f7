"""Stacking: a meta-learner on the members' validation probabilities, with k-fold cross-fitting.

The ensemble's validation predictions are out-of-fold: each validation row is scored by a meta-learner fitted on the
other folds only, so the reported validation metrics never come from a model that saw the row's label. The final
meta-learner is fitted on all validation rows and applied to test. It is saved without pickle: logistic regression as
JSON (coefficients, intercept), XGBoost as UBJ (``save_model``), CatBoost as CBM (``save_model(format="cbm")``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from agnews.errors import ConfigError

META_KINDS = ("logreg", "xgboost", "catboost")
META_FILES = {"logreg": "logreg.json", "xgboost": "meta.ubj", "catboost": "meta.cbm"}


def make_meta(kind: str, settings: dict, seed: int, n_jobs: int = 1):
    """A fresh scikit-learn-style classifier; xgboost/catboost are imported only here, when chosen."""
    settings = dict(settings or {})
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(random_state=seed, **settings)
    if kind == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(objective="multi:softprob", random_state=seed, n_jobs=n_jobs, **settings)
    if kind == "catboost":
        from catboost import CatBoostClassifier

        return CatBoostClassifier(
            loss_function="MultiClass", random_seed=seed, thread_count=n_jobs, verbose=False,
            allow_writing_files=False, **settings,
        )
    raise ConfigError(f"unknown meta-learner {kind!r}; known: {META_KINDS}")


def full_proba(meta, features: np.ndarray, num_classes: int) -> np.ndarray:
    """[n, num_classes]: the meta-learner's columns placed at the classes it was fitted on (``meta.classes_``)."""
    probs = np.asarray(meta.predict_proba(features), dtype=np.float64)
    out = np.zeros((len(features), num_classes), dtype=np.float64)
    out[:, np.asarray(meta.classes_, dtype=np.int64).ravel()] = probs
    return out


def check_fold_counts(labels: np.ndarray, num_classes: int, folds: int, label_names: Sequence[str]) -> None:
    """Stratified k-fold needs >= k rows of each class, or a fold's meta-learner would miss a class."""
    if folds < 2:
        raise ConfigError(f"stacking.folds={folds}: cross-fitting needs at least 2 folds")
    counts = np.bincount(labels, minlength=num_classes)
    short = [f"{label_names[c]}: {int(counts[c])}" for c in range(num_classes) if counts[c] < folds]
    if short:
        raise ConfigError(
            f"stacking with {folds}-fold cross-fitting needs at least {folds} validation rows of every class; "
            f"too few for {', '.join(short)} (lower stacking.folds or use a larger validation split)"
        )


def cross_fit(
    features: np.ndarray, labels: np.ndarray, make: Callable[[], object], folds: int, seed: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold probabilities [n, classes], fold index of each row). Row i is scored only by the meta-learner
    fitted on the folds that do not contain it."""
    from sklearn.model_selection import StratifiedKFold

    oof = np.full((len(labels), num_classes), np.nan)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_out) in enumerate(splitter.split(features, labels)):
        meta = make()
        meta.fit(features[fit_rows], labels[fit_rows])
        oof[held_out] = full_proba(meta, features[held_out], num_classes)
        fold_of[held_out] = fold
    if np.isnan(oof).any():  # StratifiedKFold covers every row exactly once; this guards a custom splitter
        raise RuntimeError("cross-fitting left rows without an out-of-fold prediction")
    return oof, fold_of


def save_meta(kind: str, meta, folder: Path) -> str:
    """Write the fitted meta-learner into ``folder`` in a non-pickle format; returns the file name."""
    name = META_FILES[kind]
    path = Path(folder) / name
    if kind == "logreg":
        import sklearn

        payload = {
            "coef": meta.coef_.tolist(),
            "intercept": meta.intercept_.tolist(),
            "classes": [int(c) for c in meta.classes_],
            "sklearn": sklearn.__version__,
        }
        path.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    elif kind == "xgboost":
        meta.get_booster().save_model(str(path))
    else:
        meta.save_model(str(path), format="cbm")
    return name
