"""Weights & Biases for ``logger=wandb``: never prompts, never hangs, one W&B run per Hydra job.

* Mode: ``auto`` (default) is ``WANDB_MODE`` when set, else ``online`` when an API key is configured (``WANDB_API_KEY``
  or a ``~/.netrc`` entry for the W&B host, as ``wandb login`` writes), else ``offline``. An explicit
  ``logger.wandb.mode=online|offline|disabled`` wins over all of that.
* Group: one per multirun (the sweep directory's name), the run directory's name for single runs; job type and tags
  come from the config.
* :func:`finish_loggers` ends the run at the end of each job (also a failed one): without it, the next job of a
  multirun in the same process would attach to the previous job's run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from lightning.pytorch.loggers import WandbLogger

from agnews.tracking.mode import MODES, has_api_key, resolve_mode  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001  (no Hydra context, e.g. a test composing the config)
        return None


def default_group(fallback_dir: str | Path | None = None) -> str | None:
    """The sweep directory's name in ``-m`` runs, the run directory's name otherwise."""
    from hydra.types import RunMode

    hydra_cfg = _hydra_config()
    if hydra_cfg is not None:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return Path(hydra_cfg.sweep.dir).name
        return Path(hydra_cfg.runtime.output_dir).name
    return Path(fallback_dir).name if fallback_dir else None


def default_run_name(fallback_dir: str | Path | None = None) -> str | None:
    """``<job number>-<overrides of this job>`` in ``-m`` runs, the run directory's name otherwise."""
    from hydra.types import RunMode

    hydra_cfg = _hydra_config()
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        suffix = hydra_cfg.job.override_dirname
        return f"{hydra_cfg.job.num}-{suffix}"[:120] if suffix else str(hydra_cfg.job.num)
    return default_group(fallback_dir)


class AGNewsWandbLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` with the mode/group/name defaults above and two end-of-run switches."""

    def __init__(
        self,
        project: str = "agnews",
        save_dir: str = ".",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = "train",
        tags: Sequence[str] | None = None,
        entity: str | None = None,
        notes: str | None = None,
        mode: str = "auto",
        log_exported_model: bool = False,
        log_evaluation_tables: bool = True,
        **kwargs: Any,
    ):
        resolved = resolve_mode(mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.log_exported_model = bool(log_exported_model)
        self.log_evaluation_tables = bool(log_evaluation_tables)
        self.resolved_mode = resolved
        settings = kwargs.pop("settings", None) or {}
        # No login prompts, no console noise from the service process; offline runs never touch the network.
        settings = {"silent": True, **dict(settings)}
        super().__init__(
            project=project,
            save_dir=save_dir,
            name=name or default_run_name(save_dir),
            group=group or default_group(save_dir),
            job_type=job_type,
            tags=list(tags or []),
            entity=entity,
            notes=notes,
            mode=resolved,
            settings=settings,
            log_model=False,
            **kwargs,
        )
        log.info("W&B logger: mode=%s project=%s group=%s", resolved, project, self._wandb_init.get("group"))


def wandb_loggers(loggers: Sequence) -> list[AGNewsWandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def log_evaluation(
    logger: WandbLogger,
    metrics: dict,
    label_names: Sequence[str],
    predictions: Mapping[str, tuple[Sequence[int], Sequence[int]]],
    model_dir: str | Path | None = None,
    probs: Mapping[str, Any] | None = None,
    texts: Mapping[str, Sequence[str]] | None = None,
    ids: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """End of run: final metrics in the summary, per-class tables and confusion matrices, optionally the model.

    ``predictions[split] = (gold labels, predicted labels)``; ``metrics[split]`` is a classification report. With
    ``probs[split]`` (examples x classes) also a reliability diagram, ECE/MCE and the most confident mistakes (with
    ``texts[split]`` / ``ids[split]`` in the table) per split
    (:func:`agnews.tracking.evaluation.log_split_diagnostics`).
    """
    import wandb

    run = logger.experiment
    payload: dict[str, Any] = {}
    for split, (labels, preds) in predictions.items():
        report = metrics[split]
        for key in ("accuracy", "f1_macro", "num_examples"):
            run.summary[f"{split}/{key}"] = report[key]
        if not getattr(logger, "log_evaluation_tables", True):
            continue
        table = wandb.Table(columns=["class", "precision", "recall", "f1", "support"])
        for name in label_names:
            row = report["per_class"][name]
            table.add_data(name, row["precision"], row["recall"], row["f1"], row["support"])
        payload[f"{split}/per_class"] = table
        payload[f"{split}/per_class_f1"] = wandb.plot.bar(table, "class", "f1", title=f"{split} per-class F1")
        payload[f"{split}/confusion_matrix"] = wandb.plot.confusion_matrix(
            y_true=[int(x) for x in labels],
            preds=[int(x) for x in preds],
            class_names=list(label_names),
            title=f"{split} confusion matrix",
        )
    if payload:
        run.log(payload)
    if getattr(logger, "log_evaluation_tables", True):
        from agnews.tracking.evaluation import log_split_diagnostics

        for split, split_probs in (probs or {}).items():
            labels = predictions[split][0]
            log_split_diagnostics(run, split, labels, split_probs, label_names, (texts or {}).get(split),
                                  (ids or {}).get(split), k=getattr(logger, "mistakes_k", 20))
    if model_dir is not None and getattr(logger, "log_exported_model", False):
        artifact = wandb.Artifact(
            name=f"model-{run.id}",
            type="model",
            metadata={split: {k: metrics[split][k] for k in ("accuracy", "f1_macro")} for split in predictions},
        )
        artifact.add_dir(str(model_dir))
        run.log_artifact(artifact, aliases=["latest"])


def finish_loggers(loggers: Sequence, failed: bool = False) -> None:
    """``wandb.finish()`` for each W&B logger that started a run in this process (one W&B run per Hydra job)."""
    for logger in wandb_loggers(loggers):
        run = getattr(logger, "_experiment", None)
        if run is None or not hasattr(run, "finish"):
            continue
        try:
            run.finish(exit_code=1 if failed else 0)
        finally:
            logger._experiment = None
