"""Recipes combined with long inputs (``model.long_input``): layer-wise LR decay and gradual unfreezing see the right
depths inside the windowing wrapper (its pooling with the head), adversarial training perturbs the embeddings of the
windows the encoder reads (exactly as without the wrapper for a text that fits one window), LoRA/IA3 train the
hierarchical pooling with the head, and prompt/prefix tuning on windows is refused upfront. And gradual unfreezing
composed with SWA: blocks stay frozen until their epoch and the average is still the mean of the epoch-end weights."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file

from agnews.errors import ConfigError
from agnews.models.layers import num_layers, parameter_depth, parameter_depths
from agnews.models.long_input import LongInputClassifier, make_windows
from agnews.models.peft import apply_peft
from tests.conftest import CONF_DIR, LABELS, TINY, small_data_overrides, synthetic_rows, train_run
from tests.test_adversarial import TEXTS, _loader, check_defining_behaviour, make_batch, make_module

WINDOW = ["model.long_input_options.window=16", "model.long_input_options.stride=4"]
LONG_TEXTS = [" ".join([text] * 3) for text in TEXTS]  # 2-4 windows of 16 tokens each


def build(compose_train_cfg, family: str, mode: str | None, *overrides: str):
    windows = [f"model.long_input={mode}", *WINDOW] if mode else []
    cfg = compose_train_cfg([f"model={family}", "model.tiny=true", *windows, *overrides])
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model, label_names=list(LABELS))


def fit(module, bundle, tmp_path, steps: int = 2, callbacks=()):
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=_loader(bundle, synthetic_rows(4)))
    return trainer


# ---- depths inside the wrapper (LLRD, gradual unfreezing) ------------------------------------------------------------
@pytest.mark.parametrize("family", ["minilm", "xlnet"])
@pytest.mark.parametrize("mode", ["sliding_window", "hierarchical"])
def test_wrapped_parameters_keep_their_depth_and_the_pooling_sits_with_the_head(compose_train_cfg, family, mode):
    _, plain = build(compose_train_cfg, family, None)
    _, windowed = build(compose_train_cfg, family, mode)
    assert isinstance(windowed.model, LongInputClassifier)
    expected = parameter_depths(plain.model)
    depths = parameter_depths(windowed.model)
    top = num_layers(windowed.model) + 1
    assert top == 3
    for name, depth in depths.items():
        if name.startswith("pool."):
            assert mode == "hierarchical" and depth == top, name
        else:
            assert depth == expected[name.removeprefix("model.")], name
    assert {name.removeprefix("model.") for name in depths if not name.startswith("pool.")} == set(expected)
    assert sorted(set(depths.values())) == [0, 1, 2, 3]
    assert any(name.startswith("pool.") for name in depths) == (mode == "hierarchical")

    # under LoRA: base_model.model. + the wrapper's model. prefix; the pooling trains, with the head, at the top depth
    lora = apply_peft(windowed, OmegaConf.load(CONF_DIR / "peft" / "lora.yaml"))
    depths = parameter_depths(lora.model)
    trainable = {n: depths[n] for n, p in lora.model.named_parameters() if p.requires_grad}
    assert {d for n, d in trainable.items() if "lora_" in n} == {1, 2}
    assert {d for n, d in trainable.items() if "lora_" not in n} == {top}  # the head (and pooling) copies
    pooling = [n for n in trainable if ".pool." in n]
    if mode == "hierarchical":
        assert len(pooling) == 3, pooling  # project weight and bias, score weight: all train
        assert all(depths[n] == top for n in pooling)


@pytest.mark.parametrize("family", ["minilm", "xlnet"])
def test_llrd_trains_a_windowed_model_with_decayed_rates(compose_train_cfg, tmp_path, family):
    cfg, bundle = build(compose_train_cfg, family, "hierarchical", "strategy.llrd=0.5", "strategy.scheduler=null",
                        "strategy.optimizer.lr=1e-3")
    module = instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)
    trainer = fit(module, bundle, tmp_path)
    groups = trainer.optimizers[0].param_groups
    names = {id(p): n for n, p in bundle.model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] / 1e-3 for g in groups for p in g["params"]}
    assert len(lr_of) == len(names)  # every parameter, the pooling included, in a group
    embedding = "model.bert.embeddings.word_embeddings.weight" if family == "minilm" else \
        "model.transformer.word_embedding.weight"
    block0 = "model.bert.encoder.layer.0.output.dense.weight" if family == "minilm" else \
        "model.transformer.layer.0.ff.layer_1.weight"
    head = "model.classifier.weight" if family == "minilm" else "model.logits_proj.weight"
    assert (lr_of[embedding], lr_of[block0], lr_of["pool.project.weight"], lr_of[head]) == (0.125, 0.25, 1.0, 1.0)


def test_gradual_unfreezing_freezes_the_wrapped_encoder_and_trains_the_pooling_first(compose_train_cfg, tmp_path):
    from agnews.callbacks.gradual_unfreezing import GradualUnfreezing

    cfg, bundle = build(compose_train_cfg, "minilm", "hierarchical", "strategy.scheduler=null")
    module = instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    fit(module, bundle, tmp_path, steps=2, callbacks=[GradualUnfreezing()])  # epoch 0: depth 3 only
    moved = {n for n, p in bundle.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    depths = parameter_depths(bundle.model)
    assert {n for n in moved if depths[n] != 3} == set()
    assert {"pool.project.weight", "pool.score.weight", "model.classifier.weight"} <= moved


# ---- adversarial training on windows ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["minilm", "xlnet"])
@pytest.mark.parametrize("mode", ["sliding_window", "hierarchical"])
def test_adversarial_perturbs_the_windows_the_encoder_embeds(compose_train_cfg, family, mode):
    _, bundle = build(compose_train_cfg, family, mode, "+model.config_overrides.initializer_range=0.2")
    batch = make_batch(bundle, LONG_TEXTS)
    windows = make_windows(bundle.model.settings, batch["input_ids"], batch["attention_mask"])
    shape = tuple(windows.inputs["input_ids"].shape)
    assert shape[0] > len(LONG_TEXTS) and shape[1] == 16  # several windows per text
    for kind in ("fgm", "pgd", "freelb"):
        # ε-ball per window, zero on each window's padding, gradient at the first step, model untouched
        module = check_defining_behaviour(kind, bundle.model, batch)
        for entry in module.trace:
            assert tuple(entry["delta"].shape[:2]) == shape
            torch.testing.assert_close(entry["mask"].squeeze(-1), windows.inputs["attention_mask"].float())


@pytest.mark.parametrize("family", ["minilm", "xlnet"])
@pytest.mark.parametrize("kind", ["fgm", "pgd", "freelb"])
def test_a_text_that_fits_one_window_is_perturbed_exactly_as_without_windows(compose_train_cfg, family, kind):
    _, bundle = build(compose_train_cfg, family, "sliding_window", "+model.config_overrides.initializer_range=0.2",
                      "model.long_input_options.window=32")
    wrapper, plain = bundle.model, bundle.model.model  # the same weights
    batch = make_batch(bundle, TEXTS)
    assert batch["input_ids"].shape[1] <= 32
    wrapper.eval()
    results = []
    for model in (plain, wrapper):
        module = make_module(kind, model)
        module.trace = []
        torch.manual_seed(1)  # FreeLB's random start
        loss = module.training_loss(batch)
        grads = torch.autograd.grad(loss, list(plain.parameters()), allow_unused=True)
        results.append((loss.detach(), grads, module.trace))
    (loss_plain, grads_plain, trace_plain), (loss_windowed, grads_windowed, trace_windowed) = results
    torch.testing.assert_close(loss_windowed, loss_plain, rtol=1e-5, atol=1e-6)
    assert len(trace_windowed) == len(trace_plain)
    for ours, theirs in zip(trace_windowed, trace_plain):
        torch.testing.assert_close(ours["delta"], theirs["delta"], rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(grads_windowed, grads_plain):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("strategy", ["fgm", "pgd", "freelb"])
def test_adversarial_strategies_train_a_windowed_model_from_the_config(compose_train_cfg, tmp_path, strategy):
    # with LLRD and LoRA too: the three recipes that failed together
    cfg, bundle = build(compose_train_cfg, "minilm", "sliding_window", f"strategy={strategy}", "strategy.llrd=0.9",
                        "strategy.scheduler=null", "peft=lora")
    bundle = apply_peft(bundle, cfg.peft)
    module = instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters() if p.requires_grad}
    trainer = fit(module, bundle, tmp_path)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert trainer.callback_metrics["train/delta_norm"] > 0
    moved = [n for n, p in bundle.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_" in n for n in moved)


# ---- PEFT on windows -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("mode", ["sliding_window", "head_tail", "hierarchical"])
def test_prompt_and_prefix_tuning_on_windows_are_refused(compose_train_cfg, method, mode):
    cfg, bundle = build(compose_train_cfg, "minilm", mode, f"peft={method}")
    with pytest.raises(ConfigError, match=rf"peft={method} cannot be used with model.long_input={mode}: the virtual "
                                          r"tokens would be added to the padded row, not to each window"):
        apply_peft(bundle, cfg.peft)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_lora_and_ia3_on_hierarchical_windows_train_and_export_the_pooling(compose_train_cfg, tmp_path, method):
    from agnews.models.peft import export_bundle

    cfg, bundle = build(compose_train_cfg, "minilm", "hierarchical", f"peft={method}", "strategy.scheduler=null",
                        "strategy.optimizer.lr=1e-2")
    bundle = apply_peft(bundle, cfg.peft)
    module = instantiate(cfg.strategy, model=bundle.model, label_names=list(LABELS), seed=0)
    pool = bundle.model.get_base_model().pool
    before = {n: p.detach().clone() for n, p in pool.named_parameters() if "modules_to_save" in n}
    assert len(before) == 3
    fit(module, bundle, tmp_path)
    trained = {n: p.detach().clone() for n, p in pool.named_parameters() if "modules_to_save" in n}
    assert all(not torch.equal(trained[n], before[n]) for n in before)

    # the merged export keeps the trained pooling (what save_extra writes beside the model)
    batch = make_batch(bundle, LONG_TEXTS)
    bundle.model.eval()
    with torch.no_grad():
        expected = bundle.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    merged = export_bundle(bundle).model
    assert isinstance(merged, LongInputClassifier)
    names = {n for n, _ in merged.pool.named_parameters()}
    assert names == {"project.weight", "project.bias", "score.weight"}
    torch.testing.assert_close(merged.pool.score.weight, trained["score.modules_to_save.default.weight"])
    with torch.no_grad():
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---- gradual unfreezing with SWA -------------------------------------------------------------------------------------
def test_gradual_unfreezing_with_swa_averages_epoch_ends_and_keeps_frozen_blocks_frozen(tmp_path, make_ag_news_dir):
    from tests.test_recipe_gradual_unfreezing import EpochChanges
    from tests.test_recipe_swa_snapshot import EpochWeights, _max_difference, _weights

    weights, changes = tmp_path / "weights", tmp_path / "changes.json"
    run = train_run(tmp_path / "run", [
        *TINY, *small_data_overrides(make_ag_news_dir(train_per_class=30, test_per_class=2)), "trainer.max_epochs=4",
        "strategy.optimizer.lr=2e-2", "callbacks=[gradual_unfreezing,swa]", "callbacks.swa.swa_lrs=0.01",
        "callbacks.swa.swa_epoch_start=2",
        f"+callbacks.capture._target_={EpochWeights.__module__}.EpochWeights", f"+callbacks.capture.folder={weights}",
        f"+callbacks.changes._target_={EpochChanges.__module__}.EpochChanges", f"+callbacks.changes.path={changes}",
    ])
    # The unfreezing schedule ran under SWA (tiny model: embeddings 0, blocks 1-2, head 3), and fit restored it.
    record = json.loads(changes.read_text())
    expected = [[3], [2, 3], [1, 2, 3], [0, 1, 2, 3]]
    assert [r["changed"] for r in record["epochs"]] == [r["trainable"] for r in record["epochs"]] == expected
    assert record["all_trainable_after_fit"]

    epoch_end = [_weights(weights / f"epoch{e}.pt") for e in range(4)]
    final = _weights(weights / "fit_end.pt")
    # SWA: the mean of the weights epochs 2..4 (1-based) end with, frozen-then-unfrozen blocks included.
    average = {k: sum(w[k].double() for w in epoch_end[1:]) / 3 for k in final}
    assert _max_difference(average, final) < 1e-6
    assert _max_difference(epoch_end[3], final) > 1e-3
    # A block is bit-for-bit unchanged until its epoch (depth d first trains in epoch 3 - d, 0-based).
    for name in final:
        if not final[name].is_floating_point() or "position_ids" in name:
            continue
        first = 3 - parameter_depth(name, 2)
        for epoch in range(1, first):
            assert torch.equal(epoch_end[epoch][name], epoch_end[0][name]), (name, epoch)
    exported = load_file(run / "model" / "model.safetensors")
    assert _max_difference({k: exported[k] for k in final}, final) == 0.0
