"""One readable path from config to artifacts: build, fit, evaluate the best checkpoint, write the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from agnews import artifacts
from agnews.errors import ConfigError

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


def train(cfg: DictConfig) -> dict:
    """Run one training job; returns the metrics dictionary written to ``metrics.json``."""
    import lightning as L

    # Lightning installs its own console handler; under Hydra (which configures the root logger: console + run log
    # file) that prints every Lightning message twice. Let its records flow to the root handlers only.
    logging.getLogger("lightning.pytorch").handlers.clear()

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    L.seed_everything(cfg.seed, workers=True)

    label_names = list(cfg.data.label_names)
    bundle = instantiate(cfg.model, label_names=label_names)
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
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    lap("fit")

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if best_path:
        # Evaluate and export the best checkpoint, not whatever the last step left in memory.
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    metrics: dict = {"best_checkpoint": best_path, "monitor": checkpoint.monitor if checkpoint else None}
    for split in cfg.evaluate.splits:
        outputs = trainer.predict(module, dataloaders=datamodule.eval_dataloader(split))
        index = torch.cat([o["index"] for o in outputs])
        order = torch.argsort(index)  # eval batches are length-sorted: restore split order
        probs = torch.cat([o["probs"] for o in outputs])[order]
        labels = torch.cat([o["labels"] for o in outputs])[order]
        from agnews.evaluation.metrics import classification_report

        metrics[split] = classification_report(probs, labels, label_names)
        if trainer.is_global_zero:
            artifacts.write_predictions(
                output_dir / artifacts.PREDICTIONS_DIR / f"{split}.csv",
                datamodule.splits[split].ids,
                labels,
                probs,
                label_names,
            )
        log.info("%s accuracy %.4f, macro-F1 %.4f", split, metrics[split]["accuracy"], metrics[split]["f1_macro"])
    lap("evaluate")

    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"{split}/final_{key}": metrics[split][key] for split in cfg.evaluate.splits for key in ("accuracy", "f1_macro")},
                step=trainer.global_step,
            )
            logger.save()
        if cfg.evaluate.export_model:
            artifacts.export_model(bundle, output_dir, cfg.data.max_length)
        lap("export")
        artifacts.write_json(output_dir / artifacts.METRICS_FILE, metrics)
        artifacts.write_json(
            output_dir / artifacts.MANIFEST_FILE,
            {
                "task": cfg.get("task_name", "train"),
                "model": bundle.describe(),
                "data": {
                    "source": cfg.data.source,
                    "sizes": {name: len(split) for name, split in datamodule.splits.items()},
                    "bad_rows": {name: len(rows) for name, rows in datamodule.bad_rows.items()},
                },
                "artifacts": {
                    "config": "config.yaml",
                    "metrics": artifacts.METRICS_FILE,
                    "model": artifacts.MODEL_DIR if cfg.evaluate.export_model else None,
                    "predictions": {s: f"{artifacts.PREDICTIONS_DIR}/{s}.csv" for s in cfg.evaluate.splits},
                    "best_checkpoint": best_path,
                    "last_checkpoint": getattr(checkpoint, "last_model_path", None) or None,
                },
                "global_step": trainer.global_step,
                "epochs": trainer.current_epoch,
                "timings_s": timings,
                "environment": artifacts.environment(),
            },
        )
    return metrics
