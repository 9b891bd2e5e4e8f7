"""PEFT (peft=lora|ia3|prefix|prompt): what trains, what a run writes, what the exported model reproduces, bad config."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from agnews.errors import ConfigError
from agnews.models.peft import HEAD_MODULES, apply_peft

from tests.conftest import LABELS

METHODS = ["lora", "ia3", "prefix", "prompt"]
# Parameter names that may train under each method: the adapter's, and the head's trainable copy.
ADAPTER_MARKS = {"lora": ("lora_",), "ia3": ("ia3_l",), "prefix": ("prompt_encoder",), "prompt": ("prompt_encoder",)}


@pytest.fixture
def build(compose_train_cfg):
    def make(peft: str, *overrides: str, model: str = "minilm"):
        cfg = compose_train_cfg([f"model={model}", "model.tiny=true", f"peft={peft}", *overrides])
        torch.manual_seed(0)
        return cfg, instantiate(cfg.model, label_names=list(LABELS))

    return make


def _linear(model, suffixes):
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)
    }


def _head_size(model, model_type) -> int:
    heads = HEAD_MODULES[model_type]
    return sum(
        p.numel()
        for name, module in model.named_modules()
        if any(name == h or name.endswith("." + h) for h in heads)
        for p in module.parameters()
    )


def _expected_trainable(method, cfg, model) -> int:
    """What the method implies, computed from the unwrapped model's own layers."""
    config = model.config
    head = _head_size(model, config.model_type)
    family = cfg.model.family
    if method == "lora":
        r = cfg.peft.r
        return head + sum(r * (m.in_features + m.out_features) for m in _linear(model, cfg.peft.target_modules[family]).values())
    if method == "ia3":
        feedforward = set(cfg.peft.feedforward_modules[family])
        total = 0
        for name, module in _linear(model, cfg.peft.target_modules[family]).items():
            is_ff = any(name == s or name.endswith("." + s) for s in feedforward)
            total += module.in_features if is_ff else module.out_features
        return head + total
    if method == "prompt":
        return head + cfg.peft.num_virtual_tokens * model.get_input_embeddings().embedding_dim
    if method == "prefix":
        return head + cfg.peft.num_virtual_tokens * config.num_hidden_layers * 2 * config.hidden_size
    raise AssertionError(method)


@pytest.mark.parametrize("method", METHODS)
def test_only_adapters_and_head_train(build, method):
    cfg, bundle = build(method)
    expected = _expected_trainable(method, cfg, bundle.model)
    total_before = sum(p.numel() for p in bundle.model.parameters())
    wrapped = apply_peft(bundle, cfg.peft)
    trainable = {n: p.numel() for n, p in wrapped.model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected, trainable
    for name in trainable:
        assert any(mark in name for mark in ADAPTER_MARKS[method]) or "modules_to_save" in name, name
    info = wrapped.describe()["peft"]
    assert info["method"] == method and info["trainable_parameters"] == expected
    assert info["trainable_parameters"] < 0.2 * total_before
    # The head (classifier, and BERT's pooler) trains under every method.
    assert any("classifier" in n for n in trainable) and any("pooler" in n for n in trainable)
    # The input embeddings are frozen.
    assert not wrapped.model.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("model", ["deberta", "electra", "longformer", "roberta", "xlnet"])
def test_lora_and_ia3_target_every_family(build, model):
    for method in ("lora", "ia3"):
        cfg, bundle = build(method, model=model)
        expected = _expected_trainable(method, cfg, bundle.model)
        wrapped = apply_peft(bundle, cfg.peft)
        assert wrapped.extra["peft"]["trainable_parameters"] == expected
        names = [n for n, p in wrapped.model.named_parameters() if p.requires_grad]
        assert any(ADAPTER_MARKS[method][0] in n for n in names)


def test_peft_none_leaves_the_model_alone(build):
    cfg, bundle = build("none")
    assert apply_peft(bundle, cfg.peft) is bundle
    assert all(p.requires_grad for p in bundle.model.parameters())


@pytest.mark.parametrize(
    "peft, overrides, model, message",
    [
        ("lora", ["peft.method=adapterx"], "minilm", "not supported"),
        ("lora", ["+peft.rank=4"], "minilm", "invalid settings"),
        ("lora", ["peft.target_modules.minilm=[no_such_layer]"], "minilm", "could not be applied"),
        ("lora", ["peft.target_modules=null"], "xlnet", "could not be applied"),
        ("none", ["+peft.r=4"], "minilm", "without peft.method"),
        ("prompt", [], "longformer", "Longformer"),
    ],
)
def test_invalid_peft_settings_fail_clearly(build, peft, overrides, model, message):
    cfg, bundle = build(peft, *overrides, model=model)
    with pytest.raises(ConfigError, match=message):
        apply_peft(bundle, cfg.peft)


# ---- end to end ---------------------------------------------------------------------------------------------------
def _run(tmp_path, make_ag_news_dir, compose_train_cfg, *overrides, model="minilm"):
    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=40, test_per_class=10)
    cfg = compose_train_cfg(
        [
            f"model={model}", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", f"data.data_dir={data}",
            "data.source=csv", "data.val_size=40", "data.max_length=32", "data.batch_size=16",
            "data.eval_batch_size=64", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
            "callbacks.progress_bar=null", "trainer.max_epochs=2", "strategy.optimizer.lr=1e-2", *overrides,
        ]
    )
    return data, train(cfg), tmp_path / "run"


def _probs_from_csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return torch.tensor([[float(r[f"prob_{n}"]) for n in LABELS] for r in rows])


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merged_export_is_a_plain_model_that_reproduces_the_run(tmp_path, make_ag_news_dir, compose_train_cfg, method):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from agnews.data.sources import read_ag_news_csv

    data, metrics, run = _run(tmp_path, make_ag_news_dir, compose_train_cfg, f"peft={method}")
    model_dir = run / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "adapter_config.json").exists(), "LoRA/IA3 exports are merged"
    exported = load_file(model_dir / "model.safetensors")
    assert not any("lora_" in k or "ia3_" in k or "base_layer" in k or "modules_to_save" in k for k in exported)

    # The checkpoint holds the adapter; the export is the base weight with the adapter merged in.
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model.base_model.model.bert.encoder.layer.0.attention.self.value"
    base = state[f"{prefix}.base_layer.weight"]
    if method == "lora":
        a, b = state[f"{prefix}.lora_A.default.weight"], state[f"{prefix}.lora_B.default.weight"]
        assert b.abs().sum() > 0, "LoRA B never trained"
        merged = base + (16 / 8) * b @ a
    else:
        scale = state[f"{prefix}.ia3_l.default"]
        assert not torch.allclose(scale, torch.ones_like(scale)), "IA3 vector never trained"
        merged = base * scale.view(-1, 1)
    torch.testing.assert_close(exported["bert.encoder.layer.0.attention.self.value.weight"], merged)

    # Plain transformers loads it (no PEFT) and reproduces the run's test probabilities.
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = read_ag_news_csv(data / "test.csv", "test").texts
    with torch.inference_mode():
        encoded = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        probs = torch.softmax(model(**encoded).logits, dim=-1)
    torch.testing.assert_close(probs, _probs_from_csv(run / "predictions" / "test.csv"), atol=1e-4, rtol=0)

    manifest = json.loads((run / "run.json").read_text())
    info = manifest["model"]["peft"]
    assert info["method"] == method and info["merged"] is True
    assert 0 < info["trainable_parameters"] < info["total_parameters"]
    assert json.loads((model_dir / "agnews_model.json").read_text())["peft"]["merged"] is True
    assert metrics["test"]["num_examples"] == 40


@pytest.mark.parametrize("model", ["minilm", "roberta", "electra"])
def test_prefix_tuning_trains_its_prefix_on_cache_encoders(build, model):
    """transformers 5 encoders take their key/value cache as ``cache``; peft 0.21's own prefix path looks for
    ``past_key_values`` and refuses. Ours passes the prefix under the encoder's keyword: it must reach attention
    (changes the logits), get a gradient, and leave padded and unpadded inputs with the same logits."""
    cfg, bundle = build("prefix", model=model)
    wrapped = apply_peft(bundle, cfg.peft).model
    encoder = [p for n, p in wrapped.named_parameters() if "prompt_encoder" in n]
    assert encoder and all(p.requires_grad for p in encoder)
    torch.manual_seed(1)
    ids = torch.randint(5, 90, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    wrapped.train()
    loss = wrapped(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder), "the prefix got no gradient"
    wrapped.eval()
    with torch.no_grad():
        logits = wrapped(input_ids=ids, attention_mask=mask).logits
        plain = wrapped.get_base_model()(input_ids=ids, attention_mask=mask).logits
        unpadded = wrapped(input_ids=ids[1:, :6], attention_mask=mask[1:, :6]).logits
    assert not torch.allclose(logits, plain, atol=1e-6), "the prefix does not reach the encoder"
    torch.testing.assert_close(unpadded, logits[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["deberta", "xlnet"])
def test_prefix_tuning_on_encoders_without_a_cache_fails_clearly(build, model):
    """DeBERTa-v2 and XLNet take no key/value cache: a config error when the model is built, not a silently
    ignored prefix or a crash at the first training step."""
    cfg, bundle = build("prefix", model=model)
    with pytest.raises(ConfigError, match="peft=prefix does not work .*takes no key/value cache"):
        apply_peft(bundle, cfg.peft)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_prompt_methods_export_adapter_and_base_that_reproduce_the_run(tmp_path, make_ag_news_dir, compose_train_cfg, method):
    from agnews.data.sources import read_ag_news_csv
    from agnews.models.exported import load_classifier

    data, metrics, run = _run(tmp_path, make_ag_news_dir, compose_train_cfg, f"peft={method}")
    model_dir = run / "model"
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}[method]
    adapter = load_file(model_dir / "adapter_model.safetensors")
    assert any("prompt_embeddings" in k for k in adapter) and any("classifier" in k for k in adapter)
    assert not (model_dir / "model.safetensors").exists()
    # model/base: the frozen base with the trained head, as plain transformers weights (no peft wrappers).
    base = load_file(model_dir / "base" / "model.safetensors")
    assert not any("modules_to_save" in k or "original_module" in k for k in base)
    info = json.loads((model_dir / "agnews_model.json").read_text())["peft"]
    assert info == {**info, "method": method, "merged": False, "base_model": "tiny:bert"}
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any("prompt_encoder" in k for k in state)
    assert metrics["test"]["num_examples"] == 40 and 0.0 <= metrics["test"]["accuracy"] <= 1.0

    # The loader rebuilds adapter + base and reproduces the run's test probabilities.
    loaded = load_classifier(model_dir)
    texts = read_ag_news_csv(data / "test.csv", "test").texts
    with torch.inference_mode():
        encoded = loaded.tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        probs = torch.softmax(loaded.model(**encoded).logits, dim=-1)
    torch.testing.assert_close(probs, _probs_from_csv(run / "predictions" / "test.csv"), atol=1e-4, rtol=0)

    # A damaged export says what is missing.
    (model_dir / "base" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no base model"):
        load_classifier(model_dir)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_classifier(run / "nowhere")


def test_adversarial_strategy_with_lora_runs_end_to_end(tmp_path, make_ag_news_dir, compose_train_cfg):
    _, metrics, run = _run(
        tmp_path, make_ag_news_dir, compose_train_cfg, "peft=lora", "strategy=pgd", "strategy.epsilon=0.1",
        "strategy.alpha=0.05", model="deberta",
    )
    assert (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["model"]["peft"]["merged"] is True
    assert metrics["test"]["num_examples"] == 40
