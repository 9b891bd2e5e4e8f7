"""The Lightning DataModule: load a source, split, tokenize (cached), batch with dynamic padding.

Training recipes hook in here: ``data.pseudo_label`` adds teacher-labelled pool rows to the training split,
``data/augment=...`` edits training batches (only those), ``data/curriculum=...`` replaces the training batch sampler.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Mapping, Sequence

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from agnews.data.augment import AugmentedDataset, EpochTaggedBatchSampler
from agnews.data.batching import (
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    SortedEvalBatchSampler,
    TokenizedDataset,
)
from agnews.data.curriculum import refuse_with_pseudo_labels
from agnews.data.pseudo_label import PseudoLabeler, join_splits
from agnews.data.sources import AG_NEWS_LABELS, HUB_DATASET, Split, load_source
from agnews.data.splits import make_splits
from agnews.data.tokenization import tokenize_texts
from agnews.errors import ConfigError

log = logging.getLogger(__name__)


class TrainDataLoader(DataLoader):
    """The training loader, resumable mid-epoch: its state is the batch sampler's epoch and position.

    Lightning stores the state of train loaders that have ``state_dict``/``load_state_dict`` with the fit loop (and
    warns on a mid-epoch resume when they lack it). It loads that state only when the loader is built after the
    checkpoint is restored, which a scheduler that asks for ``estimated_stepping_batches`` prevents; the data module
    therefore saves and restores the same position itself (:meth:`AGNewsDataModule.state_dict`). Both routes set the
    same position.
    """

    datamodule: "AGNewsDataModule | None" = None

    def state_dict(self) -> dict:
        return self.datamodule.state_dict() if self.datamodule is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.datamodule is not None:
            self.datamodule.load_state_dict(state)

    def __iter__(self):
        # Lightning sets the sampler's epoch from its count of processed epochs, which after resuming an
        # iteration-based run (max_steps) from an end-of-epoch checkpoint is one ahead of trainer.current_epoch, the
        # epoch the run is in (and that seeds its dropout). Set it here, before workers draw any batch: a restored
        # position not yet applied names its own epoch (Lightning iterates before its epoch counters settle).
        trainer = getattr(self.datamodule, "trainer", None) if self.datamodule is not None else None
        sampler = self.batch_sampler
        # Duck-typed: the length-grouped sampler, a curriculum sampler (data/curriculum) or either behind the
        # augmentation's epoch tagging all resume the same way.
        if trainer is not None and trainer.training and hasattr(sampler, "pending_resume_epoch"):
            pending = sampler.pending_resume_epoch
            sampler.set_epoch(pending if pending is not None else trainer.current_epoch)
        return super().__iter__()


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
        augment=None,
        pseudo_label: PseudoLabeler | None = None,
        curriculum=None,
    ):
        super().__init__()
        augment = None if isinstance(augment, Mapping) and not augment else augment  # an empty group node: off
        curriculum = None if isinstance(curriculum, Mapping) and not curriculum else curriculum
        for name, value, choice in (("augment", augment, "eda"), ("curriculum", curriculum, "length")):
            if isinstance(value, str):
                # `data.augment=eda` sets a string; the option is a config group, chosen with a slash
                raise ConfigError(
                    f"data.{name}={value!r} is a plain string: {name} is a config group, choose it with "
                    f"data/{name}={value} (e.g. data/{name}={choice}; data/{name}=none turns it off)"
                )
            if value is not None and not callable(value):
                raise ConfigError(
                    f"data.{name} must come from its config group (data/{name}=...), got {type(value).__name__} "
                    f"{value!r}"
                )
        if pseudo_label is not None and not isinstance(pseudo_label, PseudoLabeler):
            raise ConfigError(
                f"data.pseudo_label must be built by Hydra from conf/data/ag_news.yaml (a PseudoLabeler), got "
                f"{type(pseudo_label).__name__} {pseudo_label!r}"
            )
        if pseudo_label is not None and pseudo_label.enabled and curriculum is not None:
            refuse_with_pseudo_labels(curriculum)
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
        self.augment = augment
        self.pseudo_label = pseudo_label
        self.curriculum = curriculum
        if augment is not None and hasattr(augment, "bind"):
            augment.bind(tokenizer)
        # What the recipes did to the data (pseudo-labelling counts, the curriculum), for the run manifest.
        self.report: dict = {}
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
        self._train_sampler = None  # LengthGroupedBatchSampler or a curriculum sampler (same interface)
        self._train_position: dict | None = None  # restored from a checkpoint, for the next train loader

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return  # idempotent: fit, validate, test and predict share one load
        raw = load_source(self.source, self.data_dir, self.label_names, self.on_bad_rows, self.hub_dataset, self.hub_revision)
        self.bad_rows = {name: split.bad_rows for name, split in raw.items() if split.bad_rows}
        self.splits = make_splits(raw["train"], raw["test"], self.val_size, self.train_size, self.seed, with_rest=True)
        pool = self.splits.pop("rest")
        if self.pseudo_label is not None and self.pseudo_label.enabled:
            pseudo, report = self.pseudo_label(pool, self.label_names, self.seed)
            self.report["pseudo_label"] = report
            self.splits["train"] = join_splits(self.splits["train"], pseudo, "train")
        cache = Path(self.cache_dir) if self.cache_dir else None
        for name, split in self.splits.items():
            tokenized = tokenize_texts(self.tokenizer, split.texts, self.max_length, cache)
            self.datasets[name] = TokenizedDataset(tokenized, split.labels)
        log.info("Splits: %s", {name: len(split) for name, split in self.splits.items()})

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        trainer = getattr(self, "trainer", None)
        num_replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if self.curriculum is not None:
            # data/curriculum=...: a partial from Hydra; its sampler has the length-grouped sampler's interface
            sampler = self.curriculum(
                split=self.splits["train"], lengths=dataset.lengths, batch_size=self.batch_size, seed=self.seed,
                num_replicas=num_replicas, rank=rank,
            )
            if callable(getattr(sampler, "describe", None)):
                self.report["curriculum"] = sampler.describe()
        else:
            sampler = LengthGroupedBatchSampler(
                dataset.lengths,
                self.batch_size,
                seed=self.seed,
                group_by_length=self.group_by_length,
                num_replicas=num_replicas,
                rank=rank,
            )
        if trainer is not None:
            # Start at the epoch Lightning is about to run (the restored one when resuming). Lightning calls set_epoch
            # too, but only after it has created the first iterator, which worker processes start prefetching from.
            sampler.set_epoch(int(trainer.fit_loop.epoch_progress.current.processed))
        self._train_sampler = sampler
        if self._train_position is not None:
            # Lightning restores the data module before it builds the loader (except for strategies that restore after
            # setup, e.g. FSDP): apply the checkpoint's position before any batch is drawn.
            self._apply_train_position()
        if self.augment is not None:
            # Edits need the epoch in the (possibly worker-held) dataset: batches carry it with every index.
            dataset = AugmentedDataset(
                dataset, self.splits["train"].texts, self.augment, self.tokenizer, self.max_length, self.seed
            )
            loader = self._loader(dataset, EpochTaggedBatchSampler(sampler), TrainDataLoader)
        else:
            loader = self._loader(dataset, sampler, TrainDataLoader)
        loader.datamodule = self
        return loader

    # ---- checkpoint state: where in the training data the run is ------------------------------------------------
    def state_dict(self) -> dict:
        """The training data position: epoch and batches the fit loop has trained on (not what loader workers and
        Lightning's prefetching drew ahead), so a resumed run skips exactly the batches the checkpoint has seen."""
        trainer = getattr(self, "trainer", None)
        if self._train_sampler is None or trainer is None:
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return {"train_batch_sampler": self._train_sampler.state_dict(batches_done=done)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return  # a checkpoint from before positions were saved: resume at its epoch boundary, as before
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.state.fn is not None and trainer.state.fn != TrainerFn.FITTING:
            return  # validate/test/predict with ckpt_path=: only the weights matter, not where training stood
        if "train_batch_sampler" not in state:
            raise ConfigError(f"the checkpoint's data module state has no training data position: {sorted(state)}")
        self._train_position = dict(state["train_batch_sampler"])
        if self._train_sampler is not None:
            if self._train_sampler.started:
                log.warning(
                    "The training data position was restored after the loader started drawing batches (a strategy "
                    "that restores checkpoints after setup, with data.num_workers > 0): the resumed epoch may differ "
                    "from the uninterrupted run's"
                )
            self._apply_train_position()

    def _apply_train_position(self) -> None:
        assert self._train_sampler is not None and self._train_position is not None
        try:
            self._train_sampler.load_state_dict(self._train_position)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        self._train_position = None

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        dataset = self.datasets[split]
        return self._loader(dataset, SortedEvalBatchSampler(dataset.lengths, self.eval_batch_size))

    def _loader(self, dataset, batch_sampler, loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        return loader_class(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
