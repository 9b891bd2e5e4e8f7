"""R-Drop and mixup (embeddings / hidden states) as strategies, on every tiny architecture and the real MiniLM.

R-Drop: the two passes draw different dropout masks even though every batch reseeds the RNG; the loss is the mean CE
plus alpha x the symmetric KL of the two passes; without dropout the KL is 0 and the loss and gradient are plain CE.
Mixup: the loss equals a textbook re-implementation through ``inputs_embeds`` (embeddings) and the next block sees
exactly the mixed output of block ``layer`` while blocks up to it are untouched (hidden); lambda = 1 is plain CE; the
draws are a function of (seed, epoch, batch); evaluation never mixes; bad options fail clearly. Both run from the CLI.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from agnews.data.batching import DynamicPaddingCollator
from agnews.errors import ConfigError
from agnews.strategies.mixup import Mixup, transformer_blocks
from agnews.strategies.rdrop import RDrop, symmetric_kl

from tests.conftest import CONF_DIR, LABELS, REPO_ROOT, TINY, real_rows_dir, small_data_overrides

FAMILIES = ["deberta", "electra", "longformer", "minilm", "roberta", "xlnet"]
TEXTS = [
    "Stocks rally as investors cheer bank earnings and the merger",
    "Coach praises striker after the league match",
    "Researchers unveil wireless chip",
    "The minister met the president before the election to discuss the treaty and refugees",
    "Olympic season opens",
    "Linux software runs in space",
]
OPTIMIZER = functools.partial(torch.optim.AdamW, lr=1e-3)


def make_batch(bundle, texts=TEXTS, max_length: int = 64) -> dict:
    ids = [bundle.tokenizer(text, truncation=True, max_length=max_length)["input_ids"] for text in texts]
    collator = DynamicPaddingCollator(
        pad_token_id=bundle.tokenizer.pad_token_id,
        padding_side=bundle.padding_side,
        global_attention_first_token=bundle.global_attention_first_token,
    )
    return collator([{"index": i, "input_ids": row, "labels": i % len(LABELS)} for i, row in enumerate(ids)])


def plain_ce(module, batch) -> torch.Tensor:
    return F.cross_entropy(module(batch).float(), batch["labels"])


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ---- R-Drop ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_rdrop_two_passes_differ_and_loss_is_ce_plus_alpha_kl(build_tiny, name):
    bundle = build_tiny(name)
    batch = make_batch(bundle)
    module = RDrop(model=bundle.model, label_names=LABELS, optimizer=OPTIMIZER, alpha=0.7)
    assert module.model.training  # dropout on, as Lightning trains

    # The per-batch reseed (exact resume) must not give the two passes the same dropout masks.
    module.on_train_batch_start(batch, 5)
    first, second = module.two_pass_logits(batch)
    assert not torch.allclose(first, second, atol=1e-4)
    kl = symmetric_kl(first, second)
    assert kl > 0
    ce = 0.5 * (F.cross_entropy(first, batch["labels"]) + F.cross_entropy(second, batch["labels"]))

    # Same (seed, epoch, batch): the same masks, so training_loss is exactly this decomposition.
    module.on_train_batch_start(batch, 5)
    loss = module.training_loss(batch)
    torch.testing.assert_close(loss, ce + 0.7 * kl, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(torch.isfinite(g).all() for g in grads(module.model).values())

    # Dropout off: both passes are the same function, the KL is 0, loss and gradient are plain cross-entropy.
    module.model.eval()
    module.zero_grad(set_to_none=True)
    first, second = module.two_pass_logits(batch)
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)
    assert symmetric_kl(first, second) < 1e-8
    loss = module.training_loss(batch)
    loss.backward()
    ours = grads(module.model)
    module.zero_grad(set_to_none=True)
    reference = plain_ce(module, batch)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    expected = grads(module.model)
    assert ours.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-4, atol=1e-6, msg=key)


def test_symmetric_kl_is_the_mean_of_both_directions():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    p, q = a.softmax(-1), b.softmax(-1)
    by_hand = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    torch.testing.assert_close(symmetric_kl(a, b), by_hand)
    torch.testing.assert_close(symmetric_kl(b, a), by_hand)
    assert symmetric_kl(a, a) == 0


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf"), True, "1"])
def test_rdrop_rejects_bad_alpha(alpha):
    with pytest.raises(ConfigError, match="strategy.alpha"):
        RDrop(model=torch.nn.Linear(2, 2), label_names=LABELS, optimizer=OPTIMIZER, alpha=alpha)


# ---- mixup -----------------------------------------------------------------------------------------------------------
def mixup(model, **options) -> Mixup:
    module = Mixup(model=model, label_names=LABELS, optimizer=OPTIMIZER, **{"alpha": 1.0, **options})
    module.trace = []
    return module


def mixed_ce(logits, labels, lam, perm) -> torch.Tensor:
    return lam * F.cross_entropy(logits.float(), labels) + (1 - lam) * F.cross_entropy(logits.float(), labels[perm])


@pytest.mark.parametrize("name", FAMILIES)
def test_mixup_embeddings_equals_textbook_inputs_embeds(build_tiny, name):
    """Loss and gradient equal mixing ``inputs_embeds`` by hand and feeding the model the union attention mask."""
    bundle = build_tiny(name, "+model.config_overrides.initializer_range=0.2")  # logits that differ per input
    batch = make_batch(bundle)
    module = mixup(bundle.model, mix_on="embeddings")
    model = module.model.eval()  # no dropout: exact comparison
    module.on_train_batch_start(batch, 0)
    loss = module.training_loss(batch)
    loss.backward()
    ours = grads(model)
    (step,) = module.trace
    lam, perm = step["lam"], step["perm"]
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(len(TEXTS)))

    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(batch["input_ids"])
    mask = batch["attention_mask"]
    extra = {"global_attention_mask": batch["global_attention_mask"]} if "global_attention_mask" in batch else {}
    logits = model(
        inputs_embeds=lam * embeds + (1 - lam) * embeds[perm], attention_mask=torch.maximum(mask, mask[perm]), **extra
    ).logits
    expected_loss = mixed_ce(logits, batch["labels"], lam, perm)
    expected_loss.backward()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-4, atol=1e-5)
    expected = grads(model)
    assert ours.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-3, atol=1e-5, msg=key)
    # Mixing changed what the model saw: the unmixed batch gives other logits.
    with torch.no_grad():
        assert not torch.allclose(module(batch), logits, atol=1e-3)


@pytest.mark.parametrize("name", FAMILIES)
def test_mixup_embeddings_half_half_swap_gives_both_examples_the_same_input(build_tiny, name):
    """With λ = ½ and a swap of pairs, example i and its partner see the same mixed tokens at the same positions under
    the same (union) mask, so their logits are equal; unmixed they differ. This fails if the partner's tokens past the
    shorter example's length lose their position ids (RoBERTa and Longformer number pad tokens as padding_idx)."""
    bundle = build_tiny(name, "+model.config_overrides.initializer_range=0.2")
    batch = make_batch(bundle)
    module = mixup(bundle.model, mix_on="embeddings")
    module.model.eval()
    swap = torch.tensor([1, 0, 3, 2, 5, 4])
    lengths = batch["attention_mask"].sum(dim=1)
    assert all(lengths[i] != lengths[swap[i]] for i in range(len(TEXTS)))  # every pair mixes unequal lengths
    with torch.no_grad():
        mixed = module.mixed_logits(batch, 0.5, swap)
        clean = module(batch)
    torch.testing.assert_close(mixed, mixed[swap], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(clean, clean[swap], atol=1e-3)


def _hidden_of(args, kwargs):
    value = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
    return (value[0] if isinstance(value, tuple) else value).detach().clone()


def check_hidden_mix(bundle, batch, batch_dim: int) -> None:
    """Block 0 computes what it computes without mixing; block 1 receives λ·h + (1−λ)·h[π] of block 0's output h."""
    module = mixup(bundle.model, mix_on="hidden", layer=0)
    model = module.model.eval()
    _, blocks = transformer_blocks(model)
    seen = {"out": [], "next_in": [], "logits": []}
    handles = [
        blocks[0].register_forward_hook(lambda m, a, out: seen["out"].append(_hidden_of((out,), {}))),
        blocks[1].register_forward_pre_hook(lambda m, a, k: seen["next_in"].append(_hidden_of(a, k)), with_kwargs=True),
        model.register_forward_hook(lambda m, a, out: seen["logits"].append(out.logits)),
    ]
    try:
        with torch.no_grad():
            module(batch)
        module.on_train_batch_start(batch, 0)
        loss = module.training_loss(batch)
    finally:
        for handle in handles:
            handle.remove()
    (step,) = module.trace
    lam, perm = step["lam"], step["perm"]
    assert 0 < lam < 1
    clean_out, mixed_out = seen["out"]
    clean_next, mixed_next = seen["next_in"]
    torch.testing.assert_close(clean_next, clean_out)  # sanity: the observation points are adjacent
    torch.testing.assert_close(mixed_out, clean_out, rtol=1e-5, atol=1e-6)  # own attention mask up to the mix
    expected = lam * clean_out + (1 - lam) * clean_out.index_select(batch_dim, perm)
    torch.testing.assert_close(mixed_next, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed_next, clean_next, atol=1e-4)
    torch.testing.assert_close(loss, mixed_ce(seen["logits"][1], batch["labels"], lam, perm))
    # The hooks are gone: a plain forward is the clean one again.
    with torch.no_grad():
        torch.testing.assert_close(module(batch), seen["logits"][0])


@pytest.mark.parametrize("name", FAMILIES)
def test_mixup_hidden_mixes_exactly_the_output_of_block_layer(build_tiny, name):
    bundle = build_tiny(name)
    check_hidden_mix(bundle, make_batch(bundle), batch_dim=1 if name == "xlnet" else 0)  # XLNet: (length, batch, dim)


def test_mixup_hidden_finds_the_batch_dimension_when_length_equals_batch_size(build_tiny):
    bundle = build_tiny("xlnet")
    batch = make_batch(bundle, max_length=len(TEXTS))
    assert batch["input_ids"].shape == (len(TEXTS), len(TEXTS))
    check_hidden_mix(bundle, batch, batch_dim=1)


def test_mixup_hidden_with_prompt_tuning_on_xlnet(build_tiny):
    """Prompt tuning embeds the ids batch-major and hands XLNet inputs_embeds: the block layout still decides."""
    from omegaconf import OmegaConf

    from agnews.models.peft import apply_peft

    bundle = apply_peft(build_tiny("xlnet"), OmegaConf.load(CONF_DIR / "peft" / "prompt.yaml"))
    check_hidden_mix(bundle, make_batch(bundle), batch_dim=1)


@pytest.mark.parametrize("name, options", [
    ("minilm", {"mix_on": "embeddings"}),
    ("xlnet", {"mix_on": "embeddings"}),
    ("deberta", {"mix_on": "hidden", "layer": 1}),
])
def test_mixup_with_lambda_one_is_plain_cross_entropy(build_tiny, name, options):
    bundle = build_tiny(name)
    batch = make_batch(bundle)
    module = mixup(bundle.model, **{**options, "alpha": 0.0})
    module.model.eval()
    module.on_train_batch_start(batch, 3)
    loss = module.training_loss(batch)
    assert module.trace[0]["lam"] == 1.0
    torch.testing.assert_close(loss, plain_ce(module, batch), rtol=1e-6, atol=1e-6)


def test_mixup_draws_are_seeded_by_seed_epoch_and_batch(build_tiny):
    bundle = build_tiny("minilm")
    batch = make_batch(bundle)
    module = mixup(bundle.model, mix_on="hidden", layer=1, alpha=0.4)  # dropout on

    def step(batch_idx: int, seed: int = 42):
        module.seed = seed
        module.on_train_batch_start(batch, batch_idx)
        torch.manual_seed(batch_idx + 1000)  # the global RNG (dropout's) does not drive the draws...
        module.on_train_batch_start(batch, batch_idx)  # ...the per-batch reseed then fixes dropout too
        return module.training_loss(batch).detach(), module.trace[-1]

    loss_a, draw_a = step(7)
    loss_b, draw_b = step(7)
    assert draw_a["lam"] == draw_b["lam"] and torch.equal(draw_a["perm"], draw_b["perm"])
    assert torch.equal(loss_a, loss_b)
    others = [step(8)[1], step(7, seed=43)[1]]
    assert all(o["lam"] != draw_a["lam"] for o in others)
    lam, perm = module.draw(len(TEXTS))
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(len(TEXTS)))


def test_evaluation_and_prediction_never_mix(build_tiny):
    bundle = build_tiny("minilm")
    batch = make_batch(bundle)
    for options in ({"mix_on": "embeddings"}, {"mix_on": "hidden", "layer": 0}):
        module = mixup(bundle.model, **options)
        module.model.eval()
        embeddings = module.model.get_input_embeddings()
        hooks = (len(embeddings._forward_hooks), len(module.mix_target()._forward_hooks))
        with torch.no_grad():
            clean = module.model(**module.model_inputs(batch)).logits
            module.on_train_batch_start(batch, 0)
            module.training_loss(batch)
            predicted = module.predict_step(batch, 0)["probs"]
            module.validation_step(batch, 0)
        assert (len(embeddings._forward_hooks), len(module.mix_target()._forward_hooks)) == hooks
        assert len(module.trace) == 1  # only the training step drew a mix
        torch.testing.assert_close(predicted, clean.softmax(-1))


@pytest.mark.parametrize("options", [{"mix_on": "embeddings"}, {"mix_on": "hidden", "layer": 1}, None])
def test_with_peft_lora(build_tiny, options):
    """A PeftModel wraps the model: blocks and embeddings are still found, only adapters and the head learn."""
    from omegaconf import OmegaConf

    from agnews.models.peft import apply_peft

    bundle = apply_peft(build_tiny("deberta"), OmegaConf.load(CONF_DIR / "peft" / "lora.yaml"))
    batch = make_batch(bundle)
    if options is None:
        module = RDrop(model=bundle.model, label_names=LABELS, optimizer=OPTIMIZER)
    else:
        module = mixup(bundle.model, **options)
    module.on_train_batch_start(batch, 0)
    loss = module.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    trained = list(grads(bundle.model))
    assert trained and all("lora_" in n or "modules_to_save" in n for n in trained), trained


class NoBlocks(torch.nn.Module):
    """A real (non-transformer) classifier: embeddings and a linear head, no stack of blocks."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 4)

    def get_input_embeddings(self):
        return self.embed


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": -1.0}, r"strategy.alpha .* must be >= 0"),
        ({"alpha": float("nan")}, r"strategy.alpha"),
        ({"mix_on": "tokens"}, r"strategy.mix_on must be one of \['embeddings', 'hidden'\]"),
        ({"mix_on": "hidden", "layer": 2}, r"block index in \[0, 1\] .*2 blocks at bert.encoder"),
        ({"mix_on": "hidden", "layer": -1}, r"strategy.layer must be a block index"),
        ({"mix_on": "hidden", "layer": None}, r"strategy.layer must be a block index"),
        ({"mix_on": "hidden", "layer": "1"}, r"strategy.layer must be a block index"),
        ({"mix_on": "embeddings", "layer": 1}, r"strategy.layer is only used with strategy.mix_on=hidden"),
    ],
)
def test_mixup_rejects_bad_options(build_tiny, options, message):
    model = build_tiny("minilm").model
    with pytest.raises(ConfigError, match=message):
        Mixup(model=model, label_names=LABELS, optimizer=OPTIMIZER, **options)


def test_mixup_needs_transformer_blocks_or_input_embeddings():
    with pytest.raises(ConfigError, match="no stack of transformer blocks .*NoBlocks.*mix_on=embeddings"):
        Mixup(model=NoBlocks(), label_names=LABELS, optimizer=OPTIMIZER, mix_on="hidden", layer=0)
    with pytest.raises(ConfigError, match="Linear has no get_input_embeddings"):
        Mixup(model=torch.nn.Linear(2, 2), label_names=LABELS, optimizer=OPTIMIZER, mix_on="embeddings")


@pytest.mark.parametrize(
    "overrides, message",
    [(["strategy=mixup", "strategy.mix_on=hidden", "strategy.layer=5"], "block index in \\[0, 1\\]"),
     (["strategy=rdrop", "strategy.alpha=-1"], "strategy.alpha")],
)
def test_yaml_options_are_validated_when_the_strategy_is_built(compose_train_cfg, build_tiny, overrides, message):
    """What ``python -m agnews.train strategy=... <bad option>`` builds: Hydra wraps the ConfigError naming the key."""
    from hydra.errors import InstantiationException

    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", *overrides])
    with pytest.raises(InstantiationException, match=message) as info:
        instantiate(cfg.strategy, model=build_tiny("minilm").model, label_names=LABELS, seed=cfg.seed)
    assert isinstance(info.value.__cause__, ConfigError)


@pytest.mark.parametrize("strategy", ["rdrop", "mixup"])
def test_strategies_inherit_the_standard_recipe(compose_train_cfg, strategy):
    cfg = compose_train_cfg([f"strategy={strategy}"])
    standard = compose_train_cfg(["strategy=standard"]).strategy
    for key in ("optimizer", "scheduler", "weight_decay", "no_decay", "label_smoothing", "llrd"):
        assert cfg.strategy[key] == standard[key], key
    assert cfg.strategy.optimizer.fused is True
    # Layer-wise LR decay, a ClassificationModule option, passes through the strategy's keyword arguments.
    module = instantiate(compose_train_cfg([f"strategy={strategy}", "strategy.llrd=0.9"]).strategy,
                         model=NoBlocks(), label_names=LABELS, seed=0)
    assert module.llrd == 0.9


# ---- from the CLI, and learning --------------------------------------------------------------------------------------
def _logged(run_dir, column: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [float(r[column]) for r in csv.DictReader(handle) if r.get(column)]


def test_both_strategies_run_from_the_cli(tmp_path, make_ag_news_dir):
    """``python -m agnews.train -m ... strategy=rdrop,mixup`` (one process, two runs): each finishes, scores the test
    split, and logs its own term (R-Drop's KL > 0 with the model's dropout; mixup's λ in (0, 1))."""
    data = make_ag_news_dir(train_per_class=20, test_per_class=10)
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "agnews.train", "-m", *TINY, *small_data_overrides(data), "trainer.max_epochs=1",
        "strategy=rdrop,mixup", f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, target, column in [("0", "rdrop.RDrop", "train/kl"), ("1", "mixup.Mixup", "train/mix_lambda")]:
        run_dir = sweep / job
        assert f"agnews.strategies.{target}" in (run_dir / "config.yaml").read_text()
        assert json.loads((run_dir / "metrics.json").read_text())["test"]["num_examples"] == 40
        values = _logged(run_dir, column)
        assert values and all(0 < v < (1 if column == "train/mix_lambda" else float("inf")) for v in values)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, column",
    [
        (["strategy=rdrop"], "train/kl"),
        (["strategy=mixup"], "train/mix_lambda"),
        (["strategy=mixup", "strategy.mix_on=hidden", "strategy.layer=1"], "train/mix_lambda"),
    ],
)
def test_tiny_run_learns(tmp_path, make_ag_news_dir, compose_train_cfg, overrides, column):
    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=60, test_per_class=10)
    cfg = compose_train_cfg(
        [*TINY, *small_data_overrides(data), "trainer.max_epochs=5", "strategy.optimizer.lr=1e-2", *overrides]
    )
    metrics = train(cfg)
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
    values = _logged(tmp_path / "run", column)
    assert values and all(v > 0 for v in values)
    if column == "train/mix_lambda":
        assert all(v < 1 for v in values) and len(set(values)) > 1  # a fresh draw per batch


# ---- the real pretrained MiniLM on real rows -------------------------------------------------------------------------
@pytest.mark.slow  # ~35 s of CPU each (six steps of the 22M-parameter model, R-Drop's at twice the batch)
@pytest.mark.parametrize("options", [None, {"mix_on": "embeddings"}, {"mix_on": "hidden", "layer": 3}])
def test_real_minilm_steps_reduce_the_loss(compose_train_cfg, shared_data_dir, tmp_path, options):
    """A few AdamW steps of each strategy on 16 real AG News rows: finite losses, and the clean loss on those rows
    goes down (mixup's own loss varies with λ from step to step, so the clean loss is the measure)."""
    from agnews.data.sources import read_ag_news_csv

    rows = read_ag_news_csv(real_rows_dir(tmp_path / "data", shared_data_dir, train_rows=16, test_rows=4) / "train.csv",
                            "train")
    cfg = compose_train_cfg(["model=minilm_local"])
    torch.manual_seed(0)
    bundle = instantiate(cfg.model, label_names=list(LABELS))
    batch = make_batch(bundle, rows.texts, max_length=64)
    batch["labels"] = torch.as_tensor(rows.labels)
    if options is None:
        module = RDrop(model=bundle.model, label_names=LABELS, optimizer=OPTIMIZER)
    else:
        module = mixup(bundle.model, alpha=0.4, **options)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def clean_loss() -> float:
        module.model.eval()
        with torch.no_grad():
            value = float(plain_ce(module, batch))
        module.model.train()
        return value

    before = clean_loss()
    losses = []
    for step in range(6):
        module.on_train_batch_start(batch, step)
        loss = module.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert clean_loss() < before - 0.1, (before, losses)
