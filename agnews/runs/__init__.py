"""The run directory format, in one place: every file name of a finished run, and typed access to it.

A run directory (written by ``agnews.train``, ``agnews.baseline`` and ``agnews.ensemble``) holds::

    config.yaml                 resolved config (Hydra's unresolved copy and the overrides are in .hydra/)
    run.json                    manifest: artifact paths, timings, versions, data sizes (written last: its presence
                                means the run finished)
    metrics.json                per split: accuracy, macro-F1, per-class P/R/F1, confusion matrix
    predictions/{val,test}.csv  id, label, pred, prob_<class>... per example, keyed by a stable example id
    model/                      the exported model: save_pretrained (safetensors) + tokenizer + agnews_model.json, or
                                model.onnx + agnews_model.json for a classical (scikit-learn) run
    checkpoints/{best,last}.ckpt  Lightning checkpoints (training runs only)
    export/                     ONNX / INT8 / TensorRT exports (``agnews.export``): export.json + *.onnx
    bundle/                     an ensemble's self-contained serving bundle (``agnews.ensemble``): manifest.json
    error.txt / pruned.txt      a multirun job that failed / was pruned (no run.json then)
    stages.json, stages/        a multi-stage run (stages=[...]): every stage's record; the earlier stages' runs

Nothing else in the project spells these names: producers and readers import the constants and use :func:`load_run`.
This package imports neither torch, Hydra nor Lightning: serving reads runs through it. See docs/runs.md.
"""

from agnews.runs.format import (
    BUNDLE_DIR,
    BUNDLE_MANIFEST_FILE,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    ERROR_FILE,
    EXPORT_DIR,
    EXPORT_INFO_FILE,
    HYDRA_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_INFO_FILE,
    ONNX_MODEL_FILE,
    OVERRIDES_FILE,
    PREDICTIONS_DIR,
    PRUNED_FILE,
    STAGES_DIR,
    STAGES_FILE,
    predictions_path,
    sha256_file,
    write_json,
    write_text_atomic,
)
from agnews.runs.predictions import Predictions, align_predictions, probability_columns, read_predictions, write_predictions
from agnews.runs.run_dir import RunDir, RunFormatError, load_run, looks_like_run, read_json, read_yaml

__all__ = [
    "BUNDLE_DIR",
    "BUNDLE_MANIFEST_FILE",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "ERROR_FILE",
    "EXPORT_DIR",
    "EXPORT_INFO_FILE",
    "HYDRA_DIR",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "MODEL_INFO_FILE",
    "ONNX_MODEL_FILE",
    "OVERRIDES_FILE",
    "PREDICTIONS_DIR",
    "PRUNED_FILE",
    "STAGES_DIR",
    "STAGES_FILE",
    "Predictions",
    "RunDir",
    "RunFormatError",
    "align_predictions",
    "load_run",
    "looks_like_run",
    "predictions_path",
    "probability_columns",
    "read_json",
    "read_predictions",
    "read_yaml",
    "sha256_file",
    "write_json",
    "write_predictions",
    "write_text_atomic",
]
