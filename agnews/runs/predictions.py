"""``predictions/<split>.csv``: one row per example, ``id,label,pred,prob_<class>...`` (0-based labels), and joins by id."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.errors import DataError

PROB_PREFIX = "prob_"
FIXED_COLUMNS = ["id", "label", "pred"]


def probability_columns(label_names: Sequence[str]) -> list[str]:
    return [f"{PROB_PREFIX}{name}" for name in label_names]


@dataclass
class Predictions:
    """One split's stored predictions: ids, gold labels (0-based) and class probabilities (rows sum to 1)."""

    ids: list[str]
    labels: np.ndarray  # int64 [n]
    probs: np.ndarray  # float64 [n, classes]
    label_names: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if not (len(self.ids) == len(self.labels) == len(self.probs)):
            raise ValueError("ids, labels and probabilities differ in length")
        if self.probs.ndim != 2 or self.probs.shape[1] != len(self.label_names):
            raise ValueError(f"probabilities must be [n, {len(self.label_names)}], got {self.probs.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if len(self) else float("nan")

    def select(self, ids: Sequence[str]) -> "Predictions":
        """These predictions in the order of ``ids`` (every id must be present)."""
        row_of = {example_id: row for row, example_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise DataError(f"{len(missing)} of {len(ids)} ids have no prediction (e.g. {missing[:5]})")
        rows = np.fromiter((row_of[i] for i in ids), dtype=np.int64, count=len(ids))
        return Predictions(list(ids), self.labels[rows], self.probs[rows], list(self.label_names))


def write_predictions(path: str | Path, ids: Sequence[str], labels, probs, label_names: Sequence[str]) -> None:
    """One row per example, in split order. ``labels``/``probs`` may be numpy arrays or CPU torch tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FIXED_COLUMNS, *probability_columns(label_names)])
        for row, example_id in enumerate(ids):
            writer.writerow([example_id, int(labels[row]), int(preds[row]), *(f"{p:.6f}" for p in probs[row])])
    tmp.replace(path)


def read_predictions(path: str | Path) -> Predictions:
    """Inverse of :func:`write_predictions`; a malformed file raises :class:`DataError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[:3] != FIXED_COLUMNS or len(header) < 4 or not all(
            column.startswith(PROB_PREFIX) for column in header[3:]
        ):
            raise DataError(f"{path}: not a predictions file (header must be id,label,pred,prob_<class>...), got {header}")
        label_names = [column[len(PROB_PREFIX) :] for column in header[3:]]
        ids, labels, probs = [], [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise DataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            try:
                labels.append(int(row[1]))
                probs.append([float(x) for x in row[3:]])
            except ValueError as exc:
                raise DataError(f"{path}:{line}: {exc}") from None
            ids.append(row[0])
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: example ids are not unique")
    probs_array = np.asarray(probs, dtype=np.float64).reshape(len(ids), len(label_names))
    return Predictions(ids, np.asarray(labels, dtype=np.int64), probs_array, label_names)


def align_predictions(named: dict[str, Predictions], split: str) -> list[Predictions]:
    """The members' predictions on one split, rows in the first member's id order.

    Members must have scored the same examples with the same label names and agree on the gold labels; otherwise a
    :class:`DataError` lists every mismatch (which member, how many ids differ, examples of them).
    """
    if not named:
        raise DataError("no predictions to align")
    names = list(named)
    reference_name, reference = names[0], named[names[0]]
    problems = []
    for name in names[1:]:
        other = named[name]
        if list(other.label_names) != list(reference.label_names):
            problems.append(f"{name}: label names {other.label_names} != {reference_name}: {reference.label_names}")
            continue
        mine, theirs = set(reference.ids), set(other.ids)
        if mine != theirs:
            only_ref, only_other = sorted(mine - theirs), sorted(theirs - mine)
            problems.append(
                f"{name}: scored different {split} examples than {reference_name} ({len(only_ref)} ids only in "
                f"{reference_name}, e.g. {only_ref[:3]}; {len(only_other)} only in {name}, e.g. {only_other[:3]})"
            )
    if problems:
        raise DataError(f"members cannot be combined on {split}:\n  " + "\n  ".join(problems))
    aligned = [reference] + [named[name].select(reference.ids) for name in names[1:]]
    for name, member in zip(names[1:], aligned[1:]):
        if not np.array_equal(member.labels, reference.labels):
            bad = int((member.labels != reference.labels).sum())
            raise DataError(f"{name}: gold labels differ from {reference_name} on {bad} {split} examples")
    return aligned
