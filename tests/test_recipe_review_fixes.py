"""Review fixes to the training recipes, each a clear ConfigError (or a truthful record) instead of a misleading failure:

- Masked-LM pre-training (``python -m agnews.pretrain``, ``kind: mlm`` stages) refuses classifier callbacks (swa,
  gradual_unfreezing, snapshot_ensemble) before any work, and keeps only the loop-watching ones of the default group.
- ``strategy=mixup`` refuses ``model.long_input`` (the windowing wrapper takes token ids only and runs its blocks per
  window).
- The masked-LM data errors name the real keys (``pretrain.data.*``).
- The manifest's ``test_split_read`` is true for a hub source (the hub loader loads the test split too), false for CSV.
- ``data/curriculum=teacher_loss`` with pseudo-labelling is refused as unsupported (the teacher never scored the pool).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from agnews.errors import ConfigError
from tests.conftest import CONF_DIR, LABELS, TINY, small_data_overrides, synthetic_rows, write_ag_news_csv


@pytest.fixture
def compose_pretrain_cfg(tmp_path):
    """``conf/pretrain.yaml`` composed as ``python -m agnews.pretrain`` would, outputs in tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import agnews.resolvers  # noqa: F401

    def compose_cfg(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("pretrain", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    yield compose_cfg
    GlobalHydra.instance().clear()


# ---- 1. pre-training refuses classifier callbacks -------------------------------------------------------------------
@pytest.mark.parametrize("callbacks", ["swa", "gradual_unfreezing", "snapshot_ensemble"])
def test_pretraining_refuses_classifier_callbacks(compose_pretrain_cfg, make_ag_news_dir, callbacks):
    from agnews.pretraining.run import pretrain

    cfg = compose_pretrain_cfg([*TINY, *small_data_overrides(make_ag_news_dir()), f"callbacks={callbacks}"])
    with pytest.raises(ConfigError, match=rf"callbacks \['{callbacks}'\]: a masked-LM pre-training run keeps only "
                                          r".*put the callback in the train stage's own overrides"):
        pretrain(cfg)
    assert not (Path(cfg.paths.output_dir) / "model").exists()  # refused before any work


def test_pretraining_keeps_loop_callbacks_and_drops_checkpointing(compose_pretrain_cfg):
    from agnews.pretraining.run import _callbacks

    built = _callbacks(compose_pretrain_cfg([*TINY, "callbacks.progress_bar=null"]).callbacks)
    assert any(isinstance(callback, LearningRateMonitor) for callback in built)
    assert not any(isinstance(callback, ModelCheckpoint) for callback in built)  # nothing to watch: dropped


# ---- 2. mixup refuses the long-input wrapper ------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{"mix_on": "embeddings"}, {"mix_on": "hidden", "layer": 0}])
def test_mixup_refuses_long_input(compose_train_cfg, options):
    from agnews.strategies.mixup import Mixup

    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", "model.long_input=sliding_window",
                             "model.long_input_options.window=16", "model.long_input_options.stride=4"])
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ConfigError, match=r"strategy=mixup with model.long_input"):
        Mixup(model=bundle.model, label_names=LABELS, optimizer=optimizer, **options)


# ---- 3. masked-LM data errors name the real keys --------------------------------------------------------------------
def test_masked_lm_data_errors_name_pretrain_data_keys():
    from agnews.data.sources import Split
    from agnews.pretraining.data import MaskedLMDataModule, pretraining_texts

    rows = synthetic_rows(20)
    train = Split("train", [f"train-{i:06d}" for i in range(len(rows))], [f"{r[1]} {r[2]}" for r in rows],
                  [int(r[0]) - 1 for r in rows])
    with pytest.raises(ConfigError, match=r"pretrain\.data\.val_texts=500 leaves no text"):
        pretraining_texts(train, 10, None, 500, 0)
    with pytest.raises(ConfigError, match=r"pretrain\.data\.max_texts"):
        pretraining_texts(train, 10, -3, 5, 0)
    with pytest.raises(ConfigError, match=r"pretrain\.data\.mlm_probability must lie in \(0, 1\)"):
        MaskedLMDataModule(None, {}, 1.5, None, 10, 0)


# ---- 4. test_split_read is truthful ---------------------------------------------------------------------------------
def masked_lm_report(source: str, tmp_path: Path, **data) -> dict:
    from agnews.models.factory import offline_tokenizer
    from agnews.pretraining.data import MaskedLMDataModule

    module = MaskedLMDataModule(
        tokenizer=offline_tokenizer("right"),
        data={"source": source, "label_names": LABELS, "val_size": 8, "max_length": 16, "batch_size": 4,
              "eval_batch_size": 8, **data},
        mlm_probability=0.15, max_texts=None, val_texts=4, seed=0, cache_dir=str(tmp_path / "cache"),
    )
    module.setup("fit")
    return module.report


def test_test_split_read_is_false_for_csv_true_for_hub(tmp_path, monkeypatch):
    folder = tmp_path / "csv"
    folder.mkdir()
    write_ag_news_csv(folder / "train.csv", synthetic_rows(10))
    assert masked_lm_report("csv", tmp_path, data_dir=str(folder))["test_split_read"] is False

    # A local folder in the hub dataset's layout (text, label columns; train and test files): load_hub reads both.
    hub = tmp_path / "hub"
    hub.mkdir()
    for split, per_class in (("train", 10), ("test", 2)):
        with (hub / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([f"{title}. {body}", int(label) - 1] for label, title, body in synthetic_rows(per_class))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local folder: no hub probe
    report = masked_lm_report("hub", tmp_path, hub_dataset=str(hub))
    assert report["test_split_read"] is True
    assert report["sizes"] == {"train": 28, "mlm_val": 4}


# ---- 5. teacher-loss curriculum with pseudo-labels ------------------------------------------------------------------
def build_datamodule(compose_train_cfg, *overrides: str):
    from agnews.models.factory import offline_tokenizer

    cfg = compose_train_cfg(["data.source=csv", "data.data_dir=/nowhere", *overrides])
    return instantiate(cfg.data, tokenizer=offline_tokenizer("right"))


def test_teacher_loss_curriculum_with_pseudo_labels_is_refused(compose_train_cfg, tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match=r"data/curriculum=teacher_loss with data.pseudo_label.teacher is "
                                                     r"unsupported: .* not the pseudo-labelled pool rows") as info:
        build_datamodule(compose_train_cfg, "data/curriculum=teacher_loss", f"data.curriculum.teacher={tmp_path}",
                         f"data.pseudo_label.teacher={tmp_path}")
    assert isinstance(info.value.__cause__, ConfigError)  # Hydra wraps the data module's error
    # Each alone, and the length curriculum with pseudo-labels, still build.
    for overrides in (["data/curriculum=teacher_loss", f"data.curriculum.teacher={tmp_path}"],
                      [f"data.pseudo_label.teacher={tmp_path}"],
                      ["data/curriculum=length", f"data.pseudo_label.teacher={tmp_path}"]):
        module = build_datamodule(compose_train_cfg, *overrides)
        assert module.datasets == {}  # built, nothing loaded yet
