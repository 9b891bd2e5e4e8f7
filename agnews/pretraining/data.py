"""Masked-LM data: the training split's texts only, masked on the fly (15 %, seeded); a fixed, pre-masked held-out set.

The texts are the training rows a classifier run with the same ``data`` config trains on *plus* its unlabelled rest:
every row of ``train.csv`` (or the hub's train split) outside that run's validation split (``data.val_size``, same
seed), so model selection of a later fine-tuning run stays on texts no stage has seen. ``data.train_size`` (the
labelled subset) is ignored: pre-training on unlabelled text is the point. The test split's texts are never used; from a
CSV folder ``test.csv`` is not even opened, while the hub loader loads the dataset whole (the manifest's
``test_split_read`` says which happened).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from agnews.data.batching import LengthGroupedBatchSampler, SortedEvalBatchSampler
from agnews.data.sources import DATA_DIR_ENV, Split, load_hub, read_ag_news_csv, resolve_source
from agnews.data.splits import _count, stratified_take
from agnews.data.tokenization import tokenize_texts
from agnews.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def load_train_split(source: str, data_dir: str | None, num_labels: int, on_bad_rows: str = "fail",
                     hub_dataset: str = "fancyzhx/ag_news", hub_revision: str | None = None) -> Split:
    """The ``train`` split alone (for a CSV folder, ``test.csv`` is not opened; the hub loads both splits)."""
    if resolve_source(source, data_dir) == "csv":
        folder = data_dir or os.environ.get(DATA_DIR_ENV)
        if not folder:
            raise DataError(f"data.source=csv needs data.data_dir or the {DATA_DIR_ENV} environment variable")
        return read_ag_news_csv(Path(folder).expanduser() / "train.csv", "train", num_labels, on_bad_rows)
    return load_hub(hub_dataset, hub_revision)["train"]


def pretraining_texts(train: Split, val_size, max_texts, mlm_val_size, seed: int) -> tuple[Split, Split]:
    """(fit, held out): the train rows outside the classifier's validation split, optionally capped at
    ``max_texts`` (a seeded random subset), minus ``mlm_val_size`` rows held out for ``val/mlm_loss``."""
    _, pool = stratified_take(train, val_size, seed, "data.val_size")
    if pool is None:
        raise ConfigError(f"data.val_size={val_size} takes every training row; no text is left to pre-train on")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    cap = _count(max_texts, len(pool), "pretrain.data.max_texts")
    if cap is not None:
        order = order[: min(cap, len(pool))]
    held = _count(mlm_val_size, len(order), "pretrain.data.val_texts")
    if held is None or held >= len(order):
        raise ConfigError(
            f"pretrain.data.val_texts={mlm_val_size} leaves no text to train on ({len(order)} texts in the pool)"
        )
    return pool.subset(sorted(order[held:]), "train"), pool.subset(sorted(order[:held]), "mlm_val")


class TokenIds(Dataset):
    def __init__(self, tokenized):
        self.tokenized = tokenized

    def __len__(self) -> int:
        return len(self.tokenized)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.tokenized[index].tolist()}

    @property
    def lengths(self) -> np.ndarray:
        return self.tokenized.lengths


class MaskedLMDataModule(L.LightningDataModule):
    """Training batches: length-grouped, masked afresh each time (DataCollatorForLanguageModeling, seeded).
    Validation batches are masked once at setup, so ``val/mlm_loss`` before and after training compares like for like."""

    def __init__(self, tokenizer, data: dict, mlm_probability: float, max_texts, val_texts, seed: int,
                 cache_dir: str | None = None):
        super().__init__()
        if not 0.0 < float(mlm_probability) < 1.0:
            raise ConfigError(f"pretrain.data.mlm_probability must lie in (0, 1), got {mlm_probability!r}")
        self.tokenizer = tokenizer
        self.data = data
        self.mlm_probability = float(mlm_probability)
        self.max_texts = max_texts
        self.val_texts = val_texts
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self.splits: dict[str, Split] = {}
        self.bad_rows = 0
        self.test_split_read = False  # set by setup: only a CSV folder's train split can be read alone
        self._val_batches: list[dict] | None = None

    def _collator(self, seed: int):
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(
            self.tokenizer, mlm_probability=self.mlm_probability, seed=seed,
            pad_to_multiple_of=self.data.get("pad_to_multiple_of"),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.data
        train = load_train_split(data["source"], data.get("data_dir"), len(data["label_names"]),
                                 data.get("on_bad_rows", "fail"), data.get("hub_dataset", "fancyzhx/ag_news"),
                                 data.get("hub_revision"))
        self.bad_rows = len(train.bad_rows)
        self.test_split_read = resolve_source(data["source"], data.get("data_dir")) != "csv"
        fit, held = pretraining_texts(train, data["val_size"], self.max_texts, self.val_texts, self.seed)
        self.splits = {"train": fit, "val": held}
        cache = Path(self.cache_dir) if self.cache_dir else None
        self.datasets = {
            name: TokenIds(tokenize_texts(self.tokenizer, split.texts, int(data["max_length"]), cache))
            for name, split in self.splits.items()
        }
        log.info("Masked-LM texts: %d to train on, %d held out", len(fit), len(held))

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        trainer = getattr(self, "trainer", None)
        sampler = LengthGroupedBatchSampler(
            dataset.lengths, int(self.data["batch_size"]), seed=self.seed,
            group_by_length=bool(self.data.get("group_by_length", True)),
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self._collator(self.seed),
                          num_workers=int(self.data.get("num_workers", 0)))

    def val_dataloader(self) -> DataLoader:
        if self._val_batches is None:
            dataset = self.datasets["val"]
            collate = self._collator(self.seed + 1)
            sampler = SortedEvalBatchSampler(dataset.lengths, int(self.data["eval_batch_size"]))
            self._val_batches = [dict(collate([dataset[i] for i in batch])) for batch in sampler]
        # batch_size=None: each stored batch is one loader batch, as masked at setup.
        return DataLoader(self._val_batches, batch_size=None)

    @property
    def report(self) -> dict:
        return {
            "source": self.data["source"],
            "sizes": {"train": len(self.splits["train"]), "mlm_val": len(self.splits["val"])},
            "bad_rows": {"train": self.bad_rows},
            "mlm_probability": self.mlm_probability,
            "test_split_read": self.test_split_read,
        }
