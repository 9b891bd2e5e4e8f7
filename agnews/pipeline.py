"""One readable path from config to artifacts: build, fit, evaluate the best checkpoint, write the run directory."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agnews import artifacts, runs
from agnews.distributed import FitProgress, GatherPredictions, ShardedEvalBatchSampler, collect
from agnews.errors import ConfigError
from agnews.models.peft import apply_peft, export_bundle
from agnews.tracking.wandb_logger import finish_loggers, log_evaluation, wandb_loggers

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list:
    """Callbacks/loggers: a mapping of name -> config with ``_target_`` (null entries are switched off)."""
    if not group:
        return []
    built = []
    for name, node in group.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"'{name}' must be a config with a _target_, got {node!r}")
        built.append(instantiate(node))
    return built


def train(cfg: DictConfig, manifest_extra: Callable[[dict], dict] | None = None) -> dict:
    """Run one training job; returns the metrics dictionary written to the run's metrics file.

    ``manifest_extra(metrics)`` returns entries added to the run's manifest (``agnews.stages`` records its stages
    there), called just before the manifest is written."""
    import lightning as L

    timer = artifacts.PhaseTimer()
    timings, lap, started_at = timer.timings, timer.lap, timer.started_at
    output_dir = artifacts.prepare_job(cfg)

    label_names = list(cfg.data.label_names)
    bundle = instantiate(cfg.model, label_names=label_names)
    # peft=lora|ia3|prefix|prompt wraps the model (adapters + head train); peft=none leaves it as built.
    bundle = apply_peft(bundle, cfg.get("peft"))
    model_limit = getattr(bundle.tokenizer, "model_max_length", None)
    if model_limit and model_limit < 1_000_000 and cfg.data.max_length > model_limit:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds what {bundle.source} accepts ({model_limit} tokens)"
        )
    datamodule = instantiate(
        cfg.data, tokenizer=bundle.tokenizer, global_attention_first_token=bundle.global_attention_first_token
    )
    module = instantiate(cfg.strategy, model=bundle.model, label_names=label_names, seed=cfg.seed)
    lap("build")

    datamodule.setup("fit")
    lap("data")

    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_group(cfg.get("callbacks")),
        logger=_instantiate_group(cfg.get("logger")) or False,
        default_root_dir=str(output_dir),
    )
    failed = True
    try:
        metrics = _fit_evaluate_write(
            cfg, trainer, bundle, datamodule, module, label_names, output_dir, timings, lap, started_at, manifest_extra
        )
        failed = False
    finally:
        # One W&B run per job: a multirun's next job in this process must not attach to this job's run.
        finish_loggers(trainer.loggers, failed=failed)
    return metrics


def _adopt_csv_header(logger) -> None:
    """After a spawning strategy, this process's CSV logger never saw the columns its worker copy wrote: adopt the
    file's header so the final metrics row is appended to (not clashing with) the training rows."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    if not isinstance(logger, CSVLogger):
        return
    path = Path(logger.experiment.metrics_file_path)
    if not path.is_file():
        return
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), [])
    known = logger.experiment.metrics_keys
    logger.experiment.metrics_keys = header + [key for key in known if key not in header]


def _last_checkpoint(checkpoint) -> str | None:
    """``last.ckpt``'s path; spawned workers do not hand ``last_model_path`` back, so fall back to the file itself."""
    if checkpoint is None:
        return None
    if getattr(checkpoint, "last_model_path", None):
        return checkpoint.last_model_path
    if getattr(checkpoint, "save_last", False) and checkpoint.dirpath:
        path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
        return str(path) if path.is_file() else None
    return None


def _validated(trainer) -> bool:
    """Whether a validation ran during fit (its metrics reach ``callback_metrics``, also from spawned workers)."""
    return any(key.startswith("val/") for key in trainer.callback_metrics)


def _is_sharded(trainer) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


def _predict_splits(
    trainer, module, datamodule, splits: list[str], output_dir: Path, ckpt_path: str | None = None
) -> dict[str, dict]:
    """Score ``splits`` with the model in ``module``: every example exactly once, whatever the strategy.

    Examples are sharded across ranks and gathered (:mod:`agnews.distributed`); one ``trainer.predict`` call covers all
    splits (spawning strategies start their worker processes once).
    """
    from torch.utils.data import DataLoader

    loaders = [
        DataLoader(
            datamodule.datasets[split],
            batch_sampler=ShardedEvalBatchSampler(datamodule.datasets[split].lengths, datamodule.eval_batch_size),
            collate_fn=datamodule.collator,
            num_workers=datamodule.num_workers,
        )
        for split in splits
    ]
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    # Spawned workers cannot return predictions to this process: rank 0 hands them over in a file instead.
    spawns = isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)
    gatherer = GatherPredictions(spill_path=output_dir / ".predictions.pt" if spawns else None)
    trainer.callbacks.append(gatherer)
    # Scoring covers every example: fast_dev_run (trainer=debug) and limit_predict_batches would otherwise cut it short.
    # Set on this trainer (not a second one) so spawning/sharded strategies keep their launched, wrapped model.
    limit = trainer.limit_predict_batches
    trainer.limit_predict_batches = 1.0
    try:
        trainer.predict(module, dataloaders=loaders, return_predictions=False, ckpt_path=ckpt_path)
    finally:
        trainer.callbacks.remove(gatherer)
        trainer.limit_predict_batches = limit
    results = collect(gatherer)
    for split, result in zip(splits, results, strict=True):
        expected = len(datamodule.datasets[split])
        if result["index"].tolist() != list(range(expected)):
            raise RuntimeError(f"prediction on {split} covered {len(result['index'])} of {expected} examples")
    return dict(zip(splits, results))


def _fit_evaluate_write(
    cfg, trainer, bundle, datamodule, module, label_names, output_dir, timings, lap, started_at: str,
    manifest_extra: Callable[[dict], dict] | None = None,
) -> dict:
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / runs.CONFIG_FILE, resolve=True)
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.callbacks.append(FitProgress())
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # Under spawning strategies this process's trainer never ran the loop: FitProgress sends the counters back.
    global_step, epochs = FitProgress.read(trainer)
    if not _validated(trainer) and trainer.limit_val_batches != 0:
        # Stopped (max_steps, limit_train_batches, val_check_interval) before any validation: validate the final
        # weights once so the run logs its val metrics like any other; scoring below then uses these weights.
        trainer.validate(module, datamodule=datamodule, verbose=False)
    lap("fit")

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    # FSDP leaves the module's layers wrapped and sharded: Lightning loads the checkpoint for prediction, and the export
    # reads the full state dict (state_dict_type: full) into a fresh, unwrapped model.
    sharded = _is_sharded(trainer)
    weights_path = best_path
    if sharded and not best_path and cfg.scoring.export_model:
        # No best checkpoint (stopped before a validation saved one): the export below rebuilds an unwrapped model and
        # needs the final weights as one full state dict, which only a checkpoint of the sharded trainer provides.
        weights_path = str(output_dir / "checkpoints" / "final.ckpt")
        trainer.save_checkpoint(weights_path)
    if best_path and not sharded:
        # Evaluate and export the best checkpoint, not whatever the last step left in memory.
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    metrics: dict = {"best_checkpoint": best_path, "monitor": checkpoint.monitor if checkpoint else None}
    from agnews.evaluation.metrics import classification_report

    splits = list(cfg.scoring.splits)
    predictions = (
        _predict_splits(trainer, module, datamodule, splits, output_dir, ckpt_path=best_path if sharded else None)
        if splits
        else {}
    )
    for split, result in predictions.items():
        probs, labels = result["probs"], result["labels"]
        metrics[split] = classification_report(probs, labels, label_names)
        if trainer.is_global_zero:
            runs.write_predictions(
                runs.predictions_path(output_dir, split),
                datamodule.splits[split].ids,
                labels,
                probs,
                label_names,
            )
        log.info("%s accuracy %.4f, macro-F1 %.4f", split, metrics[split]["accuracy"], metrics[split]["f1_macro"])
    lap("evaluate")

    if trainer.is_global_zero:
        for logger in trainer.loggers:
            _adopt_csv_header(logger)
            logger.log_metrics(
                {f"{split}/{key}": metrics[split][key] for split in cfg.scoring.splits for key in ("accuracy", "f1_macro")},
                step=global_step,
            )
            logger.save()
        model_dir = None
        if cfg.scoring.export_model:
            if sharded:
                bundle = apply_peft(instantiate(cfg.model, label_names=label_names), cfg.get("peft"))
                if weights_path:
                    state = torch.load(weights_path, map_location="cpu", weights_only=True)["state_dict"]
                    bundle.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
            # LoRA/IA3 are merged into plain weights (no PEFT needed to serve); prefix/prompt export the adapter.
            bundle = export_bundle(bundle)
            model_dir = artifacts.export_model(bundle, output_dir, cfg.data.max_length)
        lap("export")
        for logger in wandb_loggers(trainer.loggers):
            log_evaluation(
                logger,
                metrics,
                label_names,
                {s: (r["labels"].tolist(), r["probs"].argmax(dim=-1).tolist()) for s, r in predictions.items()},
                model_dir=model_dir,
                # reliability diagrams and the most confident mistakes (with their texts) per split
                probs={s: r["probs"].float().numpy() for s, r in predictions.items()},
                texts={s: datamodule.splits[s].texts for s in predictions},
                ids={s: datamodule.splits[s].ids for s in predictions},
            )
        runs.write_json(output_dir / runs.METRICS_FILE, metrics)
        extra = manifest_extra(metrics) if manifest_extra is not None else {}
        # The manifest goes last: its presence is what marks the run as finished (agnews.runs.load_run).
        runs.write_json(
            output_dir / runs.MANIFEST_FILE,
            {
                "task": cfg.get("task_name", "train"),
                "model": bundle.describe(),
                "data": {
                    "source": cfg.data.source,
                    "sizes": {name: len(split) for name, split in datamodule.splits.items()},
                    "bad_rows": {name: len(rows) for name, rows in datamodule.bad_rows.items()},
                    # What the data module did beyond splitting (pseudo-labels, curriculum), if it reports it.
                    **(getattr(datamodule, "report", None) or {}),
                },
                "artifacts": {
                    "config": runs.CONFIG_FILE,
                    "metrics": runs.METRICS_FILE,
                    "model": runs.MODEL_DIR if cfg.scoring.export_model else None,
                    "predictions": {
                        s: runs.predictions_path(".", s).as_posix() for s in cfg.scoring.splits
                    },
                    "best_checkpoint": best_path,
                    "last_checkpoint": _last_checkpoint(checkpoint),
                },
                "global_step": global_step,
                "epochs": epochs,
                "timings_s": timings,
                # Wall-clock bounds of the job (UTC): shows which jobs of a parallel multirun overlapped.
                "started_at": started_at,
                "finished_at": datetime.now(timezone.utc).isoformat(),
                "environment": artifacts.environment(),
                **extra,
            },
        )
    return metrics
