"""One baseline job: the training splits, fit, convert to ONNX, prove parity, score with the ONNX model, write the run.

The run directory has the layout every run has (:mod:`agnews.runs`): ``config.yaml`` first, then ``model/`` (moved in
whole from a temporary folder), ``predictions/<split>.csv``, ``metrics.json`` and ``run.json`` last (its presence
means the run finished). A failure leaves no ``model/`` and no ``run.json``, and writes the reason to ``error.txt``.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from agnews.errors import ConfigError, DataError
from agnews.runs import (
    CONFIG_FILE,
    ERROR_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_INFO_FILE,
    ONNX_MODEL_FILE,
    PREDICTIONS_DIR,
    predictions_path,
    sha256_file,
    write_json,
    write_predictions,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def prepare_output_dir(output_dir: Path) -> None:
    """Create the run directory and prove it is writable; a rerun into it first forgets that it had finished."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run directory {output_dir} ({exc.strerror or exc}); choose a writable one with "
            "hydra.run.dir=... (or paths.log_dir=...)"
        ) from None
    for stale in (MANIFEST_FILE, ERROR_FILE):
        (output_dir / stale).unlink(missing_ok=True)


def load_splits(data: dict) -> tuple[dict, dict]:
    """train/val/test exactly as the training datamodule builds them (same source, seed and sizes: same ids)."""
    from agnews.data.sources import HUB_DATASET, load_source
    from agnews.data.splits import make_splits

    missing = [key for key in ("source", "label_names", "val_size", "seed") if data.get(key) is None]
    if missing:
        raise ConfigError(f"data.{missing[0]} must be set (the baseline builds the same splits as training)")
    raw = load_source(
        data["source"],
        data.get("data_dir"),
        list(data["label_names"]),
        data.get("on_bad_rows", "fail"),
        data.get("hub_dataset", HUB_DATASET),
        data.get("hub_revision"),
    )
    bad_rows = {name: len(split.bad_rows) for name, split in raw.items() if split.bad_rows}
    splits = make_splits(raw["train"], raw["test"], data["val_size"], data.get("train_size"), data["seed"])
    return splits, bad_rows


def environment() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import scipy
    import skl2onnx
    import sklearn

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def run_baseline(cfg) -> dict:
    """Run one job from the composed config (``conf/baseline.yaml``); returns the metrics written to metrics.json."""
    from omegaconf import OmegaConf

    output_dir = Path(cfg.paths.output_dir)
    prepare_output_dir(output_dir)
    config_tmp = output_dir / f"{CONFIG_FILE}.tmp"
    OmegaConf.save(cfg, config_tmp, resolve=True)
    config_tmp.replace(output_dir / CONFIG_FILE)
    options = OmegaConf.to_container(cfg, resolve=True)
    try:
        return _run(options, output_dir)
    except Exception as error:
        # load_run() reports the last line of error.txt as the reason the run did not finish: end with the summary.
        message = str(error)
        summary = f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
        (output_dir / ERROR_FILE).write_text(f"{message}\n\n{summary}\n", encoding="utf-8")
        raise


def _run(options: dict, output_dir: Path) -> dict:
    from agnews.baseline.model import build_pipeline, describe_pipeline
    from agnews.baseline.onnx_convert import check_parity, convert, parity

    timings: dict[str, float] = {}
    started_at = datetime.now(timezone.utc).isoformat()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    data = options["data"]
    label_names = list(data["label_names"])
    eval_splits = list((options.get("scoring") or {}).get("splits") or ["val", "test"])
    unknown = [split for split in eval_splits if split not in SPLITS]
    if unknown:
        raise ConfigError(f"scoring.splits: unknown split(s) {unknown}; choose from {list(SPLITS)}")
    onnx_options = options.get("onnx") or {}
    tolerance = float(onnx_options.get("tolerance", 1e-4))
    batch_size = int(onnx_options.get("batch_size", 32))
    if batch_size < 1:
        raise ConfigError(f"onnx.batch_size must be >= 1, got {batch_size}")
    pipeline = build_pipeline(options.get("model") or {}, seed=int(options.get("seed", 42)))

    splits, bad_rows = load_splits(data)
    train = splits["train"]
    missing = sorted(set(range(len(label_names))) - set(train.labels))
    if missing:
        raise DataError(
            f"the training split has no example of class(es) {[label_names[i] for i in missing]}: the classifier "
            "cannot learn them (use more training rows)"
        )
    lap("data")
    log.info("Splits: %s", {name: len(split) for name, split in splits.items()})

    try:
        pipeline.fit(train.texts, train.labels)
    except ValueError as exc:  # e.g. min_df/max_df leave no terms on a tiny training split
        raise ConfigError(f"fitting the TF-IDF pipeline failed: {exc}") from exc
    lap("fit")
    described = describe_pipeline(pipeline)
    log.info("Fitted: %d features, %s", described["num_features"], described["classifier"])

    locale = onnx_options.get("locale") or "C.UTF-8"
    onnx_model = convert(pipeline, locale)
    lap("convert")

    staging = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=output_dir))
    staging.chmod(0o755)  # mkdtemp makes it private; model/ should read like the rest of the run
    try:
        import onnx

        from agnews.inference.text_onnx import TextOnnxModel

        onnx.save(onnx_model, staging / ONNX_MODEL_FILE)
        # Score with the class Predictor.from_path(<run>) uses: the stored predictions are the shipped model's.
        shipped = TextOnnxModel(staging / ONNX_MODEL_FILE, label_names, batch_size=batch_size)
        probs, reports = {}, {}
        for split in eval_splits:
            texts = splits[split].texts
            probs[split] = shipped.predict_proba(texts)
            reports[split] = parity(pipeline.predict_proba(texts), probs[split], tolerance)
            log.info("ONNX parity on %s: %s", split, reports[split])
        lap("predict")
        check_parity(reports, tolerance)

        from agnews.runs.metrics import classification_report

        metrics = {}
        for split in eval_splits:
            labels = splits[split].labels
            metrics[split] = classification_report(probs[split], labels, label_names)
            write_predictions(predictions_path(output_dir, split), splits[split].ids, labels, probs[split], label_names)
            log.info("%s accuracy %.4f, macro-F1 %.4f", split, metrics[split]["accuracy"], metrics[split]["f1_macro"])

        onnx_info = {
            "file": ONNX_MODEL_FILE,
            "bytes": (staging / ONNX_MODEL_FILE).stat().st_size,
            "sha256": sha256_file(staging / ONNX_MODEL_FILE),
            "opset": {entry.domain or "ai.onnx": entry.version for entry in onnx_model.opset_import},
            "locale": locale,
            "tolerance": tolerance,
            "parity": reports,
        }
        write_json(
            staging / MODEL_INFO_FILE,
            {
                "input": "text",
                "onnx_file": ONNX_MODEL_FILE,
                "label_names": label_names,
                "family": "tfidf",
                "max_length": None,
                "source": "scikit-learn",
                **described,
                "locale": locale,
                "onnx_parity": {split: report["max_abs_diff"] for split, report in reports.items()},
            },
        )
        target = output_dir / MODEL_DIR
        if target.exists():  # a rerun into the same directory replaces the old model whole
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    lap("write")

    write_json(output_dir / METRICS_FILE, metrics)
    write_json(
        output_dir / MANIFEST_FILE,
        {
            "task": options.get("task_name", "baseline"),
            "model": {"family": "tfidf", "source": "scikit-learn", **described},
            "data": {
                "source": data["source"],
                "sizes": {name: len(split) for name, split in splits.items()},
                "bad_rows": bad_rows,
            },
            "artifacts": {
                "config": CONFIG_FILE,
                "metrics": METRICS_FILE,
                "model": MODEL_DIR,
                "predictions": {split: f"{PREDICTIONS_DIR}/{split}.csv" for split in eval_splits},
            },
            "onnx": onnx_info,
            "timings_s": timings,
            "started_at": started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "environment": environment(),
        },
    )
    return metrics

