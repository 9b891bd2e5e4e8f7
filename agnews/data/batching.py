"""Datasets over cached token ids, dynamic padding, and length-grouped batch sampling."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from agnews.data.padding import pad_token_ids
from agnews.data.tokenization import TokenizedTexts


class TokenizedDataset(Dataset):
    """Item ``i`` is ``{"index": i, "input_ids": ..., "labels": ...}``; ``index`` maps predictions back to example ids."""

    def __init__(self, tokenized: TokenizedTexts, labels: list[int]):
        if len(tokenized) != len(labels):
            raise ValueError("tokenized texts and labels differ in length")
        self.tokenized = tokenized
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "input_ids": self.tokenized[index], "labels": self.labels[index]}

    @property
    def lengths(self) -> np.ndarray:
        return self.tokenized.lengths


class DynamicPaddingCollator:
    """Pad each batch to its own longest sequence (optionally to a multiple, for tensor cores).

    ``padding_side="left"`` is what XLNet needs (its classifier reads the last position). ``global_attention_first_token``
    adds Longformer's ``global_attention_mask`` on the first token (<s>/[CLS]), as its classification head expects.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
        global_attention_first_token: bool = False,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.global_attention_first_token = global_attention_first_token

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        padded = pad_token_ids(
            [item["input_ids"] for item in items],
            self.pad_token_id,
            self.padding_side,
            self.pad_to_multiple_of,
            self.global_attention_first_token,
        )
        batch = {name: torch.from_numpy(array) for name, array in padded.items()}
        batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.long)
        batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar length: less padding, same randomness as plain shuffling across epochs.

    Indices are shuffled, cut into mega-batches of ``mega_batch_factor * batch_size``, each sorted by length and
    chunked into batches; the batch order is shuffled again. The permutation depends only on ``seed + epoch`` (Lightning
    calls :meth:`set_epoch`), so a run resumed at an epoch boundary sees exactly the data order of an uninterrupted one.
    With ``num_replicas > 1`` each rank takes every ``num_replicas``-th batch (all ranks get the same batch count).

    Mid-epoch resume: :meth:`state_dict` records the epoch and how many batches of it were used; after
    :meth:`load_state_dict` the next iteration of that epoch skips exactly those batches (later epochs are unchanged).
    """

    # What decides the batches: a saved position only means something for a sampler that agrees on all of these.
    _ORDER_KEYS = ("dataset_size", "batch_size", "seed", "mega_batch_factor", "shuffle", "group_by_length", "drop_last",
                   "num_replicas")

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        mega_batch_factor: int = 50,
        shuffle: bool = True,
        group_by_length: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mega_batch_factor < 1:
            raise ValueError(f"mega_batch_factor must be >= 1, got {mega_batch_factor}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._yielded = 0  # batches of the current iteration handed out so far
        self.started = False  # whether any iteration has drawn a batch order yet
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) from load_state_dict, used once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def pending_resume_epoch(self) -> int | None:
        """The epoch a restored position (:meth:`load_state_dict`) continues in, until an iteration has applied it."""
        if self._resume is None:
            return None
        epoch, done = self._resume
        return epoch + 1 if done == len(self) else epoch

    def _order_state(self) -> dict:
        return {
            "dataset_size": len(self.lengths),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "mega_batch_factor": self.mega_batch_factor,
            "shuffle": self.shuffle,
            "group_by_length": self.group_by_length,
            "drop_last": self.drop_last,
            "num_replicas": self.num_replicas,
        }

    def state_dict(self, batches_done: int | None = None) -> dict:
        """The data position: ``epoch`` and ``batches_done`` of it (by default the batches this sampler has yielded;
        a training loop that prefetches passes the number it actually trained on), plus what defines the order."""
        done = self._yielded if batches_done is None else int(batches_done)
        return {"epoch": int(self.epoch), "batches_done": done, "num_batches": len(self), **self._order_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off: the next iteration of epoch ``state["epoch"]`` skips its used batches.

        Raises ``ValueError`` when the state was saved for other data or batching (the skipped batches would not be
        the ones already trained on).
        """
        missing = [key for key in ("epoch", "batches_done", *self._ORDER_KEYS) if key not in state]
        if missing:
            raise ValueError(f"batch sampler state lacks {missing}; it was not written by LengthGroupedBatchSampler")
        ours = self._order_state()
        differs = {key: (state[key], ours[key]) for key in self._ORDER_KEYS if state[key] != ours[key]}
        if differs:
            detail = ", ".join(f"{key}: checkpoint {saved!r}, now {now!r}" for key, (saved, now) in differs.items())
            raise ValueError(
                "cannot resume the training data position: the checkpoint's batches were drawn with different data or "
                f"batching ({detail}). Resume with the same data, data.batch_size, seed and devices, or start a new "
                "run."
            )
        done, epoch = int(state["batches_done"]), int(state["epoch"])
        if not 0 <= done <= len(self) or epoch < 0:
            raise ValueError(
                f"batch sampler state says {done} batches of epoch {epoch} were used, but an epoch has {len(self)}"
            )
        # A finished epoch resumes into the next one: start there already, since worker processes draw batches as soon
        # as the iterator exists, before Lightning calls set_epoch.
        self.epoch = epoch + 1 if done == len(self) else epoch
        self._resume = (epoch, done)

    @property
    def sampler(self) -> "LengthGroupedBatchSampler":
        """Lightning calls ``set_epoch`` on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``, never on
        the batch sampler itself; without this the order would repeat every epoch (and a resumed run could differ)."""
        return self

    def _all_batches(self) -> list[list[int]]:
        count = len(self.lengths)
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        if self.group_by_length:
            mega = self.batch_size * self.mega_batch_factor
            chunks = [order[i : i + mega] for i in range(0, count, mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, count, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle and self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the order is drawn at the first ``next()``, not at ``iter()``. Lightning creates the epoch's
        # iterator before it calls ``set_epoch`` when it resumes from a checkpoint (like torch's BatchSampler, we must
        # not fix the order that early).
        self.started = True
        batches = self._all_batches()
        per_rank = len(batches) // self.num_replicas if self.num_replicas > 1 else len(batches)
        if self.num_replicas > 1:
            batches = batches[self.rank : per_rank * self.num_replicas : self.num_replicas]
        skip = 0
        if self._resume is not None:
            # A restored position applies once, and only to the epoch it was saved in (a checkpoint written at the
            # end of an epoch resumes into the next one, which starts from its first batch).
            resume_epoch, done = self._resume
            self._resume = None
            if resume_epoch == self.epoch:
                skip = done
        self._yielded = skip
        for batch in batches[skip:]:
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        count = len(self.lengths)
        full = count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)
        return full // self.num_replicas if self.num_replicas > 1 else full


class SortedEvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches in descending length order: minimal padding; results are mapped back through ``index``."""

    def __init__(self, lengths: np.ndarray, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.argsort(-np.asarray(lengths), kind="stable")
        self.batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
