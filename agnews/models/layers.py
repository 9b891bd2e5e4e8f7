"""Where a parameter sits in the encoder stack: the depth that layer-wise LR decay and gradual unfreezing work on.

Depth of a parameter, for every supported architecture (BERT/MiniLM, RoBERTa, DeBERTa-v2/v3, ELECTRA, XLNet,
Longformer), also under a PEFT wrapper (``base_model.model.`` prefixes, LoRA/IA3 adapters inside a block, the
``modules_to_save`` copies of the head), and inside the ``model.long_input`` wrapper
(:class:`agnews.models.long_input.LongInputClassifier`: its encoder under ``model.``, its hierarchical pooling under
``pool.``; both under PEFT too):

* ``0``: the input embeddings: token, position and token-type embeddings and their LayerNorm, ELECTRA's
  ``embeddings_project``, XLNet's ``word_embedding`` and ``mask_emb``, a prompt/prefix-tuning ``prompt_encoder``, and
  DeBERTa's relative-position embeddings (``encoder.rel_embeddings`` with the ``encoder.LayerNorm`` that normalises
  them). DeBERTa's relative positions play the role BERT's absolute position embeddings play (a pretrained, input-level
  table every block reads), so they get the same depth instead of the head's LR;
* ``i + 1``: transformer block ``i`` (``encoder.layer.i``; XLNet ``transformer.layer.i``);
* ``num_layers + 1``: everything above the last block: the pooler (BERT, DeBERTa), the classifier, XLNet's
  ``sequence_summary`` and ``logits_proj``; and the long-input wrapper's attention pooling (``pool.``), which sits
  between the last block and the head (it pools the windows' summary vectors that the head then classifies).

A name matching none of these raises a ConfigError naming it: an unknown layout must not silently get the head's LR
(or never be frozen).
"""

from __future__ import annotations

import re

import torch

from agnews.errors import ConfigError

# PeftModel wraps the transformers model as base_model (prompt methods) or base_model.model (LoRA, IA3).
_PEFT_PREFIX = re.compile(r"^(?:base_model\.)(?:model\.)?")
_BLOCK = re.compile(r"^\w+\.(?:encoder\.)?layer\.(\d+)\.")
_EMBEDDINGS = re.compile(
    r"^(?:\w+\.embeddings\.|\w+\.embeddings_project\.|transformer\.word_embedding\.|transformer\.mask_emb$"
    r"|prompt_encoder\.|word_embeddings\.|\w+\.encoder\.rel_embeddings\.|\w+\.encoder\.LayerNorm\.)"
)
_HEAD = re.compile(r"^(?:classifier|pooler|sequence_summary|logits_proj|\w+\.pooler)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` without its PeftModel wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_long_input(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the model under its PEFT wrapper) is the ``model.long_input`` windowing wrapper."""
    from agnews.models.long_input import LongInputClassifier

    return isinstance(base_model(model), LongInputClassifier)


def model_config(model: torch.nn.Module):
    """The transformers config of ``model`` (a PeftModel forwards to its base model)."""
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no transformers config: its layer count is unknown")
    return config


def layer_count_key(config) -> str:
    """The config attribute holding the number of blocks (``num_hidden_layers``; XLNet ``n_layer``)."""
    for key in LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return key
    raise ConfigError(f"{type(config).__name__} has no layer count ({' / '.join(LAYER_COUNT_KEYS)})")


def num_layers(model: torch.nn.Module) -> int:
    """Number of transformer blocks, from the model's config."""
    config = model_config(model)
    return getattr(config, layer_count_key(config))


def parameter_depth(name: str, layers: int, long_input: bool = False) -> int:
    """Depth of parameter ``name`` (as ``model.named_parameters()`` gives it) in a model with ``layers`` blocks;
    ``long_input``: the model is (a PEFT wrapper around) a ``LongInputClassifier``."""
    bare = _PEFT_PREFIX.sub("", name)
    if long_input:
        # The wrapper holds the transformers model as ``model`` and, in hierarchical mode, its pooling as ``pool``.
        if bare.startswith("pool."):
            return layers + 1
        bare = bare.removeprefix("model.")
    block = _BLOCK.match(bare)
    if block:
        index = int(block.group(1))
        if index >= layers:
            raise ConfigError(f"parameter {name!r} is in block {index}, but the model config declares {layers} blocks")
        return index + 1
    if _EMBEDDINGS.match(bare):
        return 0
    if _HEAD.match(bare):
        return layers + 1
    raise ConfigError(
        f"parameter {name!r}: unknown layout, it is neither an embedding, a transformer block nor the head "
        "(agnews/models/layers.py maps the supported architectures)"
    )


def parameter_depths(model: torch.nn.Module) -> dict[str, int]:
    """``{name: depth}`` for every parameter of ``model`` (trainable or not); depths run 0 .. num_layers(model) + 1."""
    layers = num_layers(model)
    wrapped = is_long_input(model)
    return {name: parameter_depth(name, layers, wrapped) for name, _ in model.named_parameters()}
