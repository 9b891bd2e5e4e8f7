"""Snapshot ensembles (Huang et al., 2017): one run with a cyclic learning rate yields several ensemble members.

The cosine-with-hard-restarts schedule (``strategy.scheduler._target_=agnews.strategies.optim.cosine_with_restarts``)
anneals the learning rate to ~0 ``num_cycles`` times; the weights at the end of each cycle are a snapshot. This callback
exports each snapshot as its model folder the moment its cycle ends, and at the end of fit makes every snapshot a
finished run directory ``<run>/snapshots/<k>/`` (``model/``, ``predictions/<split>.csv`` scored by the
:class:`~agnews.inference.Predictor` from that exported model, ``metrics.json``, ``config.yaml``, ``run.json``), so the
snapshots plug into ``python -m agnews.ensemble members=[<run>/snapshots/0,<run>/snapshots/1,...]``.

The cycle ends are computed as transformers' schedule places its restarts (warm-up ``round(warmup_ratio * total)``
steps, then ``num_cycles`` equal cycles over the remaining optimizer steps) and checked against the optimizer's actual
schedule when training starts: a schedule that does not restart there is refused. Only rank 0 writes and scores.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Sequence

from lightning.pytorch.callbacks import Callback

from agnews.errors import ConfigError

log = logging.getLogger(__name__)

SNAPSHOTS_DIR = "snapshots"


def cycle_ends(total_steps: int, num_cycles: int, warmup_steps: int = 0) -> list[int]:
    """The optimizer step counts after which each cycle but the last ends (the last ends with training): the first
    steps whose cosine-with-hard-restarts position ``floor(num_cycles * progress)`` reaches ``k`` (k = 1..n-1)."""
    span = max(1, total_steps - warmup_steps)
    ends = []
    for k in range(1, num_cycles):
        # Same float arithmetic as transformers' lr lambda: step s is in cycle floor(n * (s - w) / span).
        step = warmup_steps + math.ceil(k * span / num_cycles) - 1
        while int(float(num_cycles) * (float(step - warmup_steps) / float(span))) < k:
            step += 1
        ends.append(step)
    return ends


class SnapshotEnsemble(Callback):
    """Export the weights at the end of every learning-rate cycle as a finished run directory (an ensemble member).

    ``num_cycles``/``warmup_ratio`` must be the schedule's (the YAML interpolates ``strategy.scheduler``); ``splits``
    are scored for every snapshot (``val`` is required by ``agnews.ensemble``); ``family``/``source``/``model_info`` go
    into each snapshot's ``model/agnews_model.json``; ``max_length`` is the data module's.
    """

    def __init__(
        self,
        num_cycles: int,
        max_length: int,
        warmup_ratio: float = 0.0,
        splits: Sequence[str] = ("val", "test"),
        family: str = "unknown",
        source: str | None = None,
        model_info: dict | None = None,
        batch_size: int = 64,
        dirname: str = SNAPSHOTS_DIR,
    ):
        if isinstance(num_cycles, bool) or not isinstance(num_cycles, int) or num_cycles < 2:
            raise ConfigError(
                f"callbacks.snapshot_ensemble.num_cycles must be an integer >= 2 (an ensemble needs 2 members), got "
                f"{num_cycles!r} (select the cyclic schedule: +strategy/scheduler=cosine_restarts)"
            )
        if not 0 <= warmup_ratio < 1:
            raise ConfigError(f"callbacks.snapshot_ensemble.warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        splits = list(splits)
        if "val" not in splits:
            raise ConfigError(
                f"callbacks.snapshot_ensemble.splits must include val (ensembles fit their combiner on it), got "
                f"{splits}"
            )
        self.num_cycles = num_cycles
        self.warmup_ratio = float(warmup_ratio)
        self.splits = splits
        self.max_length = int(max_length)
        self.family = family
        self.source = source
        self.model_info = dict(model_info or {})
        self.batch_size = batch_size
        self.dirname = dirname
        self.ends: list[int] = []
        self.saved: dict[int, dict] = {}  # snapshot -> {"step", "epoch", "dir", "complete"}

    # ---- checks --------------------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        from transformers import PreTrainedModel

        if stage != "fit":
            return
        if not isinstance(pl_module.model, PreTrainedModel):
            raise ConfigError(
                "callbacks=snapshot_ensemble exports plain transformers classifiers; this run trains a "
                f"{type(pl_module.model).__name__} (use peft=none and no model.long_input)"
            )
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise ConfigError("callbacks=snapshot_ensemble does not support sharded strategies (trainer=fsdp)")

    def on_train_start(self, trainer, pl_module) -> None:
        total = int(trainer.estimated_stepping_batches)
        warmup = int(round(self.warmup_ratio * total))
        if total < self.num_cycles:
            raise ConfigError(
                f"{self.num_cycles} snapshot cycles need at least as many optimizer steps; this run has {total}"
            )
        self.ends = cycle_ends(total, self.num_cycles, warmup)
        self._check_schedule(trainer, self.ends)
        self._check_earlier_snapshots(trainer)
        log.info("Snapshot ensemble: %d cycles over %d steps, snapshots after steps %s and at the end", self.num_cycles,
                 total, self.ends)

    def _check_schedule(self, trainer, ends: list[int]) -> None:
        """The optimizer's schedule must restart right after each cycle end (a linear schedule would yield snapshots
        that are just points along one run)."""
        from torch.optim.lr_scheduler import LambdaLR

        configs = trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        hint = (
            "callbacks=snapshot_ensemble needs the cyclic schedule: +strategy/scheduler=cosine_restarts (with the same "
            "num_cycles and warmup_ratio)"
        )
        if not isinstance(scheduler, LambdaLR) or configs[0].interval != "step":
            raise ConfigError(f"{hint}; this run's scheduler is {type(scheduler).__name__ if scheduler else 'none'}")
        factor = scheduler.lr_lambdas[0]
        wrong = [end for end in ends if not (factor(end) > 0.99 and factor(end) > 2 * factor(end - 1))]
        if wrong:
            raise ConfigError(f"{hint}; its learning rate does not restart after steps {wrong}")

    def _check_earlier_snapshots(self, trainer) -> None:
        """A run resumed into a new directory brings the snapshots exported before the interruption along at the end:
        they must still exist, which is checked now rather than after the training is done."""
        from agnews import runs

        for index, info in sorted(self.saved.items()):
            source = Path(info["dir"]) / runs.MODEL_DIR
            if trainer.is_global_zero and not (source / runs.MODEL_INFO_FILE).is_file():
                raise ConfigError(
                    f"snapshot {index} was exported to {info['dir']} before this resumed run's checkpoint, but its "
                    f"model is gone; restore that folder or resume from a checkpoint before step {info['step']}"
                )

    # ---- snapshots -----------------------------------------------------------------------------------------------
    def _root(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.dirname

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step in self.ends:
            index = self.ends.index(step)
            if index not in self.saved:
                self._export_model(trainer, pl_module, index, complete=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        last = self.num_cycles - 1
        if last not in self.saved:
            total = int(trainer.estimated_stepping_batches)
            complete = trainer.global_step >= total
            if not complete:
                log.warning("Training stopped at step %d of %d: the last snapshot is the weights then, mid-cycle",
                            trainer.global_step, total)
            self._export_model(trainer, pl_module, last, complete=complete)
        if trainer.is_global_zero:
            for index in sorted(self.saved):
                self._finish_run(trainer, index)

    def _export_model(self, trainer, pl_module, index: int, complete: bool) -> None:
        from agnews import artifacts
        from agnews.models.factory import ClassifierBundle

        target = self._root(trainer) / str(index)
        self.saved[index] = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                             "dir": str(target), "complete": complete}
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        bundle = ClassifierBundle(
            model=pl_module.model,
            tokenizer=datamodule.tokenizer,
            family=self.family,
            source=str(self.source),
            label_names=list(pl_module.label_names),
            global_attention_first_token=bool(datamodule.collator.global_attention_first_token),
            extra=self.model_info,
        )
        if target.exists():
            shutil.rmtree(target)  # a stale folder from an earlier attempt at this snapshot
        artifacts.export_model(bundle, target, self.max_length, extra={"snapshot": index})
        log.info("Snapshot %d (step %d) exported to %s", index, trainer.global_step, target)

    def _finish_run(self, trainer, index: int) -> None:
        """Score the exported snapshot on ``splits`` and write the rest of a run directory; run.json last."""
        import torch

        from agnews import artifacts, runs
        from agnews.evaluation.metrics import classification_report
        from agnews.inference import Predictor

        info = self.saved[index]
        target = self._root(trainer) / str(index)
        if Path(info["dir"]).resolve() != target.resolve():
            # A resumed run (new run directory): bring the snapshots exported before the interruption along.
            if not (Path(info["dir"]) / runs.MODEL_DIR).is_dir():
                raise ConfigError(f"snapshot {index} was exported to {info['dir']} before the resume, but it is gone")
            shutil.copytree(Path(info["dir"]) / runs.MODEL_DIR, target / runs.MODEL_DIR, dirs_exist_ok=True)
        datamodule = trainer.datamodule
        device = "cuda" if trainer.strategy.root_device.type == "cuda" else "cpu"
        predictor = Predictor.from_path(target / runs.MODEL_DIR, device=device, batch_size=self.batch_size)
        metrics: dict = {"snapshot": index, **info}
        for split in self.splits:
            data = datamodule.splits[split]
            probs = torch.from_numpy(predictor.predict_proba(data.texts)).float()
            labels = torch.tensor(data.labels, dtype=torch.long)
            runs.write_predictions(runs.predictions_path(target, split), data.ids, labels, probs, predictor.label_names)
            metrics[split] = classification_report(probs, labels, predictor.label_names)
        log.info("Snapshot %d: val accuracy %.4f", index, metrics["val"]["accuracy"])
        parent = Path(trainer.default_root_dir)
        if (parent / runs.CONFIG_FILE).is_file():
            shutil.copyfile(parent / runs.CONFIG_FILE, target / runs.CONFIG_FILE)
        runs.write_json(target / runs.METRICS_FILE, metrics)
        runs.write_json(
            target / runs.MANIFEST_FILE,
            {
                "task": "snapshot",
                "snapshot": {"index": index, "of": self.num_cycles, "run": str(parent), **info},
                "model": runs.read_json(target / runs.MODEL_DIR / runs.MODEL_INFO_FILE),
                "data": {"sizes": {name: len(split) for name, split in datamodule.splits.items()}},
                "artifacts": {
                    "config": runs.CONFIG_FILE if (target / runs.CONFIG_FILE).is_file() else None,
                    "metrics": runs.METRICS_FILE,
                    "model": runs.MODEL_DIR,
                    "predictions": {s: runs.predictions_path(".", s).as_posix() for s in self.splits},
                },
                "global_step": info["step"],
                "environment": artifacts.environment(),
            },
        )

    # ---- resume --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"saved": {str(k): dict(v) for k, v in self.saved.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.saved = {int(k): dict(v) for k, v in state.get("saved", {}).items()}
