"""The masked-LM model for one ``conf/model/*.yaml``, and the export a classifier fine-tunes from.

:func:`load_masked_lm` takes the model group's options (``pretrain.yaml`` points ``model._target_`` here): a hub id, a
local directory, ``pkg:<module>`` or a finished run (``model.pretrained=<run>``, through
:func:`agnews.models.factory.resolve_pretrained`), or ``tiny=true`` for a random model of the same architecture.
A checkpoint without a masked-LM head (e.g. all-MiniLM-L6-v2, a sentence encoder) gets a newly initialised head;
the loader logs which weights are new.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agnews.errors import ConfigError, ModelLoadError
from agnews.hub import describe_unreachable, hub_offline, offline_mode, unreachable_reason
from agnews.models.factory import (
    OFFLINE_OPTIONS,
    _plain,
    check_local_directory,
    in_hub_cache,
    offline_tokenizer,
    resolve_pretrained,
)

log = logging.getLogger(__name__)


@dataclass
class MaskedLMBundle:
    model: Any
    tokenizer: Any
    family: str
    source: str
    # Tensors of the source checkpoint's base model that the masked-LM model has no place for (BERT's pooler): the
    # export carries them so a classifier fine-tuned from the run keeps them instead of initialising them afresh.
    carried: dict = field(default_factory=dict)
    new_weights: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "family": self.family,
            "source": self.source,
            "architecture": type(self.model).__name__,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "newly_initialised": self.new_weights,
        }


def _masked_lm_class(config) -> Any:
    from transformers import AutoModelForMaskedLM

    try:
        return AutoModelForMaskedLM._model_mapping[type(config)]
    except KeyError:
        raise ConfigError(
            f"model type {config.model_type!r} has no masked-LM head in transformers, so it cannot be pre-trained with "
            "masked language modelling (XLNet is a permutation LM): pick another model (minilm, roberta, deberta, "
            "electra, longformer)"
        ) from None


def load_masked_lm(
    family: str,
    pretrained: str,
    padding_side: str = "right",
    tiny: bool = False,
    tiny_config: Mapping[str, Any] | None = None,
    revision: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    attn_implementation: str | None = None,
    **_: Any,  # the classifier-only options of the model group (global_attention_first_token, size, label_names)
) -> MaskedLMBundle:
    from transformers import AutoConfig

    overrides = dict(_plain(config_overrides) or {})
    if tiny:
        tiny_config = _plain(tiny_config)
        if not tiny_config or "model_type" not in tiny_config:
            raise ModelLoadError(f"model={family} has no tiny_config with a model_type; cannot build a tiny variant")
        tokenizer = offline_tokenizer(padding_side)
        settings = {k: v for k, v in tiny_config.items() if k != "model_type"}
        settings.update(overrides)
        settings.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        config = AutoConfig.for_model(tiny_config["model_type"], **settings)
        model = _masked_lm_class(config)(config)
        return MaskedLMBundle(model, tokenizer, family, f"tiny:{tiny_config['model_type']}", new_weights=["all"])

    location = resolve_pretrained(pretrained)
    check_local_directory(pretrained, location)
    local = Path(location).expanduser().is_dir()
    offline = local or _hub_cache_only(pretrained, location, revision)
    options = {"revision": revision, "local_files_only": offline}
    try:
        with offline_mode() if offline else contextlib.nullcontext():
            return _load(pretrained, location, family, padding_side, options, overrides, attn_implementation)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model.pretrained={pretrained!r} as a masked LM: {exc}\n{OFFLINE_OPTIONS}") from exc


def _hub_cache_only(pretrained: str, location: str, revision: str | None) -> bool:
    """As the classifier loader decides: whether a hub model must come from the local cache (offline mode, or the hub
    unreachable: asking it would retry for ~24 s), with a clear error when it is not cached."""
    if hub_offline():
        if not in_hub_cache(location, revision):
            raise ModelLoadError(
                f"Could not load model.pretrained={pretrained!r}: offline mode is on (HF_HUB_OFFLINE=1) and the model "
                f"is not in the local Hugging Face cache.\n{OFFLINE_OPTIONS}"
            )
        return True
    reason = unreachable_reason()
    if reason is None:
        return False
    if not in_hub_cache(location, revision):
        raise ModelLoadError(
            f"Could not load model.pretrained={pretrained!r}: {describe_unreachable(reason)} and the model is not in "
            f"the local Hugging Face cache.\n{OFFLINE_OPTIONS}"
        )
    return True


def _load(pretrained, location, family, padding_side, options, overrides, attn_implementation) -> MaskedLMBundle:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, **options)
    config = AutoConfig.from_pretrained(location, **options, **overrides)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    model, info = _masked_lm_class(config).from_pretrained(location, config=config, output_loading_info=True, **options)
    new = sorted(info["missing_keys"])
    if new:
        log.warning("The checkpoint has no masked-LM head: newly initialised %s", ", ".join(new))
    prefix = model.base_model_prefix
    unused = {key.removeprefix(f"{prefix}.") for key in info["unexpected_keys"]}
    carried = {}
    if unused:
        # Load the bare encoder to read them: unexpected keys that are base-model tensors (not another task's head).
        base = AutoModel.from_pretrained(location, **options).state_dict()
        carried = {f"{prefix}.{key}": base[key].detach().clone() for key in sorted(unused) if key in base}
    tokenizer.padding_side = padding_side
    if tokenizer.mask_token is None:
        raise ModelLoadError(f"model.pretrained={pretrained!r}: its tokenizer has no mask token; masked LM needs one")
    return MaskedLMBundle(model, tokenizer, family, pretrained, carried=carried, new_weights=new)


def export_masked_lm(bundle: MaskedLMBundle, target: Path) -> Path:
    """``save_pretrained`` (safetensors) + tokenizer. No ``agnews_model.json``: this is an encoder to fine-tune from
    (``model.pretrained=<run>``), not a classifier a Predictor could serve."""
    target = Path(target)
    state = {**bundle.model.state_dict(), **bundle.carried}
    bundle.model.save_pretrained(target, state_dict=state, safe_serialization=True)
    bundle.tokenizer.save_pretrained(target)
    return target
