"""One masked-LM job from config to run directory: build, validate, fit, validate, export the adapted encoder."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agnews import artifacts, runs
from agnews.errors import ConfigError
from agnews.pipeline import _instantiate_group

log = logging.getLogger(__name__)

TASK = "pretrain"
# Callbacks a masked-LM run keeps: they only watch the loop. The default group's classifier callbacks (checkpointing
# and early stopping on val/accuracy) have nothing to watch here and are dropped; any other callback (swa,
# gradual_unfreezing, snapshot_ensemble, ...) acts on a classifier and is refused rather than run on the encoder.
PRETRAIN_CALLBACKS = ("lr_monitor", "progress_bar", "progress_log")
DROPPED_CALLBACKS = ("model_checkpoint", "early_stopping")


def _callbacks(group: DictConfig | None) -> list:
    if not group:
        return []
    known = (*PRETRAIN_CALLBACKS, *DROPPED_CALLBACKS)
    refused = sorted(name for name, node in group.items() if node is not None and name not in known)
    if refused:
        raise ConfigError(
            f"callbacks {refused}: a masked-LM pre-training run keeps only {list(PRETRAIN_CALLBACKS)} (the others act "
            "on a classifier). With stages=[...], the command's overrides reach every stage: put the callback in the "
            "train stage's own overrides, e.g. \"stages=[mlm,{name:full,overrides:['callbacks=swa']}]\""
        )
    return _instantiate_group(DictConfig({k: v for k, v in group.items() if k in PRETRAIN_CALLBACKS}))


def _validate(trainer, module, datamodule) -> float:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return float(results[0]["val/mlm_loss"])


def pretrain(cfg: DictConfig) -> dict:
    """Run one masked-LM job; returns the metrics written to the run's ``metrics.json``."""
    import lightning as L

    if cfg.get("stages"):
        raise ConfigError("stages=[...] chains runs from python -m agnews.train (an mlm stage runs this job); "
                          "python -m agnews.pretrain runs one pre-training job")
    if cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path: a pre-training run keeps no Lightning checkpoints to resume from; start it again "
            "(trainer.max_steps bounds its cost)"
        )
    callbacks = _callbacks(cfg.get("callbacks"))  # before any work: a refused callback fails at once
    timer = artifacts.PhaseTimer()
    timings, lap, started_at = timer.timings, timer.lap, timer.started_at
    output_dir = artifacts.prepare_job(cfg)

    bundle = instantiate(cfg.model)
    model_limit = getattr(bundle.tokenizer, "model_max_length", None)
    if model_limit and model_limit < 1_000_000 and cfg.data.max_length > model_limit:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds what {bundle.source} accepts ({model_limit} tokens)"
        )
    options = cfg.pretrain
    datamodule = instantiate(
        options.data,
        tokenizer=bundle.tokenizer,
        # The data group's plain settings (source, folder, sizes, lengths); its sub-configs (augmentation,
        # curriculum, pseudo-labels) shape classifier batches and do not apply to masked-LM text.
        data={
            k: v
            for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
            if not k.startswith("_") and not isinstance(v, dict)
        },
        seed=cfg.seed,
    )
    module = instantiate(options.module, model=bundle.model)
    lap("build")
    datamodule.setup("fit")
    lap("data")

    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=_instantiate_group(cfg.get("logger")) or False,
        default_root_dir=str(output_dir),
        enable_checkpointing=False,
    )
    OmegaConf.save(cfg, output_dir / runs.CONFIG_FILE, resolve=True)
    before = _validate(trainer, module, datamodule)
    log.info("val/mlm_loss before pre-training: %.4f", before)
    trainer.fit(module, datamodule=datamodule)
    train_loss = trainer.callback_metrics.get("train/mlm_loss")
    after = _validate(trainer, module, datamodule)
    log.info("val/mlm_loss after %d steps: %.4f (was %.4f)", trainer.global_step, after, before)
    lap("fit")

    metrics = {
        "val": {
            "mlm_loss": after,
            "mlm_loss_before": before,
            "perplexity": math.exp(min(after, 50.0)),
            "perplexity_before": math.exp(min(before, 50.0)),
            "num_texts": len(datamodule.splits["val"]),
        },
        "train": {
            "mlm_loss_last_step": float(train_loss) if train_loss is not None else None,
            "num_texts": len(datamodule.splits["train"]),
        },
    }
    if trainer.is_global_zero:
        from agnews.pretraining.model import export_masked_lm

        module.model.eval()
        export_masked_lm(bundle, output_dir / runs.MODEL_DIR)
        lap("export")
        runs.write_json(output_dir / runs.METRICS_FILE, metrics)
        # Last: its presence marks the run finished (agnews.runs.load_run); model.pretrained=<this run> reads model/.
        runs.write_json(
            output_dir / runs.MANIFEST_FILE,
            {
                "task": TASK,
                "model": bundle.describe(),
                "data": datamodule.report,
                "artifacts": {"config": runs.CONFIG_FILE, "metrics": runs.METRICS_FILE, "model": runs.MODEL_DIR},
                "global_step": trainer.global_step,
                "epochs": trainer.current_epoch,
                "timings_s": timings,
                "started_at": started_at,
                "finished_at": datetime.now(timezone.utc).isoformat(),
                "environment": artifacts.environment(),
            },
        )
    return metrics
