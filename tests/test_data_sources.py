"""Behaviour of the data sources: the real shared AG News files, malformed CSVs, folder checks, source selection."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agnews.data.sources import (
    AG_NEWS_LABELS,
    DATA_DIR_ENV,
    Split,
    load_csv_folder,
    load_source,
    read_ag_news_csv,
    resolve_source,
)
from agnews.errors import DataError

from conftest import LABELS, write_ag_news_csv

GOOD_ROWS = [
    ["1", "Embassy talks", "The minister met envoys."],
    ["2", "Cup final", "The striker scored twice."],
    ["3", "Shares rise", "Investors cheered earnings."],
    ["4", "New chip", "Researchers built a faster chip."],
]


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    """Write raw CSV lines (for malformed content that csv.writer would never produce)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def quoted(row: list[str]) -> str:
    return ",".join('"' + field.replace('"', '""') + '"' for field in row)


# --------------------------------------------------------------------------------------------- the real shared data


@pytest.fixture(scope="module")
def real_splits(shared_data_dir) -> dict[str, Split]:
    return load_csv_folder(shared_data_dir)


def test_real_test_csv_has_7600_rows_1900_per_class(real_splits):
    test = real_splits["test"]
    assert len(test) == 7600
    assert Counter(test.labels) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    assert test.bad_rows == []


def test_real_test_csv_first_row_is_business_fears_for_tn_pension(real_splits):
    test = real_splits["test"]
    assert test.labels[0] == 2
    assert AG_NEWS_LABELS[test.labels[0]] == "Business"
    assert test.texts[0].startswith("Fears for T N pension after talks Unions representing workers at Turner")
    assert test.ids[0] == "test-000000"


def test_real_ids_are_stable_unique_and_sequential(real_splits):
    for name, split in real_splits.items():
        assert split.ids == [f"{name}-{i:06d}" for i in range(len(split))]
    assert real_splits["test"].ids[-1] == "test-007599"
    assert real_splits["train"].ids[-1] == "train-063839"


def test_real_train_csv_has_63840_rows_no_bad_rows_and_documented_class_counts(real_splits):
    train = real_splits["train"]
    assert len(train) == 63840
    assert train.bad_rows == []
    # Counts from SOURCE.md: World 15,727; Sports 15,942; Business 15,701; Sci/Tech 16,470.
    assert Counter(train.labels) == {0: 15727, 1: 15942, 2: 15701, 3: 16470}
    assert all(text and text == text.strip() for text in train.texts)


def test_real_train_rows_with_empty_title_load_as_their_description(real_splits, shared_data_dir):
    with (shared_data_dir / "train.csv").open(newline="", encoding="utf-8") as handle:
        raw = list(csv.reader(handle))
    empty_title = [i for i, row in enumerate(raw) if row[1] == ""]
    assert len(empty_title) == 13666  # SOURCE.md: 21.4 % of the rows
    train = real_splits["train"]
    for i in empty_title[:500] + empty_title[-500:]:
        assert train.texts[i] == raw[i][2].strip()
        assert train.labels[i] == int(raw[i][0]) - 1
    with_title = next(i for i, row in enumerate(raw) if row[1])
    assert train.texts[with_title] == f"{raw[with_title][1].strip()} {raw[with_title][2].strip()}"


def test_real_folder_loads_through_load_source_with_the_env_variable(shared_data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data_dir))
    splits = load_source("auto", None, LABELS)
    assert {name: len(split) for name, split in splits.items()} == {"train": 63840, "test": 7600}


# ----------------------------------------------------------------------------------------------------- small files


def test_title_and_description_are_joined_and_an_empty_title_gives_the_description(tmp_path):
    path = write_ag_news_csv(
        tmp_path / "train.csv",
        [
            ["3", "  Shares rise ", " Investors cheered. "],
            ["2", "", "Cup Final The striker scored"],
            ["1", "Only title", ""],
        ],
    )
    split = read_ag_news_csv(path, "train")
    assert split.texts == ["Shares rise Investors cheered.", "Cup Final The striker scored", "Only title"]
    assert split.labels == [2, 1, 0]
    assert split.ids == ["train-000000", "train-000001", "train-000002"]
    assert split.name == "train"


def test_quotes_commas_and_backslashes_inside_fields_survive(tmp_path):
    path = write_ag_news_csv(tmp_path / "t.csv", [["4", 'Say "cheese", please', "a \\ b, c; d"]])
    assert read_ag_news_csv(path, "t").texts == ['Say "cheese", please a \\ b, c; d']


def test_crlf_line_ends_a_utf8_bom_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b'"1","a","b"\r\n\r\n"2","c","d"\r\n')
    split = read_ag_news_csv(path, "t")
    assert split.labels == [0, 1]
    assert split.texts == ["a b", "c d"]
    assert split.ids == ["t-000000", "t-000002"]  # ids follow the line, the blank line 2 is not a row
    assert split.bad_rows == []


# kind -> (the bad line, a regex for its reason in the report)
BAD_LINES = {
    "two fields": ('"1","only a title"', r"expected 3 fields \(class, title, description\), found 2"),
    "four fields": ('"1","t","d","extra"', r"expected 3 fields \(class, title, description\), found 4"),
    "label 0": ('"0","t","d"', r"class 0 is outside 1\.\.4"),
    "label 5": ('"5","t","d"', r"class 5 is outside 1\.\.4"),
    "label abc": ('"abc","t","d"', "class 'abc' is not an integer"),
    "empty label": ('"","t","d"', "class '' is not an integer"),
    "label 2.0": ('"2.0","t","d"', r"class '2\.0' is not an integer"),
    "superscript digit": ('"²","t","d"', "class '²' is not an integer"),
    "both texts empty": ('"3","",""', r"empty text \(title and description are both empty\)"),
    "blank texts": ('"3","  "," "', r"empty text \(title and description are both empty\)"),
    "unterminated quote": ('"2","Cup final","The striker scored', "unparseable CSV: unterminated quoted field"),
    "stray quote": ('"2","Cup "final","d"', "unparseable CSV: ',' expected after"),
    "garbage": ("garbage without any commas", "expected 3 fields .* found 1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_a_bad_row_fails_with_its_line_number_and_reason(tmp_path, kind):
    line, reason = BAD_LINES[kind]
    path = write_lines(tmp_path / "train.csv", [quoted(GOOD_ROWS[0]), line, quoted(GOOD_ROWS[1])])
    with pytest.raises(DataError, match=rf"train\.csv: 1 malformed row\(s\)\n  line 2: {reason}") as info:
        read_ag_news_csv(path, "train")
    assert "data.on_bad_rows=skip" in str(info.value)


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_skip_keeps_every_good_row_and_reports_the_bad_one(tmp_path, caplog, kind):
    line, reason = BAD_LINES[kind]
    lines = [quoted(GOOD_ROWS[0]), line, quoted(GOOD_ROWS[1]), quoted(GOOD_ROWS[2]), quoted(GOOD_ROWS[3])]
    path = write_lines(tmp_path / "train.csv", lines)
    with caplog.at_level(logging.WARNING, logger="agnews.data.sources"):
        split = read_ag_news_csv(path, "train", on_bad_rows="skip")
    # The line after an unterminated quote is not swallowed: all four good rows are there, with unshifted ids.
    assert split.labels == [0, 1, 2, 3]
    assert split.ids == ["train-000000", "train-000002", "train-000003", "train-000004"]
    assert split.texts[1] == "Cup final The striker scored twice."
    assert [item["line"] for item in split.bad_rows] == [2]
    assert split.bad_rows[0]["content"] == line
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 malformed row(s)" in warnings[0].getMessage()
    assert "line 2:" in warnings[0].getMessage()
    assert "data.on_bad_rows=skip" in warnings[0].getMessage()


def test_invalid_utf8_is_reported_on_its_own_line_and_the_rest_still_loads(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b'"1","a","b"\n"2","caf\xe9","d"\n"3","e","f"\n')
    with pytest.raises(DataError, match=r"1 malformed row\(s\)\n  line 2: not valid UTF-8"):
        read_ag_news_csv(path, "train")
    split = read_ag_news_csv(path, "train", on_bad_rows="skip")
    assert split.ids == ["train-000000", "train-000002"]
    assert split.texts == ["a b", "e f"]


def test_fail_lists_the_count_and_every_line_number(tmp_path):
    lines = [quoted(GOOD_ROWS[0]), '"0","t","d"', quoted(GOOD_ROWS[1]), '"x","t","d"', '"1","t"', quoted(GOOD_ROWS[2])]
    path = write_lines(tmp_path / "test.csv", lines)
    with pytest.raises(DataError) as info:
        read_ag_news_csv(path, "test")
    message = str(info.value)
    assert f"{path}: 3 malformed row(s)" in message
    assert "line 2: class 0 is outside 1..4" in message
    assert "line 4: class 'x' is not an integer" in message
    assert "line 5: expected 3 fields" in message
    assert "line 1:" not in message and "line 3:" not in message and "line 6:" not in message


def test_long_reports_are_capped_but_the_count_is_complete(tmp_path):
    lines = [quoted(GOOD_ROWS[0])] + ['"9","t","d"'] * 25
    path = write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(DataError) as info:
        read_ag_news_csv(path, "train", max_reported=20)
    message = str(info.value)
    assert "25 malformed row(s)" in message
    assert "line 21:" in message and "line 22:" not in message
    assert "... and 5 more" in message
    split = read_ag_news_csv(path, "train", on_bad_rows="skip")
    assert len(split.bad_rows) == 25 and len(split) == 1


def test_ids_of_good_rows_do_not_shift_when_a_bad_row_is_dropped(tmp_path):
    rows = [GOOD_ROWS[i % 4] for i in range(8)]
    clean = read_ag_news_csv(write_lines(tmp_path / "clean.csv", [quoted(r) for r in rows]), "train")
    broken_lines = [quoted(r) for r in rows]
    broken_lines[3] = '"1","unterminated'
    broken = read_ag_news_csv(write_lines(tmp_path / "broken.csv", broken_lines), "train", on_bad_rows="skip")
    assert broken.ids == [i for i in clean.ids if i != "train-000003"]
    kept = dict(zip(clean.ids, clean.texts))
    assert all(kept[i] == text for i, text in zip(broken.ids, broken.texts))


def test_a_header_row_is_reported_with_a_hint(tmp_path):
    path = write_lines(tmp_path / "train.csv", ['"Class Index","Title","Description"', quoted(GOOD_ROWS[0])])
    with pytest.raises(DataError, match=r"line 1: class 'Class Index' is not an integer \(a header row\?"):
        read_ag_news_csv(path, "train")


def test_a_file_with_only_bad_rows_is_an_error_even_with_skip(tmp_path):
    path = write_lines(tmp_path / "train.csv", ['"7","t","d"', '"8","t","d"'])
    with pytest.raises(DataError, match=r"train\.csv has no valid rows"):
        read_ag_news_csv(path, "train", on_bad_rows="skip")


def test_an_empty_file_is_an_error(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"test\.csv has no valid rows"):
        read_ag_news_csv(path, "test")


def test_an_unknown_bad_row_policy_is_an_error(make_ag_news_dir):
    folder = make_ag_news_dir(train_per_class=2, test_per_class=1)
    with pytest.raises(DataError, match=r"data\.on_bad_rows must be 'fail' or 'skip', got 'ignore'"):
        load_csv_folder(folder, on_bad_rows="ignore")


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"AG News test file not found: .*nothere\.csv"):
        read_ag_news_csv(tmp_path / "nothere.csv", "test")


# ------------------------------------------------------------------------------------------------------- folders


def test_synthetic_folder_loads_both_splits(make_ag_news_dir):
    folder = make_ag_news_dir(train_per_class=5, test_per_class=2)
    splits = load_csv_folder(folder, LABELS)
    assert {name: len(split) for name, split in splits.items()} == {"train": 20, "test": 8}
    assert Counter(splits["train"].labels) == {0: 5, 1: 5, 2: 5, 3: 5}


def test_a_missing_folder_names_the_path_and_how_to_point_at_one(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError) as info:
        load_csv_folder(missing)
    message = str(info.value)
    assert f"AG News data folder not found: {missing}" in message
    assert "data.data_dir" in message and DATA_DIR_ENV in message


def test_a_folder_without_test_csv_names_the_file_and_how_to_fix_it(make_ag_news_dir):
    folder = make_ag_news_dir(train_per_class=2, test_per_class=1)
    (folder / "test.csv").unlink()
    with pytest.raises(DataError) as info:
        load_csv_folder(folder)
    message = str(info.value)
    assert f"AG News data folder {folder} has no test.csv" in message
    assert "data.data_dir" in message and DATA_DIR_ENV in message


def test_a_folder_without_either_csv_names_both(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"has no train\.csv or test\.csv"):
        load_csv_folder(tmp_path / "empty")


def test_a_classes_txt_that_disagrees_with_label_names_is_an_error(make_ag_news_dir):
    folder = make_ag_news_dir(train_per_class=2, test_per_class=1)
    (folder / "classes.txt").write_text("Sports\nWorld\nBusiness\nSci/Tech\n")
    with pytest.raises(DataError) as info:
        load_csv_folder(folder, LABELS)
    message = str(info.value)
    assert "classes.txt lists classes ['Sports', 'World', 'Business', 'Sci/Tech']" in message
    assert "data.label_names is ['World', 'Sports', 'Business', 'Sci/Tech']" in message


def test_a_folder_without_classes_txt_still_loads(make_ag_news_dir):
    folder = make_ag_news_dir(train_per_class=2, test_per_class=1)
    (folder / "classes.txt").unlink()
    assert len(load_csv_folder(folder)["train"]) == 8


def test_bad_rows_in_a_folder_fail_by_default_and_are_kept_on_the_split_with_skip(make_ag_news_dir):
    folder = make_ag_news_dir(train_per_class=3, test_per_class=1)
    with (folder / "train.csv").open("a", encoding="utf-8") as handle:
        handle.write('"6","bad","label"\n')
    with pytest.raises(DataError, match=r"train\.csv: 1 malformed row\(s\)\n  line 13: class 6 is outside 1\.\.4"):
        load_source("csv", str(folder), LABELS)
    splits = load_source("csv", str(folder), LABELS, on_bad_rows="skip")
    assert len(splits["train"]) == 12
    assert [row["line"] for row in splits["train"].bad_rows] == [13]
    assert splits["test"].bad_rows == []


# ----------------------------------------------------------------------------------------------- source selection


def test_an_unknown_source_is_an_error():
    with pytest.raises(DataError, match=r"data\.source must be one of auto, csv, hub; got 'ftp'"):
        resolve_source("ftp", None)
    with pytest.raises(DataError, match=r"data\.source must be one of auto, csv, hub; got 'CSV'"):
        load_source("CSV", "/tmp")


def test_auto_picks_csv_when_the_env_variable_is_set_and_the_hub_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_source("auto", None) == "hub"
    assert resolve_source("auto", "") == "hub"
    assert resolve_source("auto", str(tmp_path)) == "csv"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_source("auto", None) == "csv"
    assert resolve_source("hub", None) == "hub"  # an explicit choice wins
    assert resolve_source("csv", None) == "csv"


def test_csv_without_any_folder_says_what_to_set(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=rf"data\.source=csv needs data\.data_dir or the {DATA_DIR_ENV} environment"):
        load_source("csv", None)


def test_auto_with_the_env_variable_loads_that_folder(make_ag_news_dir, monkeypatch):
    folder = make_ag_news_dir(train_per_class=4, test_per_class=2)
    monkeypatch.setenv(DATA_DIR_ENV, str(folder))
    splits = load_source("auto", None, LABELS)
    assert (len(splits["train"]), len(splits["test"])) == (16, 8)


def test_an_explicit_data_dir_wins_over_the_env_variable(make_ag_news_dir, monkeypatch, tmp_path):
    folder = make_ag_news_dir(train_per_class=3, test_per_class=1)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert len(load_source("auto", str(folder), LABELS)["train"]) == 12


_HUB_PROBE = """
import json, sys, time
from agnews.data.sources import load_hub, load_source
from agnews.errors import DataError
out = {}
calls = (("load_hub", lambda: load_hub(cache_dir=sys.argv[1])), ("load_source", lambda: load_source("hub", None)))
for name, call in calls:
    start = time.perf_counter()
    try:
        call()
        out[name] = {"error": None}
    except DataError as exc:
        out[name] = {"error": "DataError", "message": str(exc), "seconds": time.perf_counter() - start}
    except Exception as exc:
        out[name] = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
"""


def test_the_hub_without_network_fails_fast_and_points_at_the_csv_source(tmp_path, monkeypatch):
    # The hub libraries read their offline switches at import time, so the probe runs in a fresh interpreter.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _HUB_PROBE, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=90,
        env=dict(os.environ),
        cwd=Path(__file__).resolve().parent.parent,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("load_hub", "load_source"):
        assert outcome[name]["error"] == "DataError", outcome
        message = outcome[name]["message"]
        assert "Could not load the dataset 'fancyzhx/ag_news' from the Hugging Face hub" in message
        assert "data.source=csv" in message and DATA_DIR_ENV in message
        assert outcome[name]["seconds"] < 10
    assert elapsed < 60


def test_split_lists_must_have_equal_lengths_and_subset_keeps_order():
    with pytest.raises(ValueError, match="same length"):
        Split("x", ["a", "b"], ["t"], [0, 1])
    split = Split("x", ["a", "b", "c"], ["ta", "tb", "tc"], [0, 1, 2])
    sub = split.subset([2, 0], name="y")
    assert (sub.name, sub.ids, sub.texts, sub.labels) == ("y", ["c", "a"], ["tc", "ta"], [2, 0])
