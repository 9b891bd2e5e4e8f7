"""Layer-wise learning-rate decay (``strategy.llrd``): every architecture's parameters land at the right depth, each
depth's groups get ``lr * llrd ** (num_layers + 1 - depth)`` (decay / no-decay split kept), the scheduler keeps those
ratios step after step, every strategy builds the same groups, and bad factors or unknown layouts fail clearly."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from agnews.errors import ConfigError
from agnews.models.layers import num_layers, parameter_depth, parameter_depths
from agnews.strategies.standard import StandardFineTuning
from tests.conftest import LABELS, synthetic_rows
from tests.test_adversarial import _loader

FAMILIES = ["minilm", "roberta", "deberta", "electra", "xlnet", "longformer"]
# (an embedding, a parameter of block 0, one of the last block (tiny models have 2), the head) per architecture
LANDMARKS = {
    "minilm": ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
               "bert.encoder.layer.1.output.dense.weight", "bert.pooler.dense.weight", "classifier.weight"),
    "roberta": ("roberta.embeddings.position_embeddings.weight", "roberta.encoder.layer.0.attention.self.key.bias",
                "roberta.encoder.layer.1.output.LayerNorm.weight", "classifier.dense.weight",
                "classifier.out_proj.weight"),
    "deberta": ("deberta.encoder.rel_embeddings.weight", "deberta.encoder.layer.0.attention.self.query_proj.weight",
                "deberta.encoder.layer.1.intermediate.dense.weight", "pooler.dense.weight", "classifier.weight"),
    "electra": ("electra.embeddings.LayerNorm.weight", "electra.encoder.layer.0.attention.self.value.weight",
                "electra.encoder.layer.1.output.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias"),
    "xlnet": ("transformer.mask_emb", "transformer.layer.0.rel_attn.q", "transformer.layer.1.ff.layer_1.weight",
              "sequence_summary.summary.weight", "logits_proj.weight"),
    "longformer": ("longformer.embeddings.word_embeddings.weight",
                   "longformer.encoder.layer.0.attention.self.query_global.weight",
                   "longformer.encoder.layer.1.output.dense.weight", "classifier.dense.weight",
                   "classifier.out_proj.weight"),
}


def _tiny_module(compose_train_cfg, family: str, *overrides: str):
    cfg = compose_train_cfg([f"model={family}", "model.tiny=true", *overrides])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    return bundle, instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)


class GroupLRs(L.Callback):
    """The LR of every param group at each optimizer step (what that step used)."""

    def __init__(self):
        self.steps: list[list[float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append([group["lr"] for group in optimizer.param_groups])


@pytest.mark.parametrize("family", FAMILIES)
def test_groups_get_decayed_rates_layer_by_layer_through_the_schedule(compose_train_cfg, family, tmp_path):
    llrd, lr = 0.5, 1e-3
    bundle, module = _tiny_module(
        compose_train_cfg, family, "strategy.llrd=0.5", f"strategy.optimizer.lr={lr}", "+strategy.scheduler.warmup_steps=2"
    )
    layers = num_layers(bundle.model)
    assert layers == 2
    embedding, first, last, head, out = LANDMARKS[family]
    depths = parameter_depths(bundle.model)
    assert (depths[embedding], depths[first], depths[last], depths[head], depths[out]) == (0, 1, 2, 3, 3)

    recorder = GroupLRs()
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=_loader(bundle, synthetic_rows(10)))
    groups = trainer.optimizers[0].param_groups
    by_param = {id(p): group for group in groups for p in group["params"]}
    named = dict(bundle.model.named_parameters())

    # every trainable parameter in exactly one group, at its depth, with the weight-decay split kept
    assert sum(len(g["params"]) for g in groups) == len(named) == len(by_param)
    for name, param in named.items():
        group = by_param[id(param)]
        assert group["depth"] == depths[name], name
        no_decay = name.endswith(module.no_decay) or param.ndim < 2
        assert group["weight_decay"] == (0.0 if no_decay else module.weight_decay), name
    assert {g["depth"] for g in groups} == {0, 1, 2, 3}
    # the base LRs the scheduler scales: head lr, block 2 lr/2, block 1 lr/4, embeddings lr/8
    for group in groups:
        assert group["initial_lr"] == pytest.approx(lr * llrd ** (layers + 1 - group["depth"]))
    # warm-up from 0 then linear decay, every group by the same factor: the layer ratios stay llrd at every step
    assert len(recorder.steps) == 5
    factors = []
    for step in recorder.steps:
        head_lr = step[[g["depth"] for g in groups].index(layers + 1)]
        factors.append(head_lr / lr)
        for group, group_lr in zip(groups, step):
            assert group_lr == pytest.approx(head_lr * llrd ** (layers + 1 - group["depth"]), abs=1e-12)
    assert factors == pytest.approx([0.0, 0.5, 1.0, 2 / 3, 1 / 3])


def test_each_depth_moves_by_its_own_learning_rate(compose_train_cfg, tmp_path):
    # Plain SGD: a parameter's update is exactly -lr_depth * grad, so the decayed LR is what each layer trains with.
    bundle, _ = _tiny_module(compose_train_cfg, "minilm")
    module = StandardFineTuning(bundle.model, LABELS, functools.partial(torch.optim.SGD, lr=0.1), weight_decay=0.0,
                                llrd=0.8)
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    grads = {}

    class KeepGrads(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.update({n: p.grad.detach().clone() for n, p in bundle.model.named_parameters()})

    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[KeepGrads()],
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=_loader(bundle, synthetic_rows(4)))
    depths = parameter_depths(bundle.model)
    for name, param in bundle.model.named_parameters():
        if grads[name].abs().max() == 0:
            continue  # e.g. unused position rows
        expected = before[name] - 0.1 * 0.8 ** (3 - depths[name]) * grads[name]
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("standard", []), ("fgm", []), ("pgd", []), ("freelb", []), ("maml", []), ("reptile", []), ("rdrop", []),
        ("mixup", []),
        # the student is cut to 1 block after construction: depths are read when the optimizer is built
        ("distill", ["strategy.teacher=soft_labels.csv", "strategy.student_layers=1"]),
    ],
)
def test_every_strategy_builds_the_decayed_groups(compose_train_cfg, strategy, extra):
    bundle, module = _tiny_module(
        compose_train_cfg, "minilm", f"strategy={strategy}", "strategy.llrd=0.9", "strategy.scheduler=null", *extra
    )
    optimizer = module.configure_optimizers()
    top = num_layers(bundle.model) + 1
    assert top == (2 if strategy == "distill" else 3)
    base = optimizer.defaults["lr"]
    assert sorted({g["depth"] for g in optimizer.param_groups}) == list(range(top + 1))
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(base * 0.9 ** (top - group["depth"]))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(bundle.model.parameters()))


def test_llrd_off_keeps_the_two_groups(compose_train_cfg):
    _, module = _tiny_module(compose_train_cfg, "minilm", "strategy.scheduler=null")
    optimizer = module.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == optimizer.defaults["lr"] and "depth" not in g for g in optimizer.param_groups)


def test_lora_adapters_and_the_saved_head_get_their_depths(compose_train_cfg):
    from agnews.models.peft import apply_peft

    cfg = compose_train_cfg(["model=roberta", "model.tiny=true", "peft=lora", "strategy.llrd=0.5",
                             "strategy.scheduler=null"])
    bundle = apply_peft(instantiate(cfg.model, label_names=list(LABELS)), cfg.peft)
    module = instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)
    optimizer = module.configure_optimizers()
    names = {id(p): n for n, p in bundle.model.named_parameters()}
    seen = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[names[id(p)]] = group["lr"] / optimizer.defaults["lr"]
    assert seen["base_model.model.roberta.encoder.layer.0.attention.self.query.lora_A.default.weight"] == 0.25
    assert seen["base_model.model.roberta.encoder.layer.1.attention.self.value.lora_B.default.weight"] == 0.5
    assert seen["base_model.model.classifier.modules_to_save.default.out_proj.weight"] == 1.0
    assert all("lora_" in n or "modules_to_save" in n for n in seen)  # frozen base weights stay out


def test_electra_embedding_projection_is_an_embedding(compose_train_cfg):
    cfg = compose_train_cfg(["model=electra", "model.tiny=true", "model.tiny_config.embedding_size=16"])
    model = instantiate(cfg.model, label_names=list(LABELS)).model
    assert parameter_depths(model)["electra.embeddings_project.weight"] == 0


def test_real_minilm_depths(compose_train_cfg):
    cfg = compose_train_cfg(["model=minilm_local", "strategy.llrd=0.9", "strategy.scheduler=null"])
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    module = instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)
    optimizer = module.configure_optimizers()
    assert num_layers(bundle.model) == 6
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    base = cfg.strategy.optimizer.lr
    assert lrs["depth07"] == pytest.approx(base) and lrs["depth06"] == pytest.approx(base * 0.9)
    assert lrs["depth00"] == pytest.approx(base * 0.9**7) and lrs["depth00_no_decay"] == pytest.approx(base * 0.9**7)
    assert len(lrs) == 16  # 8 depths x (decay, no decay)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.9, float("nan"), True, "0.9"])
def test_bad_llrd_is_a_config_error(compose_train_cfg, bad):
    bundle, _ = _tiny_module(compose_train_cfg, "minilm")
    with pytest.raises(ConfigError, match=r"strategy.llrd must be null \(off\) or .* in \(0, 1\]"):
        StandardFineTuning(bundle.model, LABELS, torch.optim.AdamW, llrd=bad)


def test_bad_llrd_from_the_command_line_names_the_option(compose_train_cfg):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", "strategy.llrd=1.5"])
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    with pytest.raises(InstantiationException, match="strategy.llrd must be"):
        instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)


def test_unknown_layout_names_the_parameter():
    with pytest.raises(ConfigError, match=r"'bert\.adapter\.weight': unknown layout"):
        parameter_depth("bert.adapter.weight", 2)
    with pytest.raises(ConfigError, match="block 6, but the model config declares 6 blocks"):
        parameter_depth("bert.encoder.layer.6.output.dense.weight", 6)

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

    with pytest.raises(ConfigError, match="has no transformers config"):
        num_layers(Bare())


@pytest.mark.parametrize("schedule", ["linear_warmup_decay", "constant_schedule", "cosine_with_restarts"])
def test_every_schedule_keeps_the_layer_ratios(compose_train_cfg, schedule):
    from agnews.strategies import optim

    bundle, module = _tiny_module(compose_train_cfg, "minilm", "strategy.llrd=0.7", "strategy.scheduler=null")
    optimizer = module.configure_optimizers()
    scheduler = getattr(optim, schedule)(optimizer, total_steps=12)
    assert len(scheduler.base_lrs) == len(optimizer.param_groups) == 8
    for _ in range(12):
        head = optimizer.param_groups[-1]["lr"]  # groups are sorted by depth: the head's come last
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(head * 0.7 ** (3 - group["depth"]), abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_trainable_parameters_outside_the_model_are_refused(compose_train_cfg):
    _, module = _tiny_module(compose_train_cfg, "minilm", "strategy.llrd=0.9", "strategy.scheduler=null")
    module.projection = torch.nn.Linear(2, 2)  # a strategy's own module: no depth in the encoder
    with pytest.raises(ConfigError, match=r"outside the model have no depth: \['projection.weight'"):
        module.configure_optimizers()
