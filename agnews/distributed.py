"""Multi-process evaluation and FSDP wrapping: one complete, duplicate-free prediction set whatever the strategy.

The final val/test prediction in :mod:`agnews.pipeline` shards examples across ranks (every example is scored by exactly
one rank, padded so all ranks run the same number of batches, which FSDP's collective forward needs), gathers the
per-rank outputs with ``all_gather_object`` and removes the padding duplicates by example index.

Strategies that spawn (``ddp_spawn``, ``trainer=ddp_cpu``) cannot return predictions from ``trainer.predict``: rank 0
then spills the gathered result to a file that the launching process reads back (:func:`collect`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Sampler


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedEvalBatchSampler(Sampler[list[int]]):
    """Length-sorted evaluation batches, sharded across ranks when a process group is up.

    The rank is read when the sampler is iterated, not when it is built: under ``ddp_spawn`` the data loader is built in
    the launching process and pickled to the workers. Each rank takes every ``world``-th example of the length-sorted
    order (the order is padded by repeating its first examples so every rank gets the same count and batch count).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.order = np.argsort(-np.asarray(lengths), kind="stable")
        self.batch_size = batch_size

    def _shard(self) -> np.ndarray:
        rank, world = _rank_and_world()
        if world == 1:
            return self.order
        total = math.ceil(len(self.order) / world) * world
        padded = np.concatenate([self.order, self.order[: total - len(self.order)]])
        return padded[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        shard = self._shard()
        return iter([shard[i : i + self.batch_size].tolist() for i in range(0, len(shard), self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(len(self._shard()) / self.batch_size)


class GatherPredictions(Callback):
    """Collects ``predict_step`` outputs per data loader and gathers them across ranks at the end of prediction.

    After ``trainer.predict`` every rank holds ``result[dataloader_idx] = {"index", "labels", "probs"}`` covering each
    example exactly once, in index order. With ``spill_path`` set, rank 0 also saves the result there (spawned workers
    cannot hand it back to the launching process otherwise).
    """

    def __init__(self, spill_path: str | Path | None = None):
        self.spill_path = str(spill_path) if spill_path else None
        self.result: list[dict] | None = None
        self._outputs: dict[int, list[dict]] = {}

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = {}
        self.result = None

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._outputs.setdefault(dataloader_idx, []).append({k: v.detach().cpu() for k, v in outputs.items()})

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        count = len(trainer.num_predict_batches)
        local = [_concat(self._outputs.get(i, [])) for i in range(count)]
        rank, world = _rank_and_world()
        if world > 1:
            gathered: list = [None] * world
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        self.result = [_merge([per_rank[i] for per_rank in gathered]) for i in range(count)]
        if self.spill_path and rank == 0:
            Path(self.spill_path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.result, self.spill_path)
        self._outputs = {}


class FitProgress(Callback):
    """Carries ``global_step`` and the epoch count out of ``trainer.fit``, also from spawned workers.

    Spawning strategies run the loop in worker processes; the launching process's trainer keeps step 0. Lightning sends
    ``callback_metrics`` back to it, so the counters travel there (as ``fit/global_step``, ``fit/epochs``).
    """

    STEP, EPOCHS = "fit/global_step", "fit/epochs"

    def on_fit_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics[self.STEP] = torch.tensor(trainer.global_step)
        trainer.callback_metrics[self.EPOCHS] = torch.tensor(trainer.current_epoch)

    @classmethod
    def read(cls, trainer) -> tuple[int, int]:
        metrics = trainer.callback_metrics
        step = int(metrics[cls.STEP]) if cls.STEP in metrics else trainer.global_step
        epochs = int(metrics[cls.EPOCHS]) if cls.EPOCHS in metrics else trainer.current_epoch
        return step, epochs


def _concat(outputs: list[dict]) -> dict:
    if not outputs:
        return {"index": torch.empty(0, dtype=torch.long), "labels": torch.empty(0, dtype=torch.long), "probs": None}
    return {key: torch.cat([o[key] for o in outputs]) for key in ("index", "labels", "probs")}


def _merge(parts: list[dict]) -> dict:
    """Concatenate per-rank outputs, keep the first copy of each example index, sort by index."""
    parts = [p for p in parts if p["probs"] is not None]
    index = torch.cat([p["index"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    probs = torch.cat([p["probs"] for p in parts])
    order = torch.argsort(index, stable=True)
    index, labels, probs = index[order], labels[order], probs[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return {"index": index[keep], "labels": labels[keep], "probs": probs[keep]}


def collect(gatherer: GatherPredictions) -> list[dict]:
    """The gathered result in this process: held by the callback, or read back from the spill file (spawn)."""
    if gatherer.result is not None:
        return gatherer.result
    if gatherer.spill_path and Path(gatherer.spill_path).is_file():
        result = torch.load(gatherer.spill_path, weights_only=True)
        Path(gatherer.spill_path).unlink()
        return result
    raise RuntimeError("prediction produced no gathered result (was trainer.predict run with GatherPredictions?)")


# ---- FSDP --------------------------------------------------------------------------------------------------------
# The repeated transformer block of every encoder the model factory builds. Wrapping each one in its own FSDP unit
# keeps peak memory at one layer's full parameters; embeddings and the classifier head stay in the root unit.
ENCODER_LAYER_CLASSES = frozenset(
    {
        "BertLayer",
        "RobertaLayer",
        "XLMRobertaLayer",
        "ElectraLayer",
        "DebertaLayer",
        "DebertaV2Layer",
        "LongformerLayer",
        "XLNetLayer",
        "MPNetLayer",
        "AlbertLayer",
    }
)


def is_encoder_layer(module: torch.nn.Module, layer_classes: frozenset[str] = ENCODER_LAYER_CLASSES) -> bool:
    return type(module).__name__ in layer_classes


def encoder_layer_wrap_policy(extra_layer_classes: list[str] | None = None):
    """An FSDP ``auto_wrap_policy`` (picklable) wrapping each Hugging Face encoder layer in its own unit."""
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    classes = ENCODER_LAYER_CLASSES | frozenset(extra_layer_classes or [])
    return functools.partial(lambda_auto_wrap_policy, lambda_fn=functools.partial(is_encoder_layer, layer_classes=classes))
