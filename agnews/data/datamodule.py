"""The Lightning DataModule: load a source, split, tokenize (cached), batch with dynamic padding."""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Sequence

import lightning as L
from torch.utils.data import DataLoader

from agnews.data.batching import (
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    SortedEvalBatchSampler,
    TokenizedDataset,
)
from agnews.data.sources import AG_NEWS_LABELS, HUB_DATASET, Split, load_source
from agnews.data.splits import make_splits
from agnews.data.tokenization import tokenize_texts
from agnews.errors import ConfigError

log = logging.getLogger(__name__)


class AGNewsDataModule(L.LightningDataModule):
    def __init__(
        self,
        tokenizer,
        source: str = "auto",
        data_dir: str | None = None,
        label_names: Sequence[str] = AG_NEWS_LABELS,
        val_size: int | float = 0.05,
        train_size: int | float | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        on_bad_rows: str = "fail",
        cache_dir: str | None = None,
        seed: int = 42,
        hub_dataset: str = HUB_DATASET,
        hub_revision: str | None = None,
        global_attention_first_token: bool = False,
    ):
        super().__init__()
        for name, value, minimum in (
            ("max_length", max_length, 1),
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_workers", num_workers, 0),
            ("pad_to_multiple_of", pad_to_multiple_of, 1),
        ):
            if value is None and name == "pad_to_multiple_of":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ConfigError(f"data.{name} must be an integer >= {minimum}, got {value!r}")
        self.tokenizer = tokenizer
        self.source = source
        self.data_dir = data_dir
        self.label_names = list(label_names)
        self.val_size = val_size
        self.train_size = train_size
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        self.on_bad_rows = on_bad_rows
        self.cache_dir = cache_dir
        self.seed = seed
        self.hub_dataset = hub_dataset
        self.hub_revision = hub_revision
        if tokenizer.pad_token_id is None:
            raise ConfigError(
                f"the tokenizer ({type(tokenizer).__name__}) has no pad token; set one before building the data module"
            )
        self.collator = DynamicPaddingCollator(
            pad_token_id=tokenizer.pad_token_id,
            padding_side=tokenizer.padding_side,
            pad_to_multiple_of=pad_to_multiple_of,
            global_attention_first_token=global_attention_first_token,
        )
        self.splits: dict[str, Split] = {}
        self.datasets: dict[str, TokenizedDataset] = {}
        self.bad_rows: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return  # idempotent: fit, validate, test and predict share one load
        raw = load_source(self.source, self.data_dir, self.label_names, self.on_bad_rows, self.hub_dataset, self.hub_revision)
        self.bad_rows = {name: split.bad_rows for name, split in raw.items() if split.bad_rows}
        self.splits = make_splits(raw["train"], raw["test"], self.val_size, self.train_size, self.seed)
        cache = Path(self.cache_dir) if self.cache_dir else None
        for name, split in self.splits.items():
            tokenized = tokenize_texts(self.tokenizer, split.texts, self.max_length, cache)
            self.datasets[name] = TokenizedDataset(tokenized, split.labels)
        log.info("Splits: %s", {name: len(split) for name, split in self.splits.items()})

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        trainer = getattr(self, "trainer", None)
        sampler = LengthGroupedBatchSampler(
            dataset.lengths,
            self.batch_size,
            seed=self.seed,
            group_by_length=self.group_by_length,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        if trainer is not None:
            # Start at the epoch Lightning is about to run (the restored one when resuming). Lightning calls set_epoch
            # too, but only after it has created the first iterator, which worker processes start prefetching from.
            sampler.set_epoch(int(trainer.fit_loop.epoch_progress.current.processed))
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        dataset = self.datasets[split]
        return self._loader(dataset, SortedEvalBatchSampler(dataset.lengths, self.eval_batch_size))

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
