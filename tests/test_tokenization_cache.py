"""Tokenization: ids equal the tokenizer's own, truncation holds, and the on-disk cache is keyed and self-healing."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest

from agnews.data.tokenization import TokenizedTexts, cache_key, tokenize_texts, tokenizer_fingerprint
from agnews.errors import ConfigError

TEXTS = [
    "Fears for T N pension after talks Unions representing workers at Turner Newall say they are disappointed.",
    "The Race is On: Second Private Team Sets Launch Date for Human Spaceflight (SPACE.com)",
    "Ky. Company Wins Grant to Study Peptides (AP) AP - A company founded by a chemistry researcher",
    "",
    "short",
    " ".join(["investors cheered the quarterly earnings report"] * 40),  # far longer than any max_length below
]

LOGGER = "agnews.data.tokenization"


@pytest.fixture(scope="module")
def tokenizer():
    from agnews.models.factory import offline_tokenizer

    return offline_tokenizer("right")


@pytest.fixture
def fresh_tokenizer():
    from agnews.models.factory import offline_tokenizer

    return offline_tokenizer("right")


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*")) if folder.exists() else []


def as_lists(tokenized: TokenizedTexts) -> list[list[int]]:
    return [tokenized[i].tolist() for i in range(len(tokenized))]


def test_ids_equal_the_tokenizers_own_output(tokenizer):
    tokenized = tokenize_texts(tokenizer, TEXTS, max_length=32)
    expected = tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"]
    assert as_lists(tokenized) == expected
    assert len(tokenized) == len(TEXTS)
    assert tokenized.lengths.tolist() == [len(x) for x in expected]
    # [CLS] fears for t n pension after talks
    assert as_lists(tokenized)[0][:8] == [101, 10069, 2005, 1056, 1050, 11550, 2044, 7566]
    assert as_lists(tokenized)[3] == [101, 102]  # an empty text still gets [CLS] [SEP]


def test_batches_give_the_same_ids_as_one_call(tokenizer):
    whole = tokenize_texts(tokenizer, TEXTS, max_length=24, batch_size=2048)
    batched = tokenize_texts(tokenizer, TEXTS, max_length=24, batch_size=2)
    assert as_lists(whole) == as_lists(batched)


@pytest.mark.parametrize("max_length", [8, 16, 64])
def test_truncation_to_max_length_keeps_the_special_tokens(tokenizer, max_length):
    tokenized = tokenize_texts(tokenizer, TEXTS, max_length=max_length)
    assert tokenized.lengths.max() == max_length
    long = tokenized[5].tolist()
    assert len(long) == max_length and long[0] == tokenizer.cls_token_id and long[-1] == tokenizer.sep_token_id
    assert tokenized[4].tolist() == [101, 2460, 102]  # short texts are not padded
    assert tokenized.flat_ids.dtype == np.int32 and tokenized.offsets[-1] == tokenized.lengths.sum()


def test_a_second_identical_call_loads_the_cache_file(tokenizer, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = tokenize_texts(tokenizer, TEXTS, 32, cache)
    files = cache_files(cache)
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    stat = files[0].stat()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        second = tokenize_texts(tokenizer, TEXTS, 32, cache)
    assert cache_files(cache) == files
    assert files[0].stat().st_mtime_ns == stat.st_mtime_ns and files[0].stat().st_ino == stat.st_ino
    assert [r.getMessage() for r in caplog.records] == [f"Tokenization cache hit: {files[0]}"]
    assert as_lists(second) == as_lists(first)
    assert np.array_equal(second.offsets, first.offsets)


def test_the_key_does_not_depend_on_what_the_tokenizer_did_before(fresh_tokenizer, tmp_path, caplog):
    """A tokenizer call leaves its max length in the backend's state; the cache key must ignore that."""
    key_before = cache_key(fresh_tokenizer, TEXTS, 32)
    tokenize_texts(fresh_tokenizer, TEXTS, 32, tmp_path)
    fresh_tokenizer(["anything"], truncation=True, max_length=7)  # e.g. another split or an export in between
    assert cache_key(fresh_tokenizer, TEXTS, 32) == key_before
    with caplog.at_level(logging.INFO, logger=LOGGER):
        tokenize_texts(fresh_tokenizer, TEXTS, 32, tmp_path)
    assert any("Tokenization cache hit" in r.getMessage() for r in caplog.records)
    assert len(cache_files(tmp_path)) == 1


def test_a_new_tokenizer_instance_finds_the_entry_of_a_used_one(tokenizer, fresh_tokenizer, tmp_path):
    tokenizer(["warm up"], truncation=True, max_length=5)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(fresh_tokenizer)
    tokenize_texts(tokenizer, TEXTS, 20, tmp_path)
    tokenize_texts(fresh_tokenizer, TEXTS, 20, tmp_path)
    assert len(cache_files(tmp_path)) == 1


def test_a_different_max_length_is_a_different_entry(tokenizer, tmp_path):
    a = tokenize_texts(tokenizer, TEXTS, 16, tmp_path)
    b = tokenize_texts(tokenizer, TEXTS, 24, tmp_path)
    assert cache_key(tokenizer, TEXTS, 16) != cache_key(tokenizer, TEXTS, 24)
    assert len(cache_files(tmp_path)) == 2
    assert a.lengths.max() == 16 and b.lengths.max() == 24


@pytest.mark.parametrize(
    "changed",
    [
        TEXTS[:-1],  # one text fewer
        [TEXTS[0] + "!"] + TEXTS[1:],  # one character more
        list(reversed(TEXTS)),  # the same texts in another order
        ["a b", "c"] + TEXTS[2:],  # the boundary between two texts moved
    ],
    ids=["fewer", "edited", "reordered", "moved-boundary"],
)
def test_different_texts_are_a_different_entry(tokenizer, tmp_path, changed):
    base = ["a", "b c"] + TEXTS[2:]
    assert cache_key(tokenizer, changed, 32) != cache_key(tokenizer, base, 32)
    tokenize_texts(tokenizer, base, 32, tmp_path)
    again = tokenize_texts(tokenizer, changed, 32, tmp_path)
    assert len(cache_files(tmp_path)) == 2
    assert as_lists(again) == tokenizer(changed, truncation=True, max_length=32)["input_ids"]


def test_a_different_vocabulary_is_a_different_entry_with_different_ids(tokenizer, tmp_path):
    extended = copy.deepcopy(tokenizer)
    extended.add_tokens(["zorblax"])
    texts = ["the zorblax market"]
    plain = tokenize_texts(tokenizer, texts, 16, tmp_path)
    other = tokenize_texts(extended, texts, 16, tmp_path)
    assert tokenizer_fingerprint(extended) != tokenizer_fingerprint(tokenizer)
    assert len(cache_files(tmp_path)) == 2
    assert plain[0].tolist() == [101, 1996, 1062, 2953, 28522, 2595, 3006, 102]
    assert other[0].tolist() == [101, 1996, 30522, 3006, 102]


def test_truncation_side_changes_the_key_and_the_ids(tokenizer, tmp_path):
    left = copy.deepcopy(tokenizer)
    left.truncation_side = "left"
    right_ids = tokenize_texts(tokenizer, TEXTS, 8, tmp_path)[0].tolist()
    left_ids = tokenize_texts(left, TEXTS, 8, tmp_path)[0].tolist()
    assert len(cache_files(tmp_path)) == 2
    assert right_ids == tokenizer(TEXTS[0], truncation=True, max_length=8)["input_ids"]
    assert left_ids == left(TEXTS[0], truncation=True, max_length=8)["input_ids"]
    assert right_ids != left_ids


def test_padding_side_does_not_change_the_cached_ids_so_it_shares_the_entry(tokenizer, tmp_path):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    assert tokenizer_fingerprint(left) == tokenizer_fingerprint(tokenizer)
    right_ids = as_lists(tokenize_texts(tokenizer, TEXTS, 16, tmp_path))
    assert as_lists(tokenize_texts(left, TEXTS, 16, None)) == right_ids  # computed, not cached: ids are unpadded
    assert as_lists(tokenize_texts(left, TEXTS, 16, tmp_path)) == right_ids
    assert len(cache_files(tmp_path)) == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_cache_file_is_rebuilt_with_a_warning(tokenizer, tmp_path, caplog, damage):
    original = tokenize_texts(tokenizer, TEXTS, 32, tmp_path)
    (path,) = cache_files(tmp_path)
    good_bytes = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        rebuilt = tokenize_texts(tokenizer, TEXTS, 32, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"Ignoring unreadable tokenization cache {path}")
    assert warnings[0].endswith("re-tokenizing")
    assert as_lists(rebuilt) == as_lists(original)
    assert path.read_bytes() == good_bytes  # rewritten in full
    assert cache_files(tmp_path) == [path]  # no temporary file left behind


def test_a_readable_but_inconsistent_cache_file_is_rebuilt(tokenizer, tmp_path, caplog):
    from safetensors.numpy import save_file

    original = tokenize_texts(tokenizer, TEXTS, 32, tmp_path)
    (path,) = cache_files(tmp_path)
    save_file({"flat_ids": np.arange(5, dtype=np.int32), "offsets": np.array([0, 5], dtype=np.int64)}, str(path))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rebuilt = tokenize_texts(tokenizer, TEXTS, 32, tmp_path)
    assert "offsets do not describe 6 texts over 5 token ids" in caplog.text
    assert as_lists(rebuilt) == as_lists(original)


def test_an_unwritable_cache_folder_warns_and_still_returns_the_ids(tokenizer, tmp_path, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        tokenized = tokenize_texts(tokenizer, TEXTS, 16, blocker / "tokenized")
    assert as_lists(tokenized) == tokenizer(TEXTS, truncation=True, max_length=16)["input_ids"]
    assert "Could not write the tokenization cache" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_the_cache_folder_is_created_and_holds_only_the_final_file(tokenizer, tmp_path):
    folder = tmp_path / "deep" / "cache"
    tokenize_texts(tokenizer, TEXTS, 16, folder)
    files = cache_files(folder)
    assert [p.name for p in files] == [f"{cache_key(tokenizer, TEXTS, 16)}.safetensors"]


@pytest.mark.parametrize("max_length", [0, -5, "64", 12.5, True, None])
def test_an_invalid_max_length_is_a_config_error(tokenizer, max_length):
    with pytest.raises(ConfigError, match=r"data\.max_length must be a positive integer \(tokens per text\), got "):
        tokenize_texts(tokenizer, TEXTS, max_length)


def test_tokenized_texts_slices_ragged_ids():
    tokenized = TokenizedTexts.from_lists([[1, 2, 3], [], [7], [4, 5]])
    assert len(tokenized) == 4
    assert tokenized.lengths.tolist() == [3, 0, 1, 2]
    assert tokenized.offsets.tolist() == [0, 3, 3, 4, 6]
    assert [tokenized[i].tolist() for i in range(4)] == [[1, 2, 3], [], [7], [4, 5]]
    empty = TokenizedTexts.from_lists([])
    assert len(empty) == 0 and empty.offsets.tolist() == [0]
