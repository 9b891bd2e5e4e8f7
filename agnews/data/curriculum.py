"""Curriculum learning: training batches drawn from the easiest examples first, the pool growing with a pacing function.

Competence-based curriculum (Platanios et al., 2019): examples are ranked by a difficulty score; at training batch ``t``
of ``T`` the sampler draws from the easiest ``c(t)`` fraction of the training split, with

* ``root``:   ``c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2))``
* ``linear``: ``c(t) = min(1, t (1 - c0) / T + c0)``

``c0`` is ``start_fraction`` and ``T = duration * epochs * batches_per_epoch``: after that share of training every
example is available. The sampler knows ``T`` from ``epochs`` (the YAML interpolates ``trainer.max_epochs``) and its own
batch count, so pacing is in batches, identical on every rank and independent of gradient accumulation.

Within the pool, examples are drawn in passes without replacement: each pass is a seeded shuffle of the pool, and
newly admitted (harder) examples join the current pass at random positions. So nothing in the pool is repeated before
everything in it was drawn once, and once the pool is the whole split every example is drawn within two epochs' worth
of batches (the pass then running may have begun before). Every batch is full (an epoch is ``ceil(n / batch_size)``
batches). The stream of batches depends only on ``seed`` and the difficulty ranking: an epoch's batches are replayed
from the start (cached between consecutive epochs), so a run resumed mid-epoch draws exactly the uninterrupted run's
batches. Difficulty ties are broken by a seeded shuffle (lengths tie a lot), not by row order.

Difficulty: token length (:class:`LengthCurriculum`) or a teacher run's per-example loss ``-log p(gold)`` read from its
stored train predictions (:class:`TeacherLossCurriculum`). The data module calls the Hydra partial from
``conf/data/curriculum/*.yaml`` with the split and batching facts; the result is a drop-in
:class:`~agnews.data.batching.LengthGroupedBatchSampler` (epoch, position, state dict, DDP sharding).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

from agnews.data.batching import LengthGroupedBatchSampler
from agnews.errors import ConfigError

PACINGS = ("root", "linear")
MIN_PROB = 1e-12  # -log p(gold) of a teacher that gave the gold class (rounded) zero probability stays finite


def competence(step: int, total: int, start_fraction: float, pacing: str) -> float:
    """The fraction of the difficulty-ranked data available at batch ``step`` of ``total`` (1 from ``total`` on)."""
    if total <= 0 or step >= total:
        return 1.0
    c0 = start_fraction
    if pacing == "root":
        return min(1.0, math.sqrt(step * (1 - c0 * c0) / total + c0 * c0))
    if pacing == "linear":
        return min(1.0, step * (1 - c0) / total + c0)
    raise ConfigError(f"data.curriculum.pacing must be one of {PACINGS}, got {pacing!r}")


class _PoolStream:
    """The curriculum's batch stream from batch 0: passes over a growing pool of the easiest examples."""

    def __init__(self, ranked: np.ndarray, batch_size: int, seed: int, pool_size):
        self.ranked = ranked
        self.batch_size = batch_size
        self.pool_size = pool_size  # step -> number of admitted examples
        self.rng = np.random.default_rng(seed)
        self.queue = np.empty(0, dtype=np.int64)  # the current pass's examples not yet drawn
        self.admitted = 0
        self.step = 0

    def next_batch(self) -> list[int]:
        size = self.pool_size(self.step)
        if size > self.admitted:
            # Newly admitted examples join the current pass at random positions (not all at its end).
            self.queue = self.rng.permutation(np.concatenate([self.queue, self.ranked[self.admitted : size]]))
            self.admitted = size
        need = self.batch_size
        batch = self.queue[:need]
        self.queue = self.queue[need:]
        if len(batch) < need:
            # The pass is used up: start the next one; examples already in this batch go to the new pass's end.
            fresh = self.rng.permutation(self.ranked[: self.admitted])
            taken = np.isin(fresh, batch)
            rest = fresh[~taken]
            fill = need - len(batch)
            batch = np.concatenate([batch, rest[:fill]])
            self.queue = np.concatenate([rest[fill:], fresh[taken]])
        self.step += 1
        return batch.tolist()


class CurriculumBatchSampler(LengthGroupedBatchSampler):
    """Batches from the easiest ``c(t)`` of the examples (see the module docstring); lower ``difficulty`` = easier."""

    _ORDER_KEYS = (*LengthGroupedBatchSampler._ORDER_KEYS, "curriculum")

    def __init__(
        self,
        difficulty: Sequence[float] | np.ndarray,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        epochs: int | None = None,
        pacing: str = "root",
        start_fraction: float = 0.1,
        duration: float = 1.0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        difficulty_name: str = "custom",
        **details,
    ):
        super().__init__(
            lengths, batch_size, seed=seed, shuffle=True, group_by_length=False, drop_last=drop_last,
            num_replicas=num_replicas, rank=rank,
        )
        if pacing not in PACINGS:
            raise ConfigError(f"data.curriculum.pacing must be one of {PACINGS}, got {pacing!r}")
        if isinstance(start_fraction, bool) or not isinstance(start_fraction, (int, float)) or not (
            0 < start_fraction <= 1
        ):
            raise ConfigError(f"data.curriculum.start_fraction must be in (0, 1], got {start_fraction!r}")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration <= 1:
            raise ConfigError(
                f"data.curriculum.duration (the share of training until all data is available) must be in (0, 1], "
                f"got {duration!r}"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(
                f"data.curriculum.epochs must be an integer >= 1 (the pacing spans that many epochs; it defaults to "
                f"trainer.max_epochs), got {epochs!r}: set trainer.max_epochs or data.curriculum.epochs"
            )
        difficulty = np.asarray(difficulty, dtype=np.float64).reshape(-1)
        if len(difficulty) != len(self.lengths):
            raise ConfigError(
                f"the curriculum has {len(difficulty)} difficulty scores for {len(self.lengths)} training examples"
            )
        if not np.isfinite(difficulty).all():
            raise ConfigError(f"the curriculum's difficulty scores must be finite ({difficulty_name})")
        if len(difficulty) == 0:
            raise ConfigError("the curriculum needs a non-empty training split")
        self.difficulty = difficulty
        self.epochs = epochs
        self.pacing = pacing
        self.start_fraction = float(start_fraction)
        self.duration = float(duration)
        self.difficulty_name = difficulty_name
        self.details = details
        # Easiest first; a seeded shuffle before the stable sort breaks ties at random rather than by row order.
        shuffled = np.random.default_rng(seed).permutation(len(difficulty))
        self.ranked = shuffled[np.argsort(difficulty[shuffled], kind="stable")]
        count = len(difficulty)
        self.batches_per_epoch = count // batch_size if drop_last else math.ceil(count / batch_size)
        self.total_batches = max(1, math.ceil(self.duration * self.epochs * self.batches_per_epoch))
        self._stream: _PoolStream | None = None
        self._stream_epoch = 0  # the epoch whose first batch the stream yields next

    # ---- pacing --------------------------------------------------------------------------------------------------
    def competence(self, step: int) -> float:
        return competence(step, self.total_batches, self.start_fraction, self.pacing)

    def pool_size(self, step: int) -> int:
        """Examples available at global batch ``step``: at least one batch's worth (a tiny c0 still fills batches)."""
        count = len(self.ranked)
        return min(count, max(self.batch_size, math.ceil(self.competence(step) * count)))

    # ---- batches ---------------------------------------------------------------------------------------------------
    def _new_stream(self) -> _PoolStream:
        return _PoolStream(self.ranked, self.batch_size, self.seed, self.pool_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All (global, pre-sharding) batches of ``epoch``: stream batches ``epoch * B`` to ``(epoch + 1) * B - 1``."""
        if self._stream is None or epoch < self._stream_epoch:
            self._stream, self._stream_epoch = self._new_stream(), 0
        while self._stream_epoch < epoch:  # replay earlier epochs (a resume, or the first epoch after one)
            for _ in range(self.batches_per_epoch):
                self._stream.next_batch()
            self._stream_epoch += 1
        batches = [self._stream.next_batch() for _ in range(self.batches_per_epoch)]
        self._stream_epoch += 1
        return batches

    def _all_batches(self) -> list[list[int]]:
        return self.epoch_batches(self.epoch)

    def _order_state(self) -> dict:
        digest = hashlib.sha256(self.ranked.astype(np.int64).tobytes()).hexdigest()[:16]
        return {
            **super()._order_state(),
            "curriculum": {
                "difficulty": self.difficulty_name,
                "ranking_sha256": digest,
                "pacing": self.pacing,
                "start_fraction": self.start_fraction,
                "duration": self.duration,
                "epochs": self.epochs,
            },
        }

    def describe(self) -> dict:
        """What the run manifest records about the curriculum."""
        return {
            "difficulty": self.difficulty_name,
            "pacing": self.pacing,
            "start_fraction": self.start_fraction,
            "duration": self.duration,
            "epochs": self.epochs,
            "batches_per_epoch": self.batches_per_epoch,
            "total_pacing_batches": self.total_batches,
            **self.details,
        }


class LengthCurriculum(CurriculumBatchSampler):
    """Difficulty = token length (``data/curriculum=length``): short news items first."""

    def __init__(self, split, lengths: np.ndarray, batch_size: int, seed: int = 0, **options):
        super().__init__(np.asarray(lengths), lengths, batch_size, seed=seed, difficulty_name="length", **options)


def teacher_losses(teacher: str, split) -> np.ndarray:
    """``-log p(gold)`` per example of ``split`` (in its order) from the teacher run's stored predictions of it."""
    from agnews.errors import DataError
    from agnews.runs import RunFormatError, load_run

    if not teacher:
        raise ConfigError(
            "data/curriculum=teacher_loss needs a teacher run: data.curriculum.teacher=<run directory> (a finished "
            "run trained with scoring.splits=[train,val,test])"
        )
    try:
        run = load_run(teacher)
    except RunFormatError as error:
        raise ConfigError(f"data.curriculum.teacher: {error}") from error
    name = split.name
    if not run.predictions_path(name).is_file():
        raise ConfigError(
            f"data.curriculum.teacher={teacher} has no {name} predictions ({run.predictions_path(name)}; stored: "
            f"{run.splits or 'none'}). Score the {name} split with the teacher: train it with "
            f"scoring.splits=[{name},val,test] and the same data settings (data.train_size, data.val_size, seed)"
        )
    try:
        stored = run.predictions(name).select(split.ids)
    except DataError as error:
        raise ConfigError(
            f"data.curriculum.teacher={teacher} did not score this run's {name} examples ({error}): train the teacher "
            "with the same data settings (data.source, data.train_size, data.val_size, seed)"
        ) from error
    gold = np.asarray(split.labels, dtype=np.int64)
    differ = np.flatnonzero(stored.labels != gold)
    if differ.size:
        raise ConfigError(
            f"data.curriculum.teacher={teacher}: gold labels differ from this run's on {differ.size} {name} examples "
            f"(e.g. {[split.ids[i] for i in differ[:3]]})"
        )
    return -np.log(np.maximum(stored.probs[np.arange(len(gold)), gold], MIN_PROB))


class TeacherLossCurriculum(CurriculumBatchSampler):
    """Difficulty = a teacher run's loss on each training example (``data/curriculum=teacher_loss``)."""

    def __init__(self, split, lengths: np.ndarray, batch_size: int, seed: int = 0, teacher: str | None = None,
                 **options):
        losses = teacher_losses(teacher, split)
        super().__init__(
            losses, lengths, batch_size, seed=seed, difficulty_name="teacher_loss", teacher=str(teacher), **options
        )


def refuse_with_pseudo_labels(curriculum) -> None:
    """``data/curriculum=teacher_loss`` ranks rows by the teacher run's stored train predictions; pseudo-labelled rows
    come from the unlabelled pool, which that run never scored, so the combination cannot rank them."""
    func = getattr(curriculum, "func", curriculum)  # data.curriculum is a Hydra partial
    if isinstance(func, type) and issubclass(func, TeacherLossCurriculum):
        raise ConfigError(
            "data/curriculum=teacher_loss with data.pseudo_label.teacher is unsupported: the curriculum teacher scored "
            "only its own training rows, not the pseudo-labelled pool rows this run adds to training. Use "
            "data/curriculum=length with pseudo-labelling, or turn pseudo-labelling off "
            "(data.pseudo_label.teacher=null)"
        )
