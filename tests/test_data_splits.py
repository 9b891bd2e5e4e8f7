"""Stratified, seeded validation and training subsets; the test split is never touched."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from agnews.data.sources import Split, load_csv_folder
from agnews.data.splits import make_splits, stratified_take
from agnews.errors import ConfigError

from conftest import LABELS


def make_split(counts: dict[int, int], name: str = "train", seed: int = 0) -> Split:
    """A shuffled split with ``counts[label]`` rows per label and ids ``{name}-{i:06d}``."""
    labels = [label for label, count in counts.items() for _ in range(count)]
    np.random.default_rng(seed).shuffle(labels)
    ids = [f"{name}-{i:06d}" for i in range(len(labels))]
    return Split(name, ids, [f"text {i} of class {y}" for i, y in enumerate(labels)], labels)


UNEVEN = {0: 400, 1: 250, 2: 100, 3: 50}  # 800 rows, clearly unequal proportions


def assert_proportional(part: Split, whole: Split) -> None:
    """Each class's count in ``part`` is within one row of its exact share of ``whole``."""
    whole_counts = Counter(whole.labels)
    part_counts = Counter(part.labels)
    for label, count in whole_counts.items():
        expected = count * len(part) / len(whole)
        assert abs(part_counts[label] - expected) <= 1, (label, part_counts[label], expected)


@pytest.mark.parametrize("size, expected", [(0.1, 80), (0.05, 40), (123, 123), (0.5, 400), (2000.0 / 10, 200)])
def test_take_has_the_requested_size_and_class_proportions(size, expected):
    train = make_split(UNEVEN)
    taken, rest = stratified_take(train, size, seed=3, what="data.val_size")
    assert len(taken) == expected
    assert len(rest) == len(train) - expected
    assert_proportional(taken, train)
    assert_proportional(rest, train)


def test_taken_and_rest_are_disjoint_cover_everything_and_keep_file_order():
    train = make_split(UNEVEN)
    taken, rest = stratified_take(train, 0.2, seed=1, what="data.val_size")
    assert set(taken.ids).isdisjoint(rest.ids)
    assert sorted(taken.ids + rest.ids) == train.ids
    assert taken.ids == sorted(taken.ids) and rest.ids == sorted(rest.ids)
    by_id = dict(zip(train.ids, zip(train.texts, train.labels)))
    assert all(by_id[i] == (t, y) for i, t, y in zip(taken.ids, taken.texts, taken.labels))


def test_same_seed_same_rows_different_seed_different_rows():
    train = make_split(UNEVEN)
    first, _ = stratified_take(train, 100, seed=7, what="data.val_size")
    again, _ = stratified_take(train, 100, seed=7, what="data.val_size")
    other, _ = stratified_take(train, 100, seed=8, what="data.val_size")
    assert first.ids == again.ids
    assert first.ids != other.ids
    assert len(set(first.ids) & set(other.ids)) < 60  # a different draw, not a near copy


def test_none_and_the_whole_split_take_everything():
    train = make_split(UNEVEN)
    for size in (None, len(train), 1.0):
        taken, rest = stratified_take(train, size, seed=0, what="data.train_size")
        assert taken is train and rest is None


@pytest.mark.parametrize(
    "size, message",
    [
        (0, r"data\.val_size=0 must be at least 1"),
        (-1, r"data\.val_size=-1 must be at least 1"),
        (1.5, r"data\.val_size=1\.5: a fraction must lie in \(0, 1\]; a row count must be a whole number"),
        (0.0, r"data\.val_size=0\.0: must be a row count \(int >= 1\) or a fraction"),
        (-0.2, r"data\.val_size=-0\.2: must be a row count"),
        (float("nan"), r"data\.val_size=nan: must be a row count"),
        (801, r"data\.val_size=801 asks for 801 rows, but the train split has only 800"),
        (5000.0, r"data\.val_size=5000\.0 asks for 5000 rows, but the train split has only 800"),
        ("0.1", r"data\.val_size must be a row count \(int >= 1\) or a fraction \(0 < float <= 1\), got '0\.1'"),
        ("abc", r"data\.val_size must be a row count .* got 'abc'"),
        (True, r"data\.val_size must be a row count .* got True"),
        ([10], r"data\.val_size must be a row count .* got \[10\]"),
        (3, r"data\.val_size=3 \(3 of 800 rows of the train split\) leaves fewer rows than classes \(4\)"),
        (798, r"data\.val_size=798 \(798 of 800 rows of the train split\) leaves fewer rows than classes \(4\)"),
        (0.001, r"data\.val_size=0\.001 \(1 of 800 rows .*\) leaves fewer rows than classes"),
    ],
)
def test_bad_sizes_are_config_errors_that_say_what_is_wrong(size, message):
    with pytest.raises(ConfigError, match=message):
        stratified_take(make_split(UNEVEN), size, seed=0, what="data.val_size")


def test_numpy_integers_and_floats_are_accepted():
    train = make_split(UNEVEN)
    assert len(stratified_take(train, np.int64(40), seed=0, what="data.val_size")[0]) == 40
    assert len(stratified_take(train, np.float64(0.25), seed=0, what="data.val_size")[0]) == 200


def test_a_class_with_one_row_cannot_be_stratified_and_says_so():
    train = make_split({0: 50, 1: 50, 2: 50, 3: 1})
    message = r"data\.val_size=20: cannot take a stratified subset of the train split: .*1 member"
    with pytest.raises(ConfigError, match=message):
        stratified_take(train, 20, seed=0, what="data.val_size")


def test_make_splits_carves_val_from_train_then_a_train_subset_and_leaves_test_alone():
    train = make_split(UNEVEN)
    test = make_split({0: 10, 1: 10, 2: 10, 3: 10}, name="test")
    splits = make_splits(train, test, val_size=0.1, train_size=200, seed=42)
    assert set(splits) == {"train", "val", "test"}
    assert splits["test"] is test
    assert (splits["test"].name, len(splits["test"]), splits["test"].ids[0]) == ("test", 40, "test-000000")
    assert (splits["val"].name, len(splits["val"])) == ("val", 80)
    assert (splits["train"].name, len(splits["train"])) == ("train", 200)
    assert set(splits["val"].ids).isdisjoint(splits["train"].ids)
    assert set(splits["val"].ids) | set(splits["train"].ids) <= set(train.ids)
    assert_proportional(splits["val"], train)
    assert_proportional(splits["train"], train)
    assert train.name == "train" and len(train) == 800  # the input split is not modified


def test_make_splits_without_train_size_trains_on_every_row_not_in_val():
    train = make_split(UNEVEN)
    splits = make_splits(train, make_split({0: 2, 1: 2, 2: 2, 3: 2}, "test"), val_size=50, train_size=None, seed=0)
    assert len(splits["val"]) == 50 and len(splits["train"]) == 750
    assert sorted(splits["val"].ids + splits["train"].ids) == train.ids


def test_make_splits_is_reproducible_and_seed_dependent():
    train = make_split(UNEVEN)
    test = make_split({0: 2, 1: 2, 2: 2, 3: 2}, "test")
    a = make_splits(train, test, 0.1, 0.5, seed=5)
    b = make_splits(train, test, 0.1, 0.5, seed=5)
    c = make_splits(train, test, 0.1, 0.5, seed=6)
    assert a["val"].ids == b["val"].ids and a["train"].ids == b["train"].ids
    assert a["val"].ids != c["val"].ids and a["train"].ids != c["train"].ids


@pytest.mark.parametrize(
    "val_size, train_size, message",
    [
        (800, None, r"data\.val_size=800 takes every one of the 800 training rows; nothing is left to train on"),
        (1.0, None, r"data\.val_size=1\.0 takes every one of the 800 training rows"),
        (0.1, 0, r"data\.train_size=0 must be at least 1"),
        (0.1, 1000, r"data\.train_size=1000 asks for 1000 rows, but the train split has only 720"),
        (0.1, "all", r"data\.train_size must be a row count .* got 'all'"),
    ],
)
def test_make_splits_reports_bad_sizes_by_their_config_name(val_size, train_size, message):
    with pytest.raises(ConfigError, match=message):
        make_splits(make_split(UNEVEN), make_split({0: 1}, "test"), val_size, train_size, seed=0)


def test_splits_of_a_real_folder_keep_ids_and_labels_aligned(make_ag_news_dir):
    raw = load_csv_folder(make_ag_news_dir(train_per_class=25, test_per_class=5), LABELS)
    splits = make_splits(raw["train"], raw["test"], val_size=0.2, train_size=40, seed=1)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (40, 20, 20)
    assert Counter(splits["val"].labels) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert Counter(splits["train"].labels) == {0: 10, 1: 10, 2: 10, 3: 10}
    original = dict(zip(raw["train"].ids, zip(raw["train"].texts, raw["train"].labels)))
    for name in ("train", "val"):
        split = splits[name]
        assert all(original[i] == (t, y) for i, t, y in zip(split.ids, split.texts, split.labels))
