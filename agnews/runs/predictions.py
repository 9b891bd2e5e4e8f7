"""``predictions/<split>.csv``: one row per example, ``id,label,pred,prob_<class>...`` (0-based labels), and joins by id."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.errors import DataError
from agnews.runs.format import temporary_sibling

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
        self.ids = [str(i) for i in self.ids]
        self.label_names = list(self.label_names)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        if not self.ids and self.probs.size == 0:  # an empty split: any empty array is [0, classes]
            self.probs = self.probs.reshape(0, len(self.label_names))
        if not (len(self.ids) == len(self.labels) == len(self.probs)):
            raise ValueError(
                f"ids, labels and probabilities differ in length ({len(self.ids)}, {len(self.labels)}, {len(self.probs)})"
            )
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
    """One row per example, in split order. ``labels``/``probs`` may be numpy arrays or CPU torch tensors.

    Written to a temp file and renamed: a crash never leaves half a predictions file under the final name.
    """
    path = Path(path)
    table = Predictions(list(ids), np.asarray(labels), np.asarray(probs), list(label_names))  # checks the shapes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([*FIXED_COLUMNS, *probability_columns(table.label_names)])
            for example_id, label, pred, row in zip(table.ids, table.labels, table.preds, table.probs):
                writer.writerow([example_id, int(label), int(pred), *(f"{p:.6f}" for p in row)])
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _parse_row(path: Path, line: int, row: list[str], num_classes: int) -> tuple[int, list[float]]:
    try:
        label = int(row[1])
        int(row[2])
    except ValueError:
        raise DataError(f"{path}:{line}: label and pred must be integers, got {row[1]!r}, {row[2]!r}") from None
    if not 0 <= label < num_classes:
        raise DataError(f"{path}:{line}: label {label} is outside 0..{num_classes - 1}")
    probs = []
    for column, value in enumerate(row[3:]):
        try:
            p = float(value)
        except ValueError:
            p = math.nan
        if not math.isfinite(p) or p < 0:
            raise DataError(f"{path}:{line}: probability column {3 + column + 1} is {value!r}, not a number >= 0")
        probs.append(p)
    return label, probs


def read_predictions(path: str | Path) -> Predictions:
    """Inverse of :func:`write_predictions`; a malformed file raises :class:`DataError` naming the file and line.

    Checked: the header (``id,label,pred,prob_<class>...``), the field count of every row, integer labels in range,
    finite non-negative probabilities, unique ids.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file")
    ids, labels, probs, first_line = [], [], [], {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or header[:3] != FIXED_COLUMNS or len(header) < 4 or not all(
                column.startswith(PROB_PREFIX) and len(column) > len(PROB_PREFIX) for column in header[3:]
            ):
                raise DataError(
                    f"{path}: not a predictions file (header must be id,label,pred,prob_<class>...), got {header}"
                )
            label_names = [column[len(PROB_PREFIX) :] for column in header[3:]]
            for row in reader:
                line = reader.line_num
                if len(row) != len(header):
                    raise DataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                label, row_probs = _parse_row(path, line, row, len(label_names))
                first_line.setdefault(row[0], []).append(line)
                ids.append(row[0])
                labels.append(label)
                probs.append(row_probs)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None
    duplicates = {i: lines for i, lines in first_line.items() if len(lines) > 1}
    if duplicates:
        shown = "; ".join(f"{i!r} on lines {lines}" for i, lines in list(duplicates.items())[:5])
        raise DataError(f"{path}: {len(duplicates)} example ids occur more than once ({shown})")
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
    aligned = [reference]
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
            continue
        member = other.select(reference.ids)
        differ = np.flatnonzero(member.labels != reference.labels)
        if differ.size:
            examples = [reference.ids[i] for i in differ[:3]]
            problems.append(
                f"{name}: gold labels differ from {reference_name} on {differ.size} {split} examples (e.g. {examples})"
            )
            continue
        aligned.append(member)
    if problems:
        raise DataError(f"members cannot be combined on {split}:\n  " + "\n  ".join(problems))
    return aligned
