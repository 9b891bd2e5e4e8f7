"""An ensemble bundle as one model: every member predicts probabilities, the bundle's combiner merges them.

The combiners' *application* lives here (the fitting is in ``agnews.ensemble``, which scores its own run through
:class:`Combination`, so a bundle reproduces the run's stored probabilities by construction):

* ``soft_vote`` / ``weighted`` / ``bma``: a weighted mean of the members' probabilities (uniform, optimised on
  validation log-loss, or proportional to validation likelihood);
* ``hard_vote``: vote shares; a tie between classes with equally many votes goes to the class with the higher mean
  member probability, then to the lower class index (see :func:`hard_vote`);
* ``stacking_logreg`` / ``stacking_xgboost`` / ``stacking_catboost``: a meta-learner on the concatenated member
  probabilities, read from JSON, XGBoost UBJ or CatBoost CBM (never a pickle).

xgboost and catboost are imported only for a bundle that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.runs import MODEL_INFO_FILE, read_json
from agnews.runs.bundle import COMBINER_DIR, BundleError, read_bundle

WEIGHTED_METHODS = ("soft_vote", "weighted", "bma")
STACKING_METHODS = ("stacking_logreg", "stacking_xgboost", "stacking_catboost")
METHODS = ("hard_vote", *WEIGHTED_METHODS, *STACKING_METHODS)
FEATURES = ("probs", "log_probs")
LOG_EPS = 1e-6  # stored probabilities are rounded to 1e-6: log features are floored there


# ---- combining functions (member probabilities [members, n, classes] -> [n, classes]) --------------------------------
def weighted_average(probs: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (probs.shape[0],):
        raise ValueError(f"{probs.shape[0]} members but {weights.shape} weights")
    return np.tensordot(weights, probs, axes=1)


def hard_vote(probs: np.ndarray) -> np.ndarray:
    """Vote shares, nudged so that argmax applies the tie rule: most votes, then highest mean probability, then the
    lowest class index (numpy's argmax). The nudge, mean probability / (m (m + 1)), is below one vote (1 / m), so it
    never overturns a majority; rows are renormalised to sum to 1."""
    members, n, classes = probs.shape
    votes = np.zeros((n, classes), dtype=np.float64)
    for member in probs:
        votes[np.arange(n), member.argmax(axis=1)] += 1.0
    scores = votes / members + probs.mean(axis=0) / (members * (members + 1))
    return scores / scores.sum(axis=1, keepdims=True)


def stacking_features(probs: np.ndarray, features: str = "probs") -> np.ndarray:
    """[n, members * classes]: member 0's class columns, then member 1's, ... (log-probabilities for ``log_probs``)."""
    if features not in FEATURES:
        raise ValueError(f"stacking features must be one of {FEATURES}, got {features!r}")
    stacked = np.concatenate(list(probs), axis=1)
    return np.log(np.clip(stacked, LOG_EPS, None)) if features == "log_probs" else stacked


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


# ---- meta-learners read from non-pickle files ------------------------------------------------------------------------
class LogisticMeta:
    """scikit-learn's LogisticRegression.predict_proba from its coefficients (JSON): softmax, or a sigmoid for 2
    classes."""

    def __init__(self, coef, intercept):
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    @classmethod
    def from_file(cls, path: Path) -> "LogisticMeta":
        data = read_json(path)
        return cls(data["coef"], data["intercept"])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        scores = features @ self.coef.T + self.intercept
        if scores.shape[1] == 1:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        return softmax(scores)


class XGBoostMeta:
    def __init__(self, path: Path):
        import xgboost

        self.booster = xgboost.Booster(model_file=str(path))
        self.booster.set_param({"nthread": 1})

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        out = self.booster.inplace_predict(np.ascontiguousarray(features, dtype=np.float32))
        out = np.asarray(out, dtype=np.float64)
        return np.stack([1.0 - out, out], axis=1) if out.ndim == 1 else out


class CatBoostMeta:
    def __init__(self, path: Path):
        from catboost import CatBoostClassifier

        self.model = CatBoostClassifier(thread_count=1)
        self.model.load_model(str(path), format="cbm")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(features), dtype=np.float64)


META_LOADERS = {
    "stacking_logreg": LogisticMeta.from_file,
    "stacking_xgboost": XGBoostMeta,
    "stacking_catboost": CatBoostMeta,
}


class Combination:
    """A fitted combiner: ``Combination(method, params, meta)(probs [members, n, classes]) -> [n, classes]``."""

    def __init__(self, method: str, params: dict, meta=None):
        if method not in METHODS:
            raise ValueError(f"unknown combiner {method!r}; known: {', '.join(METHODS)}")
        if method in STACKING_METHODS and meta is None:
            raise ValueError(f"{method} needs its meta-learner")
        if method in WEIGHTED_METHODS:
            weights = params.get("weights")
            members = params.get("members")
            if not isinstance(weights, list) or (members is not None and len(weights) != len(members)):
                raise ValueError(f"{method} needs one weight per member, got weights={weights!r} for {members}")
        self.method = method
        self.params = dict(params)
        self.meta = meta

    @classmethod
    def from_files(cls, method: str, params: dict, folder: Path) -> "Combination":
        """``params`` of a fitted combiner; a stacking meta-learner is read from ``folder / params["meta_file"]``."""
        meta = None
        if method in STACKING_METHODS:
            if not isinstance(params.get("meta_file"), str) or not isinstance(params.get("classes"), list):
                raise ValueError(f"{method} params must name its meta_file and classes, got {sorted(params)}")
            path = Path(folder) / params["meta_file"]
            if not path.is_file():
                raise BundleError(f"{path}: the {method} meta-learner file is missing")
            meta = META_LOADERS[method](path)
        return cls(method, params, meta)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 3:
            raise ValueError(f"member probabilities must be [members, n, classes], got shape {probs.shape}")
        if self.method == "hard_vote":
            return hard_vote(probs)
        if self.method in WEIGHTED_METHODS:
            return weighted_average(probs, self.params["weights"])
        meta_probs = self.meta.predict_proba(stacking_features(probs, self.params.get("features", "probs")))
        # The meta-learner's columns are the classes it was fitted on, in this order.
        out = np.zeros(probs.shape[1:], dtype=np.float64)
        out[:, np.asarray(self.params["classes"], dtype=np.int64)] = meta_probs
        return out

    def describe(self) -> dict:
        shown = {k: v for k, v in self.params.items() if k not in ("members",)}
        return {"method": self.method, "params": shown}


# ---- the ensemble model ----------------------------------------------------------------------------------------------
class EnsembleModel:
    """``predict_proba(texts)``: each member's probabilities, combined. Members are any Predictor-style models."""

    def __init__(self, members: list[tuple[str, object]], combination: Combination, label_names: Sequence[str]):
        if not members:
            raise ValueError("an ensemble needs members")
        self.members = list(members)
        self.combination = combination
        self.label_names = list(label_names)

    def member_probabilities(self, texts: list[str]) -> np.ndarray:
        """[members, n, classes], members in the bundle's order."""
        return np.stack([np.asarray(model.predict_proba(texts), dtype=np.float64) for _, model in self.members])

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.combination(self.member_probabilities(texts))

    def describe(self) -> dict:
        return {
            "backend": "ensemble",
            "combiner": self.combination.describe(),
            "members": [{"name": name, **model.describe()} for name, model in self.members],
        }


def load_bundle_model(
    bundle_dir: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    batch_size: int = 64,
    variant: str | None = None,
    providers: Sequence[str] | None = None,
) -> tuple[EnsembleModel, list[str], dict]:
    """(model, label names, info) of a verified bundle (:func:`agnews.runs.bundle.read_bundle` runs first: checksums,
    schema version, no pickles). Each member loads through :func:`agnews.inference.predictor.load_model_dir`:
    ``backend=auto`` runs ONNX members on ONNX Runtime and transformers members on torch (``precision``); ``variant``
    applies to ONNX members (a bundle holds one variant per member: the one chosen when it was written)."""
    from agnews.inference.predictor import load_model_dir

    bundle = Path(bundle_dir)
    manifest = read_bundle(bundle)
    label_names = list(manifest["label_names"])
    combiner = manifest["combiner"]
    names = [member["name"] for member in manifest["members"]]
    params = combiner.get("params") or {}
    if params.get("members") not in (None, names):
        raise BundleError(f"{bundle}: the combiner was fitted on members {params['members']}, the bundle holds {names}")
    try:  # before the members: a broken combiner fails fast, without loading any model
        combination = Combination.from_files(combiner.get("method"), params, bundle / COMBINER_DIR)
    except ValueError as exc:
        raise BundleError(f"{bundle}: the combiner cannot be rebuilt: {exc}") from None
    members, member_info = [], []
    for member in manifest["members"]:
        folder = bundle / member["dir"]
        info_path = folder / MODEL_INFO_FILE
        if not info_path.is_file():
            raise BundleError(f"{folder}: member {member['name']} has no {MODEL_INFO_FILE}")
        info = read_json(info_path)
        if list(info.get("label_names") or []) != label_names:
            raise BundleError(
                f"{folder}: member {member['name']} predicts {info.get('label_names')}, the ensemble {label_names}"
            )
        model = load_model_dir(
            folder, info, backend=backend, precision=precision, device=device, batch_size=batch_size,
            variant=variant if member["format"] == "onnx" else None, providers=providers,
        )
        members.append((member["name"], model))
        member_info.append({"name": member["name"], "format": member["format"], "max_length": info.get("max_length")})
    lengths = [m["max_length"] for m in member_info if m["max_length"] is not None]
    info = {
        "kind": "ensemble",
        "schema_version": manifest["schema_version"],
        "label_names": label_names,
        "method": combiner["method"],
        "members": member_info,
        # the longest input any member reads (each member truncates to its own max length)
        "max_length": max(lengths) if lengths else None,
    }
    return EnsembleModel(members, combination, label_names), label_names, info
