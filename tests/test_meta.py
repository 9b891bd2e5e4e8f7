"""Meta-learning: episodes (label-permuted head slots), the functional inner loop, first- vs second-order MAML, the
Reptile step, the zero-head option, meta-evaluation."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from agnews.errors import ConfigError
from agnews.strategies.meta import (
    MAML,
    EpisodeSampler,
    Reptile,
    adapt,
    confidence_interval,
    episode_targets,
    functional_logits,
    meta_evaluate,
    output_layer_names,
)
from tests.conftest import LABELS, synthetic_rows

TINY_BERT = {
    "model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}


@pytest.fixture
def tiny():
    """A tiny BERT classifier (no dropout: deterministic) and a small 4-class pool of real token ids."""
    from agnews.data.batching import DynamicPaddingCollator, TokenizedDataset
    from agnews.data.sources import join_title_description
    from agnews.data.tokenization import tokenize_texts
    from agnews.models.factory import load_classifier

    torch.manual_seed(0)
    bundle = load_classifier("minilm", "unused", LABELS, tiny=True, tiny_config=TINY_BERT)
    rows = synthetic_rows(8, seed=3)
    texts = [join_title_description(t, d) for _, t, d in rows]
    labels = [int(label) - 1 for label, _, _ in rows]
    dataset = TokenizedDataset(tokenize_texts(bundle.tokenizer, texts, 24), labels)
    collate = DynamicPaddingCollator(bundle.tokenizer.pad_token_id)
    return bundle.model, dataset, collate


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- episodes -----------------------------------------------------------------------------------------------------------
def test_episode_sampler_shapes_disjointness_and_seeding():
    labels = [0] * 10 + [1] * 10 + [2] * 10 + [3] * 3  # class 3 is too small for 2 + 3
    sampler = EpisodeSampler(labels, n_way=3, k_shot=2, query_per_class=3, seed=7)
    for key in range(20):
        episode = sampler.sample(key)
        assert len(episode.classes) == 3 and 3 not in episode.classes and episode.classes == sorted(episode.classes)
        assert len(episode.support) == 3 * 2 and len(episode.query) == 3 * 3
        assert not set(episode.support) & set(episode.query)
        assert len(set(episode.support)) == 6 and len(set(episode.query)) == 9
        for c in episode.classes:
            assert sum(labels[i] == c for i in episode.support) == 2
            assert sum(labels[i] == c for i in episode.query) == 3
    assert sampler.sample(5) == EpisodeSampler(labels, 3, 2, 3, seed=7).sample(5)  # seeded
    assert sampler.sample(5) != sampler.sample(6)
    assert sampler.sample(5) != EpisodeSampler(labels, 3, 2, 3, seed=8).sample(5)
    with pytest.raises(ConfigError, match="need 4 classes"):
        EpisodeSampler(labels, n_way=4, k_shot=2, query_per_class=3)
    with pytest.raises(ConfigError, match="between 2 and 4"):
        EpisodeSampler(labels, n_way=5, k_shot=1, query_per_class=1)
    assert episode_targets(torch.tensor([3, 1, 3]), [1, 3]).tolist() == [1, 0, 1]


@pytest.mark.parametrize("n_way", [4, 2])
def test_permuted_slots_are_distinct_seeded_per_key_and_vary(n_way):
    labels = [c for c in range(4) for _ in range(6)]
    permuted = EpisodeSampler(labels, n_way, k_shot=2, query_per_class=2, seed=3, permute_labels=True)
    fixed = EpisodeSampler(labels, n_way, k_shot=2, query_per_class=2, seed=3, permute_labels=False)
    assignments = set()
    for key in [(e, b, t) for e in range(2) for b in range(5) for t in range(5)]:  # 50 training-step keys
        episode = permuted.sample(*key)
        assert len(episode.slots) == n_way == len(set(episode.slots)) and set(episode.slots) <= {0, 1, 2, 3}
        assignments.add(tuple(zip(episode.classes, episode.slots)))
        # a pure function of (seed, key): a fresh sampler (a resumed run) draws the same episode and slots
        assert EpisodeSampler(labels, n_way, 2, 2, seed=3, permute_labels=True).sample(*key) == episode
        # the slots come after the examples: both settings draw the same classes, support and query
        plain = fixed.sample(*key)
        assert (plain.classes, plain.support, plain.query) == (episode.classes, episode.support, episode.query)
        assert plain.slots == plain.classes == sorted(plain.classes)
    assert len(assignments) > 10  # 50 episodes: many class->slot assignments, not one fixed mapping
    assert any(c != s for a in assignments for c, s in a)
    with pytest.raises(ConfigError, match="strategy.permute_labels must be true or false, got 'yes'"):
        EpisodeSampler(labels, n_way, 2, 2, permute_labels="yes")
    with pytest.raises(ConfigError, match="label 3 has no head slot"):
        EpisodeSampler(labels, n_way, 2, 2, num_slots=3)


class SlotModel(torch.nn.Module):
    """A real (tiny) classifier whose features are the one-hot class id carried by the first token, so its head alone
    decides which slot scores which class: ``head.weight[s, c]`` is the score of class c at slot s."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(4, 4)
        with torch.no_grad():
            self.head.weight.copy_(3 * torch.eye(4))  # class c scored at slot c: a memorised fixed mapping
            self.head.bias.zero_()

    def forward(self, input_ids, attention_mask=None):
        return self.head(F.one_hot(input_ids[:, 0], 4).float())


def _class_pool(per_class: int = 6):
    dataset = [
        {"input_ids": torch.tensor([c, 0]), "labels": c, "index": i}
        for i, c in enumerate(c for _ in range(per_class) for c in range(4))
    ]

    def collate(items):
        ids = torch.stack([item["input_ids"] for item in items])
        labels = torch.tensor([item["labels"] for item in items])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    return dataset, collate


def test_logits_and_targets_use_the_same_slot_assignment():
    """A head that scores each episode class at its assigned slot is 100% right only if the logits are read at the
    episode's slots AND the targets are the classes' positions: reading the logits at the classes' own slots, or
    indexing targets by slot, gets episodes wrong."""
    dataset, collate = _class_pool()
    model = SlotModel()
    sampler = EpisodeSampler([d["labels"] for d in dataset], 4, 2, 2, seed=0, permute_labels=True)
    wrong_reads = 0
    for key in range(20):
        episode = sampler.sample(key)
        weight = torch.zeros(4, 4)
        for c, s in zip(episode.classes, episode.slots):
            weight[s, c] = 10.0  # this episode's head: class c scored at its slot
        query = collate([dataset[i] for i in episode.query])
        targets = episode_targets(query["labels"], episode.classes)
        params = {"head.weight": weight}
        right = functional_logits(model, params, query, episode.slots).argmax(-1)
        assert torch.equal(right, targets), key
        wrong_reads += not torch.equal(functional_logits(model, params, query, episode.classes).argmax(-1), targets)
        if episode.slots != episode.classes:
            slot_targets = torch.tensor([episode.slots[episode.classes.index(int(y))] for y in query["labels"]])
            assert not torch.equal(right, slot_targets)  # targets are positions 0..N-1, not slot ids
    assert wrong_reads > 0


def test_permuted_episodes_defeat_a_memorised_head_until_it_adapts():
    dataset, collate = _class_pool(per_class=8)
    model = SlotModel()
    run = partial(meta_evaluate, model, dataset, collate, 4, 2, 4, episodes=30, seed=5,
                  adapt_names=["head.weight", "head.bias"])
    assert run(inner_lr=1.0, inner_steps=0, permute_labels=False)["accuracy"] == 1.0  # the fixed mapping is memorised
    unadapted = run(inner_lr=1.0, inner_steps=0, permute_labels=True)
    assert unadapted["permute_labels"] and unadapted["accuracy"] < 0.5  # ~chance (0.25): the mapping is useless
    # Adaptation on the support set reads and trains the same slots the query set is scored at: it solves every episode.
    assert run(inner_lr=2.0, inner_steps=10, permute_labels=True)["accuracy"] == 1.0
    # head_init=zero: all-zero logits before adapting (argmax = position 0: exactly 1 query class in 4 is right) ...
    assert run(inner_lr=2.0, inner_steps=0, permute_labels=True, head_init="zero")["accuracy"] == 0.25
    # ... and the zeroed head adapts to every episode
    assert run(inner_lr=2.0, inner_steps=10, permute_labels=True, head_init="zero")["accuracy"] == 1.0
    assert torch.equal(model.head.weight, 3 * torch.eye(4))  # evaluation never touches the model
    with pytest.raises(ConfigError, match="strategy.head_init must be one of"):
        run(inner_lr=1.0, inner_steps=1, head_init="random")


# ---- the inner loop -------------------------------------------------------------------------------------------------------
def _maml(model, dataset, collate, **kwargs):
    options = dict(n_way=3, k_shot=2, query_per_class=2, inner_lr=0.5, inner_steps=2, meta_batch_size=1)
    options.update(kwargs)
    module = MAML(model, LABELS, optimizer=partial(torch.optim.SGD, lr=0.1), weight_decay=0.0, **options)
    module.attach_data(dataset, collate)
    module._step_key = (0, 0)
    return module


def test_inner_loop_changes_only_fast_weights_until_the_outer_step(tiny):
    model, dataset, collate = tiny
    module = _maml(model, dataset, collate)
    episode, support, query = module.episode_batches(0)
    before = _snapshot(model)
    fast, losses = adapt(model, module.meta_parameters(), support, episode.classes, 0.5, 2)
    # meta-parameters: untouched, and no .grad left behind by the inner gradients
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.grad is None, name
    changed = [n for n, t in fast.items() if not torch.equal(t.detach(), before[n])]
    assert "classifier.weight" in changed and "bert.encoder.layer.0.attention.self.query.weight" in changed
    targets = episode_targets(support["labels"], episode.classes)
    with torch.no_grad():
        after = F.cross_entropy(functional_logits(model, fast, support, episode.classes), targets).item()
    assert after < losses[0]  # adaptation fits the support set

    loss, _ = module.task_query_loss(support, query, episode.classes)
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "classifier.weight" in moved and len(moved) >= 10


def _grads(loss, params):
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: g for n, g in zip(params, grads) if g is not None}


def test_first_order_and_second_order_gradients_differ(tiny):
    model, dataset, collate = tiny
    module = _maml(model, dataset, collate)
    episode, support, query = module.episode_batches(0)
    params = module.meta_parameters()

    first = _grads(module.task_query_loss(support, query, episode.classes)[0], params)
    module.second_order = True
    second = _grads(module.task_query_loss(support, query, episode.classes)[0], params)
    assert first.keys() == second.keys() and "classifier.weight" in first
    diff = torch.cat([(first[n] - second[n]).flatten() for n in first]).norm()
    norm = torch.cat([first[n].flatten() for n in first]).norm()
    assert diff / norm > 1e-3, "second-order MAML must differentiate through the inner step"

    # First-order MAML's outer gradient IS the query gradient at the (constant) fast weights.
    start = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    fast, _ = adapt(model, start, support, episode.classes, 0.5, 2)
    fast = {n: t.detach().requires_grad_(True) for n, t in fast.items()}
    targets = episode_targets(query["labels"], episode.classes)
    at_fast = _grads(F.cross_entropy(functional_logits(model, fast, query, episode.classes), targets), fast)
    for name in first:
        assert torch.allclose(first[name], at_fast[name], atol=1e-6), name


def test_reptile_moves_toward_adapted_weights_by_the_meta_step(tiny):
    model, dataset, collate = tiny
    module = Reptile(
        model, LABELS, optimizer=partial(torch.optim.SGD, lr=0.25), weight_decay=0.0,
        n_way=4, k_shot=2, query_per_class=2, inner_lr=0.5, inner_steps=3, meta_batch_size=1,
    )
    module.attach_data(dataset, collate)
    module._step_key = (0, 0)
    theta = _snapshot(model)
    episode = module.sampler.sample(0, 0, 0)
    assert module.permute_labels and episode.slots != episode.classes  # else this test could not tell them apart
    both = collate([dataset[i] for i in episode.support + episode.query])
    phi, losses = module.adapted_weights(both, episode.classes, episode.slots)
    assert len(losses) == 3 and losses[-1] < losses[0]
    for name, param in model.named_parameters():  # adaptation did not touch the meta-parameters
        assert torch.equal(param, theta[name])

    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    module.training_loss({}).backward()
    module.configure_gradient_clipping(optimizer, 1.0, "norm")  # Reptile never clips its displacement
    optimizer.step()
    moved = 0
    for name, param in model.named_parameters():
        expected = theta[name] + 0.25 * (phi[name] - theta[name])
        assert torch.allclose(param, expected, atol=1e-6), name
        moved += not torch.equal(param, theta[name])
    assert moved >= 10


# ---- meta-evaluation ---------------------------------------------------------------------------------------------------
def test_confidence_interval_math():
    mean, half = confidence_interval([0.5, 0.7, 0.6, 0.8])
    assert mean == pytest.approx(0.65)
    # sample std = sqrt(0.05 / 3) = 0.1290994; 1.96 * 0.1290994 / sqrt(4)
    assert half == pytest.approx(0.1265174, rel=1e-6)
    assert confidence_interval([0.4]) == (0.4, 0.0)
    assert confidence_interval([0.5, 0.5, 0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        confidence_interval([])


def test_meta_evaluate_reports_per_episode_accuracy_and_leaves_the_model_alone(tiny):
    model, dataset, collate = tiny
    before = _snapshot(model)
    report = meta_evaluate(model, dataset, collate, n_way=2, k_shot=2, query_per_class=3, episodes=6,
                           inner_lr=0.5, inner_steps=2, seed=1)
    accs = report["episode_accuracies"]
    assert len(accs) == 6 and all(round(a * 6) == a * 6 for a in accs)  # 6 query examples per episode
    assert report["accuracy"] == pytest.approx(sum(accs) / 6)
    assert report["ci95"] == pytest.approx(confidence_interval(accs)[1])
    assert report["chance"] == 0.5
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])
    again = meta_evaluate(model, dataset, collate, 2, 2, 3, episodes=6, inner_lr=0.5, inner_steps=2, seed=1)
    assert again["episode_accuracies"] == accs


# ---- the strategies' episode options -------------------------------------------------------------------------------------
def test_maml_training_loss_reads_each_episodes_slots(tiny):
    model, dataset, collate = tiny
    with torch.no_grad():  # a head whose slots score the classes differently (a fresh tiny head gives ~0 everywhere)
        model.classifier.weight.normal_(0.0, 20.0, generator=torch.Generator().manual_seed(0))
    module = _maml(model, dataset, collate, n_way=4, meta_batch_size=1, permute_labels=True)
    episode, support, query = module.episode_batches(0)
    assert episode.slots != episode.classes
    loss = module.training_loss({})
    by_slots = module.task_query_loss(support, query, episode.classes, episode.slots)[0]
    by_classes = module.task_query_loss(support, query, episode.classes)[0]
    assert loss.item() == pytest.approx(by_slots.item(), rel=1e-6)
    assert abs(by_slots.item() - by_classes.item()) > 1e-4
    # permute_labels=false: the episode of the same key, read at the classes' own slots (the previous behaviour)
    fixed = _maml(model, dataset, collate, n_way=4, meta_batch_size=1, permute_labels=False)
    fixed_episode, _, _ = fixed.episode_batches(0)
    assert fixed_episode.slots == fixed_episode.classes and fixed_episode.support == episode.support
    assert fixed.training_loss({}).item() == pytest.approx(by_classes.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["maml", "reptile"])
def test_zero_head_starts_every_inner_loop_at_uniform_predictions(tiny, kind):
    model, dataset, collate = tiny
    names = [n for n, _ in model.named_parameters()]
    assert output_layer_names(model, 4, names) == ["classifier.weight", "classifier.bias"]
    with torch.no_grad():  # a head far from zero, so that zeroing it shows (a fresh tiny head gives ~0 logits)
        model.classifier.weight.normal_(0.0, 20.0, generator=torch.Generator().manual_seed(0))
    cls = MAML if kind == "maml" else Reptile
    module = cls(model, LABELS, optimizer=partial(torch.optim.SGD, lr=0.1), weight_decay=0.0, n_way=4, k_shot=2,
                 query_per_class=2, inner_lr=0.5, inner_steps=2, meta_batch_size=1, head_init="zero")
    module.attach_data(dataset, collate)
    module._step_key = (0, 0)
    head_before = model.classifier.weight.detach().clone()
    episode, support, query = module.episode_batches(0)
    if kind == "maml":
        loss, inner = module.task_query_loss(support, query, episode.classes, episode.slots)
        loss.backward()
        # the meta-head never reaches the query loss (every inner loop replaces it): no outer gradient for it
        assert model.classifier.weight.grad is None and model.bert.pooler.dense.weight.grad is not None
    else:
        phi, inner = module.adapted_weights(collate([dataset[i] for i in episode.support + episode.query]),
                                            episode.classes, episode.slots)
        assert phi["classifier.weight"].abs().sum() > 0  # adapted away from zero
    assert inner[0] == pytest.approx(math.log(4), abs=1e-5)  # zero logits: cross-entropy log N before any step
    assert torch.equal(model.classifier.weight, head_before)  # only the fast weights were zeroed
    model.zero_grad(set_to_none=True)
    keep = cls(model, LABELS, optimizer=partial(torch.optim.SGD, lr=0.1), weight_decay=0.0, n_way=4, k_shot=2,
               query_per_class=2, inner_lr=0.5, inner_steps=2, meta_batch_size=1)
    keep.attach_data(dataset, collate)
    if kind == "maml":
        _, kept = keep.task_query_loss(support, query, episode.classes, episode.slots)
    else:
        _, kept = keep.adapted_weights(collate([dataset[i] for i in episode.support + episode.query]),
                                       episode.classes, episode.slots)
    assert abs(kept[0] - math.log(4)) > 1e-2  # head_init=keep: the meta-learned head's own predictions


@pytest.mark.parametrize(
    "options, message",
    [
        ({"permute_labels": "yes"}, "strategy.permute_labels must be true or false, got 'yes'"),
        ({"permute_labels": 1}, "strategy.permute_labels must be true or false, got 1"),
        ({"head_init": "random"}, r"strategy.head_init must be one of \['keep', 'zero'\], got 'random'"),
        ({"head_init": "zero", "adapt_prefixes": ["bert.encoder"]}, "no Linear layer with 4 outputs is among the"),
    ],
)
def test_bad_episode_options_fail_clearly(tiny, options, message):
    model, _, _ = tiny
    for cls in (MAML, Reptile):
        with pytest.raises(ConfigError, match=message):
            cls(model, LABELS, optimizer=partial(torch.optim.SGD, lr=0.1), **options)


def test_bad_episode_options_fail_clearly_from_the_command_line(compose_train_cfg):
    """What ``python -m agnews.train strategy=maml strategy.permute_labels=yes`` builds: Hydra's instantiate wraps the
    strategy's ConfigError, whose message names the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from agnews.models.factory import load_classifier

    bundle = load_classifier("minilm", "unused", LABELS, tiny=True, tiny_config=TINY_BERT)
    for override, message in [("strategy.permute_labels=yes", "strategy.permute_labels must be true or false"),
                              ("strategy.head_init=random", "strategy.head_init must be one of")]:
        cfg = compose_train_cfg(["strategy=maml", override])
        with pytest.raises(InstantiationException, match=message) as info:
            instantiate(cfg.strategy, model=bundle.model, label_names=LABELS, seed=0)
        assert isinstance(info.value.__cause__, ConfigError)


# ---- through the pipeline ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["maml", "reptile"])
def test_meta_strategies_run_in_the_pipeline(strategy, tmp_path, make_ag_news_dir, compose_train_cfg):
    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=20, test_per_class=4)
    cfg = compose_train_cfg(
        [
            "model=minilm", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", "logger=csv",
            f"data.data_dir={data}", "data.source=csv", "data.val_size=16", "data.max_length=24",
            "data.batch_size=8", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
            f"strategy={strategy}", "strategy.k_shot=2", "strategy.query_per_class=2", "strategy.inner_steps=1",
            "strategy.episodes_per_epoch=3", "trainer.max_epochs=2",
        ]
    )
    assert cfg.strategy.permute_labels is True and cfg.strategy.head_init == "keep"  # the YAML defaults
    metrics = train(cfg)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["global_step"] == 6  # 3 episodes (outer steps) per epoch, not one per training batch (8)
    assert metrics["test"]["num_examples"] == 16

    # meta-evaluation of the finished run (exported model, its val split: 4 rows per class)
    from agnews.strategies.meta import meta_evaluate_run

    report = meta_evaluate_run(tmp_path / "run", "val", n_way=4, k_shot=2, query_per_class=2, episodes=3,
                               inner_lr=0.1, inner_steps=1, permute_labels=True)
    assert report["split"] == "val" and len(report["episode_accuracies"]) == 3 and report["permute_labels"]
    assert all(a in {i / 8 for i in range(9)} for a in report["episode_accuracies"])  # 8 query rows per episode
