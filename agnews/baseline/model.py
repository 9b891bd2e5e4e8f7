"""The scikit-learn pipeline: word (and optionally char) TF-IDF n-grams -> LinearSVC -> sigmoid calibration.

Every choice here is one the ONNX conversion reproduces exactly (docs/baseline.md, "ONNX parity"):

* words are runs of at least two ASCII letters, digits or underscores (``WORD_PATTERN``). scikit-learn's default
  ``(?u)\\b\\w\\w+\\b`` is Unicode-aware in Python but not in RE2 (ONNX Runtime's regex engine), and skl2onnx would
  replace it by ``[a-zA-Z0-9_]+``, which also emits one-character tokens and so breaks the bigrams;
* char n-grams use ``analyzer="char"`` (``char_wb`` has no ONNX converter);
* no accent stripping, stop words, custom preprocessor or tokenizer (none convert).
"""

from __future__ import annotations

from typing import Any, Mapping

from agnews.errors import ConfigError

# Identical in Python's re and in RE2 (the pattern is handed to ONNX Runtime's Tokenizer unchanged).
WORD_PATTERN = r"[A-Za-z0-9_]{2,}"
CALIBRATIONS = ("sigmoid", "isotonic")


def _ngram_range(value: Any, what: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}.ngram_range must be two integers [min, max], got {value!r}") from None
    if not 1 <= low <= high:
        raise ConfigError(f"{what}.ngram_range must satisfy 1 <= min <= max, got [{low}, {high}]")
    return low, high


def _count_or_fraction(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a document count (int >= 1) or a fraction (0 < float <= 1), got {value!r}")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ConfigError(f"{what}={value}: a fraction must lie in (0, 1]")
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"{what}={value}: a document count must be at least 1")
    return value


def _vectorizer(spec: Mapping[str, Any], analyzer: str, what: str):
    from sklearn.feature_extraction.text import TfidfVectorizer

    max_features = spec.get("max_features")
    bad_type = isinstance(max_features, bool) or not isinstance(max_features, int)
    if max_features is not None and (bad_type or max_features < 1):
        raise ConfigError(f"{what}.max_features must be null or an integer >= 1, got {max_features!r}")
    options = dict(
        analyzer=analyzer,
        ngram_range=_ngram_range(spec.get("ngram_range", (1, 1)), what),
        min_df=_count_or_fraction(spec.get("min_df", 1), f"{what}.min_df"),
        max_df=_count_or_fraction(spec.get("max_df", 1.0), f"{what}.max_df"),
        max_features=max_features,
        sublinear_tf=bool(spec.get("sublinear_tf", False)),
        lowercase=True,
    )
    if analyzer == "word":
        options["token_pattern"] = WORD_PATTERN
    return TfidfVectorizer(**options)


def build_pipeline(spec: Mapping[str, Any], seed: int):
    """``Pipeline([features, clf])`` from the ``model`` config node (plain dict); bad values raise ConfigError."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.svm import LinearSVC

    family = spec.get("family", "tfidf")
    if family != "tfidf":
        raise ConfigError(f"model.family must be 'tfidf' (the only classical family), got {family!r}")
    parts = []
    for name, analyzer in (("word", "word"), ("char", "char")):
        node = spec.get(name)
        if node is None:  # null switches this feature block off
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(f"model.{name} must be a mapping of TF-IDF options or null, got {node!r}")
        parts.append((name, _vectorizer(node, analyzer, f"model.{name}")))
    if not parts:
        raise ConfigError("model.word and model.char are both null: the baseline needs at least one feature block")

    clf = spec.get("classifier") or {}
    C = clf.get("C", 1.0)
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not C > 0:
        raise ConfigError(f"model.classifier.C must be a positive number, got {C!r}")
    calibration = clf.get("calibration", "sigmoid")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"model.classifier.calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    folds = clf.get("calibration_folds", 3)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"model.classifier.calibration_folds must be an integer >= 2, got {folds!r}")
    svm = LinearSVC(C=float(C), max_iter=int(clf.get("max_iter", 2000)), random_state=seed)
    # ensemble=False: one SVM fitted on all rows (one weight matrix in the ONNX file); folds only fit the calibrators.
    calibrated = CalibratedClassifierCV(svm, method=calibration, cv=folds, ensemble=False)
    return Pipeline([("features", FeatureUnion(parts)), ("clf", calibrated)])


def describe_pipeline(pipeline) -> dict:
    """What was fitted, for run.json and agnews_model.json: feature blocks with their vocabulary sizes, classifier."""
    union = pipeline.named_steps["features"]
    blocks = {}
    for name, vectorizer in union.transformer_list:
        blocks[name] = {
            "analyzer": vectorizer.analyzer,
            "ngram_range": list(vectorizer.ngram_range),
            "min_df": vectorizer.min_df,
            "max_df": vectorizer.max_df,
            "max_features": vectorizer.max_features,
            "sublinear_tf": vectorizer.sublinear_tf,
            "lowercase": vectorizer.lowercase,
            "token_pattern": vectorizer.token_pattern if vectorizer.analyzer == "word" else None,
            "vocabulary_size": len(getattr(vectorizer, "vocabulary_", {}) or {}),
        }
    calibrated = pipeline.named_steps["clf"]
    svm = calibrated.estimator
    return {
        "features": blocks,
        "num_features": sum(block["vocabulary_size"] for block in blocks.values()),
        "classifier": {
            "type": "LinearSVC",
            "C": svm.C,
            "max_iter": svm.max_iter,
            "calibration": calibrated.method,
            "calibration_folds": calibrated.cv,
        },
    }
