"""Dynamic padding (both sides, Longformer's global mask) and the length-grouped / sorted batch samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from agnews.data.batching import (
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    SortedEvalBatchSampler,
    TokenizedDataset,
)
from agnews.data.tokenization import TokenizedTexts

ITEMS = [
    {"index": 4, "input_ids": np.array([5, 6, 7], dtype=np.int32), "labels": 2},
    {"index": 0, "input_ids": np.array([8], dtype=np.int32), "labels": 0},
    {"index": 9, "input_ids": [9, 10], "labels": 3},
]


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


def assert_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype
    assert torch.equal(actual, expected), f"\n{actual}\n!=\n{expected}"


# ----------------------------------------------------------------------------------------------------- collator


def test_right_padding_gives_exact_ids_mask_labels_and_index():
    batch = DynamicPaddingCollator(pad_token_id=1, padding_side="right")(ITEMS)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert_equal(batch["input_ids"], t([[5, 6, 7], [8, 1, 1], [9, 10, 1]]))
    assert_equal(batch["attention_mask"], t([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    assert_equal(batch["labels"], t([2, 0, 3]))
    assert_equal(batch["index"], t([4, 0, 9]))


def test_left_padding_puts_the_pads_first():
    batch = DynamicPaddingCollator(pad_token_id=1, padding_side="left")(ITEMS)
    assert_equal(batch["input_ids"], t([[5, 6, 7], [1, 1, 8], [1, 9, 10]]))
    assert_equal(batch["attention_mask"], t([[1, 1, 1], [0, 0, 1], [0, 1, 1]]))
    assert_equal(batch["labels"], t([2, 0, 3]))


@pytest.mark.parametrize(
    "side, ids, mask",
    [
        ("right", [[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 0, 0]], [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]),
        ("left", [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 9, 10]], [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]]),
    ],
)
def test_pad_to_multiple_of_rounds_the_width_up(side, ids, mask):
    batch = DynamicPaddingCollator(pad_token_id=0, padding_side=side, pad_to_multiple_of=4)(ITEMS)
    assert_equal(batch["input_ids"], t(ids))
    assert_equal(batch["attention_mask"], t(mask))


def test_pad_to_multiple_of_keeps_a_width_that_is_already_a_multiple():
    batch = DynamicPaddingCollator(pad_token_id=0, pad_to_multiple_of=3)(ITEMS)
    assert batch["input_ids"].shape == (3, 3)
    batch = DynamicPaddingCollator(pad_token_id=0, pad_to_multiple_of=8)(ITEMS[1:2])
    assert_equal(batch["input_ids"], t([[8, 0, 0, 0, 0, 0, 0, 0]]))


@pytest.mark.parametrize(
    "side, multiple, expected",
    [
        ("right", None, [[1, 0, 0], [1, 0, 0], [1, 0, 0]]),
        ("left", None, [[1, 0, 0], [0, 0, 1], [0, 1, 0]]),
        ("right", 4, [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]),
        ("left", 4, [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]),
    ],
)
def test_global_attention_marks_the_first_real_token_on_either_side(side, multiple, expected):
    collate = DynamicPaddingCollator(
        0, padding_side=side, pad_to_multiple_of=multiple, global_attention_first_token=True
    )
    batch = collate(ITEMS)
    assert_equal(batch["global_attention_mask"], t(expected))
    # the marked position always holds a real token, and it is the first one
    for row in range(3):
        first = int(batch["attention_mask"][row].nonzero()[0])
        assert batch["global_attention_mask"][row].nonzero().flatten().tolist() == [first]


def test_no_global_attention_mask_unless_asked():
    assert "global_attention_mask" not in DynamicPaddingCollator(0)(ITEMS)


def test_an_unknown_padding_side_is_rejected():
    with pytest.raises(ValueError, match=r"padding_side must be 'left' or 'right', got 'middle'"):
        DynamicPaddingCollator(0, padding_side="middle")


# ------------------------------------------------------------------------------------------------------- dataset


def test_dataset_items_carry_index_ids_and_label():
    dataset = TokenizedDataset(TokenizedTexts.from_lists([[101, 7, 102], [101, 102]]), [3, 1])
    assert len(dataset) == 2
    item = dataset[0]
    assert item["index"] == 0 and item["labels"] == 3 and item["input_ids"].tolist() == [101, 7, 102]
    assert dataset.lengths.tolist() == [3, 2]
    with pytest.raises(ValueError, match="tokenized texts and labels differ in length"):
        TokenizedDataset(TokenizedTexts.from_lists([[1]]), [0, 1])


def test_a_dataloader_with_the_collator_pads_each_batch_to_its_own_longest():
    rng = np.random.default_rng(0)
    ids = [list(range(1, n + 1)) for n in rng.integers(1, 30, size=50)]
    dataset = TokenizedDataset(TokenizedTexts.from_lists(ids), [i % 4 for i in range(50)])
    loader = DataLoader(
        dataset, batch_sampler=SortedEvalBatchSampler(dataset.lengths, 8), collate_fn=DynamicPaddingCollator(0)
    )
    seen = []
    for batch in loader:
        lengths = [len(ids[i]) for i in batch["index"].tolist()]
        assert batch["input_ids"].shape == (len(lengths), max(lengths))
        assert batch["attention_mask"].sum(dim=1).tolist() == lengths
        for row, i in enumerate(batch["index"].tolist()):
            assert batch["input_ids"][row, : len(ids[i])].tolist() == ids[i]
            assert batch["labels"][row].item() == i % 4
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(50))


# ------------------------------------------------------------------------------------------------------ samplers

LENGTHS = np.random.default_rng(123).integers(4, 129, size=1000)


def flatten(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def mean_spread(batches: list[list[int]], lengths: np.ndarray) -> float:
    return float(np.mean([lengths[b].max() - lengths[b].min() for b in batches]))


@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_index_exactly_once_per_epoch(group_by_length):
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=3, group_by_length=group_by_length)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(flatten(batches)) == list(range(1000))
        assert len(batches) == len(sampler) == 63
        assert sorted(len(b) for b in batches)[0] == 1000 - 62 * 16  # one short batch, the rest full
        assert all(len(b) == 16 for b in batches if len(b) != 8)


def test_length_grouped_batches_have_similar_lengths():
    grouped = list(LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=0))
    shuffled = list(LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=0, group_by_length=False))
    grouped_spread, random_spread = mean_spread(grouped, LENGTHS), mean_spread(shuffled, LENGTHS)
    assert random_spread > 80  # uniform lengths 4..128: random batches span most of the range
    assert grouped_spread < 0.1 * random_spread
    padding = lambda batches: sum(LENGTHS[b].max() * len(b) - LENGTHS[b].sum() for b in batches)  # noqa: E731
    assert padding(grouped) < 0.1 * padding(shuffled)


def test_batch_order_is_still_shuffled_when_grouping_by_length():
    batches = list(LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=0))
    maxima = [LENGTHS[b].max() for b in batches]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_set_epoch_changes_the_order_and_the_same_seed_and_epoch_repeat_it():
    a = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=42)
    b = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=42)
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch0 != epoch1
    assert list(a) == epoch1  # iterating again within an epoch gives the same order
    b.set_epoch(1)
    assert list(b) == epoch1  # a fresh sampler (a resumed run) at the same seed and epoch sees the same batches
    b.set_epoch(0)
    assert list(b) == epoch0
    assert list(LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=43)) != epoch0


def test_the_order_is_drawn_at_the_first_batch_not_when_the_iterator_is_made():
    """Lightning makes a resumed epoch's iterator before it calls set_epoch; the epoch must still apply."""
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=42)
    iterator = iter(sampler)
    sampler.set_epoch(1)
    reference = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=42)
    reference.set_epoch(1)
    assert list(iterator) == list(reference)


def test_lightning_reaches_set_epoch_through_the_dataloader():
    """Lightning only calls set_epoch on ``loader.sampler`` and ``loader.batch_sampler.sampler``."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=42)
    dataset = TokenizedDataset(TokenizedTexts.from_lists([[1] * n for n in LENGTHS]), [0] * len(LENGTHS))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=DynamicPaddingCollator(0))
    _set_sampler_epoch(loader, 5)
    assert sampler.epoch == 5
    reference = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=42)
    reference.set_epoch(5)
    assert [b["index"].tolist() for b in loader] == list(reference)


def test_without_shuffle_or_grouping_batches_follow_the_data_order():
    sampler = LengthGroupedBatchSampler(np.ones(10), batch_size=4, shuffle=False, group_by_length=False)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    sampler.set_epoch(3)
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_drop_last_keeps_only_full_batches():
    sampler = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=1, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 62
    assert all(len(b) == 16 for b in batches)
    assert len(set(flatten(batches))) == 992


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_replicas_get_disjoint_shards_of_equal_length(epoch):
    ranks = [LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=9, num_replicas=2, rank=r) for r in (0, 1)]
    single = LengthGroupedBatchSampler(LENGTHS, batch_size=16, seed=9)
    for sampler in ranks + [single]:
        sampler.set_epoch(epoch)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == len(ranks[1]) == 31
    assert set(flatten(shards[0])).isdisjoint(flatten(shards[1]))
    # together they are the single-process batches, interleaved, less the odd batch out
    everything = list(single)
    assert shards[0] == everything[0:62:2] and shards[1] == everything[1:62:2]
    assert len(set(flatten(shards[0]) + flatten(shards[1]))) == sum(len(b) for b in everything[:62])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"mega_batch_factor": 0}, "mega_batch_factor must be >= 1, got 0"),
        ({"num_replicas": 2, "rank": 2}, r"0 <= rank < num_replicas, got rank 2 of 2"),
        ({"num_replicas": 0}, r"need num_replicas >= 1"),
    ],
)
def test_invalid_sampler_settings_are_rejected(kwargs, message):
    settings = {"batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        LengthGroupedBatchSampler(LENGTHS, **settings)


def test_sorted_eval_batches_cover_every_index_once_longest_first():
    sampler = SortedEvalBatchSampler(LENGTHS, batch_size=64)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 16
    assert sorted(flatten(batches)) == list(range(1000))
    assert [len(b) for b in batches] == [64] * 15 + [40]
    ordered = LENGTHS[flatten(batches)]
    assert np.all(np.diff(ordered) <= 0)
    assert list(sampler) == batches  # deterministic


def test_sorted_eval_batches_keep_file_order_among_equal_lengths():
    assert list(SortedEvalBatchSampler(np.array([2, 5, 2, 5, 2]), batch_size=2)) == [[1, 3], [0, 2], [4]]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        SortedEvalBatchSampler(np.array([1, 2]), batch_size=0)
