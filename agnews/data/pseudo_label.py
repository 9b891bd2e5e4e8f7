"""Pseudo-labelling (self-training): a finished teacher run labels held-out training rows; confident ones join training.

The unlabelled pool is the training rows neither in the training subset nor in validation (what ``data.train_size``
leaves over). Their gold labels are hidden from training: they are only used to report how accurate the kept
pseudo-labels are.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.data.sources import Split
from agnews.errors import AGNewsError, ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


class PseudoLabeler:
    """``data.pseudo_label``: label the pool with ``teacher`` (a finished run, its ``model/`` or an ensemble bundle,
    through :class:`agnews.inference.Predictor`) and keep rows whose top probability is ``>= threshold``.

    ``balance=true`` keeps the same number of rows for every predicted class: the smallest class's count of confident
    rows, each class's most confident first (so no class the teacher favours floods training). ``pool_size`` caps the
    pool at a seeded random subset of that many rows (null = the whole pool). ``teacher=null`` turns it off.
    """

    def __init__(
        self,
        teacher: str | None = None,
        threshold: float = 0.9,
        balance: bool = True,
        pool_size: int | None = None,
        batch_size: int = 64,
        precision: str = "fp32",
    ):
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"data.pseudo_label.threshold must lie in (0, 1), got {threshold!r}")
        for name, value in (("pool_size", pool_size), ("batch_size", batch_size)):
            if value is None and name == "pool_size":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"data.pseudo_label.{name} must be an integer >= 1, got {value!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"data.pseudo_label.precision={precision!r}: choose one of {list(PRECISIONS)}")
        if not isinstance(balance, bool):
            raise ConfigError(f"data.pseudo_label.balance must be true or false, got {balance!r}")
        self.teacher = str(teacher) if teacher else None
        self.threshold = float(threshold)
        self.balance = balance
        self.pool_size = pool_size
        self.batch_size = int(batch_size)
        self.precision = precision

    @property
    def enabled(self) -> bool:
        return self.teacher is not None

    def load_teacher(self, label_names: Sequence[str]):
        """The teacher's :class:`~agnews.inference.Predictor`; a clear error for a missing or unfinished run, or one
        trained with other label names."""
        from agnews.inference import Predictor
        from agnews.runs import RunFormatError

        path = Path(self.teacher).expanduser()
        try:
            predictor = Predictor.from_path(path, precision=self.precision, batch_size=self.batch_size)
        except RunFormatError as error:
            raise ConfigError(f"data.pseudo_label.teacher={self.teacher}: {error}") from error
        if list(predictor.label_names) != list(label_names):
            raise ConfigError(
                f"data.pseudo_label.teacher={self.teacher} predicts {predictor.label_names}, but this run's "
                f"data.label_names are {list(label_names)}: pseudo-labels would name the wrong classes"
            )
        return predictor

    def select_pool(self, pool: Split, seed: int) -> Split:
        if len(pool) == 0:
            raise ConfigError(
                f"data.pseudo_label.teacher={self.teacher}: the unlabelled pool is empty. It is the training rows that "
                "data.train_size leaves out of training (and that are not in validation): set data.train_size to a "
                "subset (e.g. data.train_size=4000)"
            )
        if self.pool_size is None or self.pool_size >= len(pool):
            return pool
        chosen = np.sort(np.random.default_rng(seed).choice(len(pool), size=self.pool_size, replace=False))
        return pool.subset(chosen.tolist())

    def teacher_training_overlap(self, pool: Split) -> int | None:
        """How many pool texts the teacher trained on (its training split rebuilt from its config; None when the
        teacher is not a run directory). Non-zero means the teacher has seen those rows' gold labels: train the teacher
        with the same data settings and seed, so that the pool is data it never saw."""
        from agnews.data.run_splits import load_run_split

        try:
            teacher_train = load_run_split(Path(self.teacher).expanduser(), "train")
        except (AGNewsError, OSError, ValueError) as error:  # a bundle or model/ folder, data moved away, ...
            log.info("Pseudo-labelling: cannot rebuild the teacher's training split (%s)", error)
            return None
        seen = set(teacher_train.texts)
        return sum(text in seen for text in pool.texts)

    def select(self, probs: np.ndarray) -> np.ndarray:
        """Indices (into ``probs``' rows, ascending) of the rows kept: confident, then balanced across classes."""
        confidence = probs.max(axis=1)
        predicted = probs.argmax(axis=1)
        confident = np.flatnonzero(confidence >= self.threshold)
        if not self.balance:
            return confident
        per_class = [confident[predicted[confident] == c] for c in range(probs.shape[1])]
        keep = min(len(rows) for rows in per_class)
        # each class's most confident rows first; a stable sort keeps pool order among ties
        chosen = [rows[np.argsort(-confidence[rows], kind="stable")[:keep]] for rows in per_class]
        return np.sort(np.concatenate(chosen)) if chosen else confident[:0]

    def __call__(self, pool: Split, label_names: Sequence[str], seed: int) -> tuple[Split, dict]:
        """(pseudo-labelled rows with the teacher's labels, report). Raises ConfigError when nothing is kept."""
        pool = self.select_pool(pool, seed)
        predictor = self.load_teacher(label_names)
        probs = predictor.predict_proba(pool.texts)
        kept = self.select(probs)
        predicted = probs.argmax(axis=1)
        confident = probs.max(axis=1) >= self.threshold
        gold = np.asarray(pool.labels)
        report = {
            "teacher": self.teacher,
            "threshold": self.threshold,
            "balance": self.balance,
            "pool": len(pool),
            "teacher_accuracy_on_pool": round(float((predicted == gold).mean()), 6),
            "confident": int(confident.sum()),
            "confident_per_class": {
                name: int((confident & (predicted == c)).sum()) for c, name in enumerate(label_names)
            },
            "kept": int(len(kept)),
            "kept_per_class": {name: int((predicted[kept] == c).sum()) for c, name in enumerate(label_names)},
            "kept_accuracy": round(float((predicted[kept] == gold[kept]).mean()), 6) if len(kept) else None,
            "pool_rows_in_teacher_training": self.teacher_training_overlap(pool),
        }
        if report["pool_rows_in_teacher_training"]:
            log.warning(
                "Pseudo-labelling: the teacher trained on %d of the %d pool rows (their labels are not a fair test of "
                "it); train the teacher with this run's data settings and seed",
                report["pool_rows_in_teacher_training"], len(pool),
            )
        if len(kept) == 0:
            rule = " and balance=true keeps the smallest class's count" if self.balance else ""
            raise ConfigError(
                f"data.pseudo_label: no pool row was kept (threshold {self.threshold}{rule}; confident rows per "
                f"predicted class: {report['confident_per_class']}). Lower data.pseudo_label.threshold, set "
                "data.pseudo_label.balance=false, or use a stronger teacher"
            )
        labelled = Split(
            "pseudo",
            [pool.ids[i] for i in kept],
            [pool.texts[i] for i in kept],
            [int(predicted[i]) for i in kept],  # the teacher's labels: the gold ones stay hidden
        )
        log.info("Pseudo-labelling: %s", report)
        return labelled, report


def join_splits(first: Split, second: Split, name: str) -> Split:
    """``first`` then ``second`` as one split (ids stay unique: both come from the same source file)."""
    return Split(name, first.ids + second.ids, first.texts + second.texts, first.labels + second.labels)
