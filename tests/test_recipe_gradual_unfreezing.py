"""Gradual unfreezing (``callbacks=gradual_unfreezing``): in real runs composed as ``python -m agnews.train`` composes
them, a frozen block receives no update (no step, no weight decay) until its epoch, top-down, the embeddings last;
combined with ``strategy.llrd`` the layer LRs keep their ratios while the schedule runs; a resumed run re-applies the
schedule; adversarial and meta-learning strategies train under it; bad options fail clearly; the CLI runs it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from agnews.callbacks.gradual_unfreezing import GradualUnfreezing
from agnews.errors import ConfigError
from agnews.models.layers import parameter_depths
from tests.conftest import LABELS, REPO_ROOT, TINY, small_data_overrides, synthetic_rows
from tests.test_adversarial import _loader


class EpochChanges(L.Callback):
    """Per training epoch: the depths whose weights changed during it, and the depths that had requires_grad."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []
        self.before: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_epoch_end(self, trainer, pl_module):
        depths = parameter_depths(pl_module.model)
        params = dict(pl_module.model.named_parameters())
        changed = {depths[n] for n, p in params.items() if not torch.equal(p.detach(), self.before[n])}
        trainable = {depths[n] for n, p in params.items() if p.requires_grad}
        self.records.append({"epoch": trainer.current_epoch, "changed": sorted(changed), "trainable": sorted(trainable)})
        Path(self.path).write_text(json.dumps(self.records))

    def on_fit_end(self, trainer, pl_module):
        restored = all(p.requires_grad for p in pl_module.model.parameters())
        Path(self.path).write_text(json.dumps({"epochs": self.records, "all_trainable_after_fit": restored}))


def _run(compose_train_cfg, data, tmp_path, *overrides: str) -> tuple[dict, Path]:
    from agnews.pipeline import train

    cfg = compose_train_cfg([*TINY, *small_data_overrides(data), "callbacks=gradual_unfreezing",
                             "callbacks.early_stopping=null", "callbacks.progress_bar=null",
                             "scoring.export_model=false", *overrides])
    record = tmp_path / "changes.json"
    with open_dict(cfg):
        cfg.callbacks.changes = {"_target_": f"{__name__}.EpochChanges", "path": str(record)}
    train(cfg)
    return json.loads(record.read_text()), Path(cfg.paths.output_dir)


def test_blocks_unfreeze_top_down_one_per_epoch_with_llrd(compose_train_cfg, make_ag_news_dir, tmp_path):
    data = make_ag_news_dir(train_per_class=30, test_per_class=2)  # 120 - 40 val = 80 rows: 5 steps per epoch
    result, run_dir = _run(compose_train_cfg, data, tmp_path, "trainer.max_epochs=5", "strategy.llrd=0.5",
                           "strategy.optimizer.lr=1e-3")
    # tiny models: embeddings 0, blocks 1-2, head 3. Epoch 0 the head only; the embeddings join in epoch 3.
    expected = [[3], [2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert [r["changed"] for r in result["epochs"]] == expected
    assert [r["trainable"] for r in result["epochs"]] == expected
    assert result["all_trainable_after_fit"]

    # LLRD: every step, each depth's LR is the head's times 0.5 ** (3 - depth), frozen depths included (their LR
    # follows the schedule, so a block joins at the schedule's current, decayed LR)
    with (run_dir / "csv" / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("lr-AdamW/depth03")]
    assert len(rows) == 25
    for row in rows:
        head = float(row["lr-AdamW/depth03"])
        for depth in range(3):
            for suffix in ("", "_no_decay"):
                assert float(row[f"lr-AdamW/depth{depth:02d}{suffix}"]) == pytest.approx(head * 0.5 ** (3 - depth))
    heads = [float(r["lr-AdamW/depth03"]) for r in rows]
    assert max(heads) == pytest.approx(1e-3, rel=0.05) and heads[-1] < heads[len(heads) // 2]  # the schedule ran


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("fgm", []),
        ("standard", ["peft=lora"]),  # adapters inside the blocks follow the schedule; the frozen base stays frozen
        ("maml", ["strategy.episodes_per_epoch=2", "strategy.k_shot=2", "strategy.query_per_class=2"]),
        ("reptile", ["strategy.episodes_per_epoch=2", "strategy.k_shot=2", "strategy.query_per_class=2"]),
    ],
)
def test_adversarial_meta_and_lora_runs_respect_the_frozen_blocks(
    compose_train_cfg, make_ag_news_dir, tmp_path, strategy, extra
):
    data = make_ag_news_dir(train_per_class=20, test_per_class=2)
    result, _ = _run(compose_train_cfg, data, tmp_path, f"strategy={strategy}", "trainer.max_epochs=2",
                     "data.val_size=8", "callbacks.gradual_unfreezing.unfreeze_every=1",
                     "callbacks.gradual_unfreezing.blocks_per_step=2", *extra)
    assert [r["changed"] for r in result["epochs"]] == [[3], [1, 2, 3]]


def test_the_schedule():
    callback = GradualUnfreezing(unfreeze_every=2, blocks_per_step=3)
    callback.top_depth = 13  # a 12-block encoder
    assert [callback.lowest_trainable_depth(e) for e in range(0, 12)] == [13, 13, 10, 10, 7, 7, 4, 4, 1, 1, 0, 0]


def _module(compose_train_cfg):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", "strategy.llrd=0.8", "strategy.optimizer.lr=1e-3",
                             "strategy.optimizer.fused=false"])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    return bundle, instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)


class StopAfter(L.Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_a_resumed_run_trains_exactly_like_an_uninterrupted_one(compose_train_cfg, tmp_path):
    rows = synthetic_rows(6)  # 24 rows: 3 steps per epoch

    def fit(root: Path, stop_after: int | None = None, ckpt_path: str | None = None):
        bundle, module = _module(compose_train_cfg)
        callbacks = [GradualUnfreezing(), ModelCheckpoint(dirpath=root, save_last=True)]
        callbacks += [StopAfter(stop_after)] if stop_after else []
        trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=callbacks, default_root_dir=root)
        initial = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
        trainer.fit(module, train_dataloaders=_loader(bundle, rows), ckpt_path=ckpt_path)
        return initial, {n: p.detach().clone() for n, p in bundle.model.named_parameters()}, trainer

    initial, uninterrupted, _ = fit(tmp_path / "a")
    fit(tmp_path / "b", stop_after=2)
    _, resumed, trainer = fit(tmp_path / "c", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.current_epoch == 3
    depths = parameter_depths(trainer.lightning_module.model)
    for name, weight in resumed.items():
        torch.testing.assert_close(weight, uninterrupted[name], rtol=0, atol=0, msg=name)
        # 3 epochs of a 2-block model: the embeddings never trained (the resumed, freshly built model re-froze them)
        assert torch.equal(weight, initial[name]) == (depths[name] == 0), name


def test_a_run_resumed_mid_epoch_keeps_the_frozen_blocks_frozen(compose_train_cfg, tmp_path):
    # Lightning skips on_train_epoch_start for an epoch resumed in its middle: the callback applies the epoch's
    # state before the first batch instead. Here the run stops after step 4 (epoch 1, batch 0, 3 steps per epoch).
    rows = synthetic_rows(6)
    bundle, module = _module(compose_train_cfg)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[GradualUnfreezing(), ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1,
                                                                        save_last=True)])
    trainer.fit(module, train_dataloaders=_loader(bundle, rows))
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 4

    changes: dict = {}

    class ChangesAfterResume(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            changes.setdefault("start", (trainer.current_epoch, batch_idx))
            changes.setdefault("before", {n: p.detach().clone() for n, p in pl_module.model.named_parameters()})

        def on_train_epoch_end(self, trainer, pl_module):
            depths = parameter_depths(pl_module.model)
            before = changes.pop("before")
            changes["changed"] = sorted({depths[n] for n, p in pl_module.model.named_parameters()
                                         if not torch.equal(p.detach(), before[n])})

    bundle, module = _module(compose_train_cfg)  # a fresh process's model: everything trainable
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[GradualUnfreezing(), ChangesAfterResume()])
    trainer.fit(module, train_dataloaders=_loader(bundle, rows), ckpt_path=str(tmp_path / "last.ckpt"))
    assert changes["start"] == (1, 1) and changes["changed"] == [2, 3]


def test_the_optimizer_must_hold_every_parameter_from_the_start(compose_train_cfg, tmp_path):
    bundle, module = _module(compose_train_cfg)
    head_only = [p for n, p in bundle.model.named_parameters() if n.startswith("classifier")]
    module.configure_optimizers = lambda: torch.optim.AdamW(head_only)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[GradualUnfreezing()],
                        default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="every trainable parameter in the optimizer from the start"):
        trainer.fit(module, train_dataloaders=_loader(bundle, synthetic_rows(2)))


@pytest.mark.parametrize("key", ["unfreeze_every", "blocks_per_step"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_options_are_config_errors(key, bad):
    with pytest.raises(ConfigError, match=rf"callbacks.gradual_unfreezing.{key} must be an integer >= 1"):
        GradualUnfreezing(**{key: bad})


def test_ddp_without_find_unused_parameters_is_refused(compose_train_cfg, tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    _, module = _module(compose_train_cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=DDPStrategy(find_unused_parameters=False),
                        logger=False, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        GradualUnfreezing().setup(trainer, module, "fit")


def test_cli_composes_llrd_with_gradual_unfreezing(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=12, test_per_class=2)
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "agnews.train", "model=minilm", "model.tiny=true", "strategy.llrd=0.9",
        "callbacks=gradual_unfreezing", "trainer=cpu", "trainer.precision=32-true", "trainer.max_epochs=2",
        *small_data_overrides(data), "data.val_size=12", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Gradual unfreezing, epoch 0: depths 3..3 train" in log and "epoch 1: depths 2..3 train" in log
    assert (run_dir / "metrics.json").is_file() and (run_dir / "model" / "model.safetensors").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "llrd: 0.9" in config and "agnews.callbacks.gradual_unfreezing.GradualUnfreezing" in config
    assert "model_checkpoint:" in config  # the default callbacks are kept
