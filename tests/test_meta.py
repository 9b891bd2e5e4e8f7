"""Meta-learning: episodes, the functional inner loop, first- vs second-order MAML, the Reptile step, meta-evaluation."""

from __future__ import annotations

import json
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
    both = collate([dataset[i] for i in episode.support + episode.query])
    phi, losses = module.adapted_weights(both, episode.classes)
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
    metrics = train(cfg)
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["global_step"] == 6  # 3 episodes (outer steps) per epoch, not one per training batch (8)
    assert metrics["test"]["num_examples"] == 16

    # meta-evaluation of the finished run (exported model, its val split: 4 rows per class)
    from agnews.strategies.meta import meta_evaluate_run

    report = meta_evaluate_run(tmp_path / "run", "val", n_way=4, k_shot=2, query_per_class=2, episodes=3,
                               inner_lr=0.1, inner_steps=1)
    assert report["split"] == "val" and len(report["episode_accuracies"]) == 3
    assert all(a in {i / 8 for i in range(9)} for a in report["episode_accuracies"])  # 8 query rows per episode
