"""Where AG News comes from: the original ``ag_news_csv`` folder layout, or the Hugging Face hub.

Every source returns :class:`Split` objects with a stable example id per row, so predictions written by any run can be
joined later (ensembles, significance tests) without relying on row order.
"""

from __future__ import annotations

import csv
import logging
import os
import re
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
    """The model input: ``title + " " + description``; an empty title (or description) is valid: the other one is
    the whole text (the shared train subset has empty titles with the joined text in the description)."""
    return " ".join(part for part in (title.strip(), description.strip()) if part)


def read_ag_news_csv(
    path: str | Path,
    split: str,
    num_labels: int = len(AG_NEWS_LABELS),
    on_bad_rows: BadRowPolicy = "fail",
    max_reported: int = 20,
) -> Split:
    """Read one file in the original format: no header, one record per line, fields ``class (1-4), title, description``.

    Malformed rows (unparseable CSV such as an unterminated quote, bytes that are not UTF-8, wrong field count, a label
    that is not an integer in 1..num_labels, no text at all) are collected with their line numbers.
    ``on_bad_rows="fail"`` raises one :class:`DataError` listing them; ``"skip"`` drops them, logs a warning with the
    same report and keeps the report on the returned split (``split.bad_rows``). Never silent.

    Each physical line is parsed on its own (the format has no embedded line breaks), so one broken line can never
    swallow the good lines after it. The example id is ``{split}-{i:06d}`` with ``i`` the 0-based line index: ids of
    good rows do not shift when a neighbour is fixed or dropped. Blank lines carry no data and are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"AG News {split} file not found: {path}\n"
            f"Point data.data_dir (or the {DATA_DIR_ENV} environment variable) at a folder holding train.csv and "
            "test.csv in the original ag_news_csv format."
        )
    _check_policy(on_bad_rows)

    ids: list[str] = []
    texts: list[str] = []
    labels: list[int] = []
    bad: list[dict] = []
    with path.open("rb") as handle:
        for line_index, raw in enumerate(handle):
            line_number = line_index + 1
            try:
                line = raw.decode("utf-8-sig" if line_index == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                bad.append(_bad(line_number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", raw))
                continue
            if not line.strip():
                continue
            try:
                row = next(csv.reader((line,), strict=True))
            except csv.Error as exc:
                bad.append(_bad(line_number, _csv_problem(str(exc)), line))
                continue
            reason = _row_problem(row, num_labels)
            if reason:
                if line_index == 0 and len(row) == 3 and not _is_int(row[0]):
                    reason += " (a header row? the ag_news_csv format has none)"
                bad.append(_bad(line_number, reason, line))
                continue
            ids.append(f"{split}-{line_index:06d}")
            labels.append(int(row[0]) - 1)
            texts.append(join_title_description(row[1], row[2]))

    if bad:
        report = _bad_row_report(path, bad, max_reported)
        if on_bad_rows == "fail":
            raise DataError(report + "\nFix the file, or set data.on_bad_rows=skip to drop these rows with a report.")
        log.warning("%s\nSkipping them (data.on_bad_rows=skip); %d good row(s) kept.", report, len(ids))
    if not ids:
        raise DataError(f"{path} has no valid rows (expected lines like \"3\",\"title\",\"description\")")
    return Split(name=split, ids=ids, texts=texts, labels=labels, bad_rows=bad)


def _check_policy(on_bad_rows: str) -> None:
    if on_bad_rows not in ("fail", "skip"):
        raise DataError(f"data.on_bad_rows must be 'fail' or 'skip', got {on_bad_rows!r}")


def _bad(line: int, reason: str, content: str | bytes) -> dict:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = text.rstrip("\r\n")
    return {"line": line, "reason": reason, "content": text if len(text) <= 80 else text[:77] + "..."}


def _csv_problem(message: str) -> str:
    if "unexpected end of data" in message:
        return "unparseable CSV: unterminated quoted field (a '\"' opens a field that is not closed on this line)"
    return f"unparseable CSV: {message}"


def _is_int(value: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", value.strip()) is not None


def _row_problem(row: list[str], num_labels: int) -> str | None:
    if len(row) != 3:
        return f"expected 3 fields (class, title, description), found {len(row)}"
    label = row[0].strip()
    if not _is_int(label):
        return f"class {label!r} is not an integer"
    if not 1 <= int(label) <= num_labels:
        return f"class {label} is outside 1..{num_labels}"
    if not row[1].strip() and not row[2].strip():
        return "empty text (title and description are both empty)"
    return None


def _bad_row_report(path: Path, bad: list[dict], max_reported: int) -> str:
    lines = [f"{path}: {len(bad)} malformed row(s)"]
    lines += [f"  line {item['line']}: {item['reason']}: {item['content']!r}" for item in bad[:max_reported]]
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
    _check_policy(on_bad_rows)
    data_dir = Path(data_dir).expanduser()
    hint = (
        f"Point data.data_dir (or the {DATA_DIR_ENV} environment variable) at a folder holding train.csv and "
        "test.csv in the original ag_news_csv format, or use data.source=hub on a machine with internet."
    )
    if not data_dir.is_dir():
        raise DataError(f"AG News data folder not found: {data_dir}\n{hint}")
    missing = [name for name in ("train.csv", "test.csv") if not (data_dir / name).is_file()]
    if missing:
        raise DataError(f"AG News data folder {data_dir} has no {' or '.join(missing)}\n{hint}")
    classes = data_dir / "classes.txt"
    if classes.is_file():
        found = read_classes(classes)
        if found != list(label_names):
            raise DataError(
                f"{classes} lists classes {found}, but data.label_names is {list(label_names)}: class k in the CSV "
                "files must be label_names[k-1]. Fix data.label_names (or classes.txt) so they agree, in order."
            )
    return {
        split: read_ag_news_csv(data_dir / f"{split}.csv", split, len(label_names), on_bad_rows)
        for split in ("train", "test")
    }


def load_hub(dataset: str = HUB_DATASET, revision: str | None = None, cache_dir: str | None = None) -> dict[str, Split]:
    """Load AG News from the Hugging Face hub (``text``, ``label`` 0-3; the text joins title and description)."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise DataError("data.source=hub needs the 'datasets' package") from exc
    from agnews.hub import describe_unreachable, hub_offline, unreachable_reason

    # Probe first: unreachable, the hub client would retry for ~24 s before failing. Offline mode uses the cache.
    reason = None if hub_offline("HF_DATASETS_OFFLINE") else unreachable_reason()
    if reason is not None:
        raise DataError(
            f"Could not load the dataset {dataset!r} from the Hugging Face hub: {describe_unreachable(reason)}.\n"
            f"Without network access, point at a local ag_news_csv folder: data.source=csv data.data_dir=/path "
            f"or export {DATA_DIR_ENV}=/path (or set HF_HUB_OFFLINE=1 to use a copy in the Hugging Face cache)."
        )
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
        if split not in loaded:
            raise DataError(f"The hub dataset {dataset!r} has no {split!r} split (found {sorted(loaded)})")
        rows = loaded[split]
        missing = [column for column in ("text", "label") if column not in rows.column_names]
        if missing:
            raise DataError(f"The hub dataset {dataset!r} ({split}) lacks column(s) {missing}; expected text, label")
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
