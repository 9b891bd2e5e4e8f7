"""The Lightning DataModule end to end on small ag_news_csv folders: sizes, batches, caching, config, epochs."""

from __future__ import annotations

import copy
import logging
from collections import Counter

import pytest
import torch

from agnews.data.batching import LengthGroupedBatchSampler
from agnews.data.datamodule import AGNewsDataModule
from agnews.errors import ConfigError, DataError

from conftest import LABELS


@pytest.fixture(scope="module")
def tokenizer():
    from agnews.models.factory import offline_tokenizer

    return offline_tokenizer("right")


def build(tokenizer, folder, tmp_path, **overrides) -> AGNewsDataModule:
    settings = dict(
        source="csv",
        data_dir=str(folder),
        label_names=LABELS,
        val_size=0.1,
        train_size=None,
        max_length=32,
        batch_size=8,
        eval_batch_size=16,
        cache_dir=str(tmp_path / "cache"),
        seed=0,
    )
    settings.update(overrides)
    return AGNewsDataModule(tokenizer, **settings)


def test_setup_gives_split_sizes_from_the_config(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=50, test_per_class=10), tmp_path)
    dm.setup("fit")
    assert {name: len(split) for name, split in dm.splits.items()} == {"train": 180, "val": 20, "test": 40}
    assert {name: len(ds) for name, ds in dm.datasets.items()} == {"train": 180, "val": 20, "test": 40}
    assert Counter(dm.splits["val"].labels) == {0: 5, 1: 5, 2: 5, 3: 5}
    assert set(dm.splits["val"].ids).isdisjoint(dm.splits["train"].ids)
    assert dm.splits["test"].ids == [f"test-{i:06d}" for i in range(40)]
    assert dm.bad_rows == {}


def test_train_size_and_integer_val_size_take_stratified_subsets(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=50), tmp_path, val_size=40, train_size=60)
    dm.setup()
    assert (len(dm.splits["train"]), len(dm.splits["val"]), len(dm.splits["test"])) == (60, 40, 40)
    assert Counter(dm.splits["train"].labels) == {0: 15, 1: 15, 2: 15, 3: 15}


def test_train_batches_carry_padded_ids_mask_labels_and_index(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=20, test_per_class=5), tmp_path, val_size=8)
    dm.setup("fit")
    split, dataset = dm.splits["train"], dm.datasets["train"]
    seen = []
    for batch in dm.train_dataloader():
        assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
        assert all(v.dtype == torch.long for v in batch.values())
        size, width = batch["input_ids"].shape
        assert size <= 8 and width <= 32
        assert batch["attention_mask"].shape == (size, width)
        index = batch["index"].tolist()
        assert batch["labels"].tolist() == [split.labels[i] for i in index]
        assert batch["attention_mask"].sum(dim=1).tolist() == [int(dataset.lengths[i]) for i in index]
        assert width == max(int(dataset.lengths[i]) for i in index)
        for row, i in enumerate(index):  # right padding: the real ids first, then pads
            n = int(dataset.lengths[i])
            assert batch["input_ids"][row, :n].tolist() == dataset[i]["input_ids"].tolist()
            assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
        seen += index
    assert sorted(seen) == list(range(len(split)))  # one epoch sees every training row once


def test_token_ids_decode_back_to_the_csv_text(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=10, test_per_class=2), tmp_path, val_size=8, max_length=64)
    dm.setup()
    test = dm.splits["test"]
    for i in range(len(test)):
        decoded = tokenizer.decode(dm.datasets["test"][i]["input_ids"], skip_special_tokens=True)
        assert decoded == test.texts[i].lower()


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_loaders_cover_every_row_once_longest_first(tokenizer, make_ag_news_dir, tmp_path, split):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=30, test_per_class=10), tmp_path)
    dm.setup("fit")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(index) == list(range(len(dm.splits[split])))
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True)
    assert all(b["input_ids"].shape[0] <= 16 for b in batches)
    labels = torch.cat([b["labels"] for b in batches]).tolist()
    assert labels == [dm.splits[split].labels[i] for i in index]


def test_setup_is_idempotent(tokenizer, make_ag_news_dir, tmp_path):
    folder = make_ag_news_dir(train_per_class=10, test_per_class=2)
    dm = build(tokenizer, folder, tmp_path, val_size=8)
    dm.setup("fit")
    datasets, splits = dict(dm.datasets), dict(dm.splits)
    for path in folder.iterdir():  # a second setup must not read the data again
        path.unlink()
    for stage in ("fit", "validate", "test", "predict"):
        dm.setup(stage)
    assert all(dm.datasets[name] is datasets[name] for name in datasets)
    assert all(dm.splits[name] is splits[name] for name in splits)


def test_the_tokenization_cache_gets_one_file_per_split_and_is_reused(tokenizer, make_ag_news_dir, tmp_path, caplog):
    folder = make_ag_news_dir(train_per_class=10, test_per_class=2)
    build(tokenizer, folder, tmp_path, val_size=8).setup()
    files = sorted((tmp_path / "cache").glob("*"))
    assert len(files) == 3 and all(f.suffix == ".safetensors" for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    with caplog.at_level(logging.INFO, logger="agnews.data.tokenization"):
        again = build(tokenizer, folder, tmp_path, val_size=8)
        again.setup()
    assert sorted((tmp_path / "cache").glob("*")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert sum("Tokenization cache hit" in r.getMessage() for r in caplog.records) == 3
    assert len(again.datasets["train"]) == 32
    build(tokenizer, folder, tmp_path, val_size=8, max_length=16).setup()
    assert len(list((tmp_path / "cache").glob("*"))) == 6  # a new max length is a new entry per split


def test_without_a_cache_dir_nothing_is_written(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=10, test_per_class=2), tmp_path, val_size=8, cache_dir=None)
    dm.setup()
    assert len(dm.datasets["train"]) == 32
    assert not (tmp_path / "cache").exists()


def test_left_padding_and_the_longformer_global_mask(tokenizer, make_ag_news_dir, tmp_path):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    folder = make_ag_news_dir(train_per_class=10, test_per_class=4)
    dm = build(left, folder, tmp_path, global_attention_first_token=True)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index", "global_attention_mask"}
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token
    assert (batch["input_ids"][:, -1] == tokenizer.sep_token_id).all()
    first = batch["attention_mask"].argmax(dim=1)
    assert (batch["input_ids"][torch.arange(len(first)), first] == tokenizer.cls_token_id).all()
    assert batch["global_attention_mask"].sum(dim=1).tolist() == [1] * len(first)
    assert (batch["global_attention_mask"].argmax(dim=1) == first).all()


def test_pad_to_multiple_of_reaches_the_batches(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=10, test_per_class=4), tmp_path, pad_to_multiple_of=8)
    dm.setup()
    assert all(b["input_ids"].shape[1] % 8 == 0 for b in dm.test_dataloader())


def test_bad_rows_fail_setup_by_default_and_are_recorded_with_skip(tokenizer, make_ag_news_dir, tmp_path):
    folder = make_ag_news_dir(train_per_class=10, test_per_class=2)
    with (folder / "train.csv").open("a", encoding="utf-8") as handle:
        handle.write('"1","unterminated\n"abc","t","d"\n')
    with pytest.raises(DataError, match=r"train\.csv: 2 malformed row\(s\)\n  line 41: .*\n  line 42: class 'abc'"):
        build(tokenizer, folder, tmp_path, val_size=8).setup()
    dm = build(tokenizer, folder, tmp_path, val_size=8, on_bad_rows="skip")
    dm.setup()
    assert [row["line"] for row in dm.bad_rows["train"]] == [41, 42]
    assert "test" not in dm.bad_rows
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 40


def test_a_missing_folder_fails_setup_with_the_path(tokenizer, tmp_path):
    dm = build(tokenizer, tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataError, match=r"AG News data folder not found: .*nowhere\n.*data\.data_dir"):
        dm.setup()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, r"data\.batch_size must be an integer >= 1, got 0"),
        ({"eval_batch_size": -4}, r"data\.eval_batch_size must be an integer >= 1, got -4"),
        ({"max_length": "128"}, r"data\.max_length must be an integer >= 1, got '128'"),
        ({"num_workers": -1}, r"data\.num_workers must be an integer >= 0, got -1"),
        ({"pad_to_multiple_of": 0}, r"data\.pad_to_multiple_of must be an integer >= 1, got 0"),
    ],
)
def test_invalid_settings_fail_at_construction(tokenizer, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(tokenizer, tmp_path, tmp_path, **overrides)


def test_invalid_sizes_fail_setup_with_a_config_error(tokenizer, make_ag_news_dir, tmp_path):
    dm = build(tokenizer, make_ag_news_dir(train_per_class=10, test_per_class=2), tmp_path, val_size=1.5)
    with pytest.raises(ConfigError, match=r"data\.val_size=1\.5"):
        dm.setup()


def test_a_tokenizer_without_a_pad_token_is_rejected(tokenizer, tmp_path):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(ConfigError, match=r"the tokenizer \(BertTokenizer\) has no pad token"):
        build(no_pad, tmp_path, tmp_path)


def test_the_data_config_instantiates_the_module(tokenizer, make_ag_news_dir, compose_train_cfg, tmp_path):
    from hydra.utils import instantiate

    folder = make_ag_news_dir(train_per_class=30, test_per_class=5)
    cfg = compose_train_cfg([f"data.data_dir={folder}", "data.val_size=20", "data.max_length=24"])
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    assert isinstance(dm, AGNewsDataModule)
    assert (dm.source, dm.data_dir, dm.max_length, dm.seed) == ("auto", str(folder), 24, cfg.seed)
    assert dm.cache_dir == str(tmp_path / "cache" / "tokenized")
    dm.setup()
    assert {name: len(split) for name, split in dm.splits.items()} == {"train": 100, "val": 20, "test": 20}
    assert len(list((tmp_path / "cache" / "tokenized").glob("*.safetensors"))) == 3


class _IndexRecorder:
    """A tiny real LightningModule (built lazily) that records the example indices of every training batch."""

    @staticmethod
    def make():
        import lightning as L

        class Recorder(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))
                self.seen: dict[int, list[list[int]]] = {}

            def training_step(self, batch, batch_idx):
                self.seen.setdefault(self.current_epoch, []).append(batch["index"].tolist())
                return (self.weight * batch["input_ids"].float().mean()).sum() ** 2

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        return Recorder()


def _fit(dm, epochs: int, root, ckpt_path=None):
    import lightning as L

    module = _IndexRecorder.make()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module.seen, trainer


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_real_trainer_reshuffles_every_epoch_and_a_resumed_run_repeats_the_order(
    tokenizer, make_ag_news_dir, tmp_path, num_workers
):
    folder = make_ag_news_dir(train_per_class=10, test_per_class=2)

    def datamodule():
        return build(tokenizer, folder, tmp_path, val_size=8, seed=3, num_workers=num_workers)

    seen, _ = _fit(datamodule(), epochs=2, root=tmp_path / "full")
    assert set(seen) == {0, 1}
    expected = LengthGroupedBatchSampler(datamodule_lengths(datamodule()), 8, seed=3)
    for epoch in (0, 1):
        expected.set_epoch(epoch)
        assert seen[epoch] == list(expected)  # the trainer's order is the sampler's order for that epoch
    assert seen[0] != seen[1]

    # interrupted after epoch 0, resumed from its checkpoint: epoch 1 sees exactly the batches of the full run
    first, trainer = _fit(datamodule(), epochs=1, root=tmp_path / "part")
    assert first[0] == seen[0]
    checkpoint = trainer.checkpoint_callback.best_model_path
    assert checkpoint.endswith("epoch=0-step=4.ckpt")
    resumed, _ = _fit(datamodule(), epochs=2, root=tmp_path / "part", ckpt_path=checkpoint)
    assert set(resumed) == {1}
    assert resumed[1] == seen[1]


def datamodule_lengths(dm: AGNewsDataModule):
    dm.setup()
    return dm.datasets["train"].lengths
