"""The optimisation recipe every strategy shares: fused AdamW that still clips under bf16 autocast, transformers' own
linear warm-up/decay schedule, and the attention implementation switch."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from transformers import get_linear_schedule_with_warmup

from agnews.strategies.optim import linear_warmup_decay
from agnews.strategies.standard import StandardFineTuning
from tests.conftest import LABELS, synthetic_rows
from tests.test_adversarial import Snapshot, _loader


def test_standard_recipe_uses_fused_adamw(compose_train_cfg):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true"])
    optimizer = instantiate(cfg.strategy.optimizer)([torch.nn.Parameter(torch.zeros(2, 2))])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_optimizer_is_clipped_without_a_grad_scaler(compose_train_cfg, precision, tmp_path):
    # Stock Lightning raises for a fused optimizer with clipping under any mixed precision; without a GradScaler the
    # gradients are unscaled, so the module clips them itself. Fused SGD with lr 1: the update IS the clipped gradient.
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true"])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    module = StandardFineTuning(bundle.model, LABELS, functools.partial(torch.optim.SGD, lr=1.0, fused=True),
                                weight_decay=0.0)
    snapshot, clip = Snapshot(), 1e-3
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, max_epochs=1, limit_train_batches=3, gradient_clip_val=clip,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[snapshot], default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=_loader(bundle, synthetic_rows(8)))
    assert len(snapshot.updates) == 3 and all(norm > 10 * clip for norm in snapshot.grad_norms)
    for update in snapshot.updates:
        assert update == pytest.approx(clip, rel=2e-2)


def test_clip_by_value_is_honoured(compose_train_cfg, tmp_path):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true"])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    module = StandardFineTuning(bundle.model, LABELS, functools.partial(torch.optim.SGD, lr=1.0, fused=True),
                                weight_decay=0.0)
    steps: list[float] = []

    class LargestStep(Snapshot):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after = [p.detach() for p in pl_module.parameters()]
            steps.append(max(float((a - b).abs().max()) for a, b in zip(after, self.before)))

    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_epochs=1, limit_train_batches=2, gradient_clip_val=1e-4,
        gradient_clip_algorithm="value", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[LargestStep()], default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=_loader(bundle, synthetic_rows(8)))
    assert len(steps) == 2 and all(step == pytest.approx(1e-4, rel=1e-3) for step in steps)


def test_linear_schedule_is_transformers_own():
    def lrs(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make(optimizer)
        out = []
        for _ in range(20):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    ours = lrs(lambda opt: linear_warmup_decay(opt, total_steps=20, warmup_ratio=0.25))
    theirs = lrs(lambda opt: get_linear_schedule_with_warmup(opt, 5, 20))
    assert ours == theirs and ours[0] == 0.0 and max(ours) == 1.0 and ours[-1] == pytest.approx(1 / 15)
    assert lrs(lambda opt: linear_warmup_decay(opt, total_steps=20, warmup_steps=3))[3] == 1.0


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_implementation_reaches_the_model(compose_train_cfg, implementation):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", f"model.attn_implementation={implementation}"])
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    assert bundle.model.config._attn_implementation == implementation


def test_unknown_attention_implementation_is_a_clear_error(compose_train_cfg):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", "model.attn_implementation=warp_drive"])
    with pytest.raises(Exception, match="warp_drive"):
        instantiate(cfg.model, label_names=list(LABELS))
