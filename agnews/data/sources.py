"""Where AG News comes from: the original ``ag_news_csv`` folder layout, or the Hugging Face hub.

Every source returns :class:`Split` objects with a stable example id per row, so predictions written by any run can be
joined later (ensembles, significance tests) without relying on row order.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from agnews.errors import DataError

log = logging.getLogger(__name__)

AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
DATA_DIR_ENV = "AGNEWS_DATA_DIR"
HUB_DATASET = "fancyzhx/ag_news"

BadRowPolicy = Literal["fail", "skip"]


@dataclass
class Split:
    """One split: parallel lists of stable ids, texts and 0-based labels."""

    name: str
    ids: list[str]
    texts: list[str]
    labels: list[int]
    bad_rows: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.texts) == len(self.labels)):
            raise ValueError("ids, texts and labels must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Split":
        return Split(
            name=name or self.name,
            ids=[self.ids[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
        )


def join_title_description(title: str, description: str) -> str:
    """The model input: ``title + " " + description``; an empty title is valid (the description holds the text)."""
    title, description = title.strip(), description.strip()
    return f"{title} {description}" if title else description


def read_ag_news_csv(
    path: str | Path,
    split: str,
    num_labels: int = len(AG_NEWS_LABELS),
    on_bad_rows: BadRowPolicy = "fail",
    max_reported: int = 20,
) -> Split:
    """Read one file in the original format: no header, fields ``class (1-4), title, description``.

    Malformed rows (wrong field count, a label that is not an integer in 1..num_labels, no text at all) are collected
    with their line numbers. ``on_bad_rows="fail"`` raises one :class:`DataError` listing them; ``"skip"`` drops them,
    logs a warning with the same report and keeps the report on the returned split. Never silent.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"AG News {split} file not found: {path}")
    if on_bad_rows not in ("fail", "skip"):
        raise DataError(f"data.on_bad_rows must be 'fail' or 'skip', got {on_bad_rows!r}")

    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    bad: list[dict] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        row_index = 0
        while True:
            start_line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                bad.append({"line": start_line, "reason": f"unparseable CSV: {exc}"})
                continue
            # The id is the 0-based record position in the file, counted over every record (good or bad), so ids
            # of good rows do not shift when a neighbour is fixed or dropped.
            example_id = f"{split}-{row_index:06d}"
            row_index += 1
            reason = _row_problem(row, num_labels)
            if reason:
                bad.append({"line": start_line, "reason": reason})
                continue
            ids.append(example_id)
            labels.append(int(row[0]) - 1)
            texts.append(join_title_description(row[1], row[2]))

    if bad:
        report = _bad_row_report(path, bad, max_reported)
        if on_bad_rows == "fail":
            raise DataError(report + "\nFix the file, or set data.on_bad_rows=skip to drop these rows with a report.")
        log.warning("%s\nSkipping them (data.on_bad_rows=skip).", report)
    if not ids:
        raise DataError(f"{path} has no valid rows")
    return Split(name=split, ids=ids, texts=texts, labels=labels, bad_rows=bad)


def _row_problem(row: list[str], num_labels: int) -> str | None:
    if len(row) != 3:
        return f"expected 3 fields (class, title, description), found {len(row)}"
    label = row[0].strip()
    if not label.lstrip("-").isdigit():
        return f"class {label!r} is not an integer"
    if not 1 <= int(label) <= num_labels:
        return f"class {label} is outside 1..{num_labels}"
    if not row[1].strip() and not row[2].strip():
        return "empty text (title and description are both empty)"
    return None


def _bad_row_report(path: Path, bad: list[dict], max_reported: int) -> str:
    lines = [f"{path}: {len(bad)} malformed row(s)"]
    lines += [f"  line {item['line']}: {item['reason']}" for item in bad[:max_reported]]
    if len(bad) > max_reported:
        lines.append(f"  ... and {len(bad) - max_reported} more")
    return "\n".join(lines)


def read_classes(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_csv_folder(
    data_dir: str | Path,
    label_names: Sequence[str] = AG_NEWS_LABELS,
    on_bad_rows: BadRowPolicy = "fail",
) -> dict[str, Split]:
    """Load ``train.csv`` and ``test.csv`` (and check ``classes.txt`` if present) from an ``ag_news_csv`` folder."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(
            f"AG News data folder not found: {data_dir}\n"
            f"Point data.data_dir (or the {DATA_DIR_ENV} environment variable) at a folder holding train.csv and "
            "test.csv in the original ag_news_csv format, or use data.source=hub on a machine with internet."
        )
    classes = data_dir / "classes.txt"
    if classes.is_file():
        found = read_classes(classes)
        if found != list(label_names):
            raise DataError(f"{classes} lists {found}, but data.label_names is {list(label_names)}")
    return {
        split: read_ag_news_csv(data_dir / f"{split}.csv", split, len(label_names), on_bad_rows)
        for split in ("train", "test")
    }


def load_hub(dataset: str = HUB_DATASET, revision: str | None = None, cache_dir: str | None = None) -> dict[str, Split]:
    """Load AG News from the Hugging Face hub (``text``, ``label`` 0-3; the text already joins title and description)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise DataError("data.source=hub needs the 'datasets' package") from exc
    try:
        loaded = datasets.load_dataset(dataset, revision=revision, cache_dir=cache_dir)
    except Exception as exc:  # datasets raises many types for "offline/unreachable/not found"
        raise DataError(
            f"Could not load the dataset {dataset!r} from the Hugging Face hub ({type(exc).__name__}: {exc}).\n"
            f"Without network access, point at a local ag_news_csv folder: data.source=csv data.data_dir=/path "
            f"or export {DATA_DIR_ENV}=/path."
        ) from exc
    out = {}
    for split in ("train", "test"):
        rows = loaded[split]
        texts, labels = list(rows["text"]), [int(x) for x in rows["label"]]
        out[split] = Split(split, [f"{split}-{i:06d}" for i in range(len(texts))], texts, labels)
    return out


def resolve_source(source: str, data_dir: str | None) -> str:
    """``auto`` means: a local folder when one is configured (config or environment), else the hub."""
    if source not in ("auto", "csv", "hub"):
        raise DataError(f"data.source must be one of auto, csv, hub; got {source!r}")
    if source == "auto":
        return "csv" if (data_dir or os.environ.get(DATA_DIR_ENV)) else "hub"
    return source


def load_source(
    source: str,
    data_dir: str | None,
    label_names: Sequence[str] = AG_NEWS_LABELS,
    on_bad_rows: BadRowPolicy = "fail",
    hub_dataset: str = HUB_DATASET,
    hub_revision: str | None = None,
) -> dict[str, Split]:
    resolved = resolve_source(source, data_dir)
    if resolved == "csv":
        folder = data_dir or os.environ.get(DATA_DIR_ENV)
        if not folder:
            raise DataError(f"data.source=csv needs data.data_dir or the {DATA_DIR_ENV} environment variable")
        return load_csv_folder(folder, label_names, on_bad_rows)
    return load_hub(hub_dataset, hub_revision)
