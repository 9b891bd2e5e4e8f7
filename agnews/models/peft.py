"""Parameter-efficient fine-tuning with the ``peft`` library: ``peft=lora|ia3|prefix|prompt`` (``none`` = full).

:func:`apply_peft` wraps the bundle's model in a ``PeftModel`` (task SEQ_CLS) after it is built; only the adapters and
the classification head train. :func:`export_bundle` prepares what ``model/`` receives: LoRA and IA3 are merged into
the base weights (``merge_and_unload``), so the export is a plain transformers model; prefix and prompt tuning cannot
be merged, so the adapter is exported (``save_pretrained``: adapter_config.json + adapter_model.safetensors) beside
``model/base/``, the frozen base weights with the trained head (:func:`agnews.models.exported.load_classifier` reads
both). See docs/strategies.md.

With ``model.long_input`` the PeftModel wraps the windowing wrapper: LoRA and IA3 adapt the encoder every window runs
through (and train the hierarchical mode's pooling layer with the head); prefix and prompt tuning are refused, since
peft would add the virtual tokens to the padded row rather than to each window.

Prefix tuning on transformers 5: the encoders take their key/value cache as ``cache`` (``past_key_values`` is a
deprecated alias), and peft 0.21's prefix path checks the forward signature for ``past_key_values`` and refuses.
:class:`PrefixTuningForSequenceClassification` passes the prefix under the name the encoder declares; a probe forward
then checks that the prefix really changes the output, so an architecture that has no cache (DeBERTa-v2, XLNet,
Longformer) is a clear config error instead of a silently ignored prefix.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

from agnews.errors import ConfigError
from agnews.models.factory import ClassifierBundle, _plain
from agnews.models.layers import is_long_input

log = logging.getLogger(__name__)

MERGEABLE = ("lora", "ia3")
PROMPT_METHODS = ("prefix", "prompt")
METHODS = (*MERGEABLE, *PROMPT_METHODS)

# The classification head of each architecture (model.config.model_type): trained fully and saved with the adapter.
# peft adds "classifier" itself; DeBERTa's pooler and XLNet's summary layer are randomly initialised heads too.
HEAD_MODULES = {
    "bert": ["pooler", "classifier"],
    "roberta": ["classifier"],
    "electra": ["classifier"],
    "longformer": ["classifier"],
    "deberta-v2": ["pooler", "classifier"],
    "deberta": ["pooler", "classifier"],
    "xlnet": ["sequence_summary", "logits_proj"],
}

# model.long_input=hierarchical: the wrapper's pooling layers (agnews.models.long_input.AttentionPool).
WINDOW_POOL_MODULES = ("pool.project", "pool.score")


def _per_family(value: Any, family: str, key: str) -> Any:
    """A ``family -> value`` mapping picks this family's entry (None when absent); a list/str applies to every family."""
    if isinstance(value, Mapping):
        return value.get(family)
    return value


def _build_config(method: str, settings: dict, family: str, model_type: str):
    import peft

    settings = dict(settings)
    head = settings.pop("modules_to_save", None)
    head = _per_family(head, family, "modules_to_save") if head is not None else None
    if head is None:
        head = HEAD_MODULES.get(model_type)
    for key in ("target_modules", "feedforward_modules"):
        if key in settings:
            settings[key] = _per_family(settings[key], family, key)
            if settings[key] is None:
                settings.pop(key)  # peft's default for this model_type, if it has one
    classes = {
        "lora": peft.LoraConfig,
        "ia3": peft.IA3Config,
        "prefix": peft.PrefixTuningConfig,
        "prompt": peft.PromptTuningConfig,
    }
    try:
        return classes[method](task_type=peft.TaskType.SEQ_CLS, modules_to_save=list(head) if head else None, **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"peft={method}: invalid settings {settings}: {exc}") from exc


def apply_peft(bundle: ClassifierBundle, cfg: Mapping[str, Any] | None) -> ClassifierBundle:
    """Wrap ``bundle.model`` per the ``peft`` config group; ``peft=none`` (an empty group) returns the bundle as is."""
    settings = dict(_plain(cfg) or {})
    method = settings.pop("method", None)
    if method in (None, "none"):
        if settings:
            raise ConfigError(f"peft: settings {sorted(settings)} given without peft.method (one of {list(METHODS)})")
        return bundle
    if method not in METHODS:
        raise ConfigError(f"peft.method={method!r} is not supported; choose one of {list(METHODS)} (or peft=none)")
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is an optional dependency
        raise ConfigError(f"peft={method} needs the peft library: pip install 'agnews[peft]'") from exc

    model_type = getattr(bundle.model.config, "model_type", "")
    if method in PROMPT_METHODS and bundle.global_attention_first_token:
        raise ConfigError(
            f"peft={method} cannot be used with model={bundle.family}: virtual tokens are prepended to the input, "
            "and peft does not extend Longformer's global_attention_mask to them. Use peft=lora or peft=ia3."
        )
    if method in PROMPT_METHODS and is_long_input(bundle.model):
        # The wrapper cuts each padded row into windows inside its forward; peft would put the virtual tokens (and
        # their attention-mask entries) on the padded row only, never on the windows the encoder actually reads.
        raise ConfigError(
            f"peft={method} cannot be used with model.long_input={bundle.model.settings.mode}: the virtual tokens "
            "would be added to the padded row, not to each window the encoder reads. Use peft=lora or peft=ia3 "
            "with model.long_input, or model.long_input=null with peft=prompt|prefix."
        )
    if method == "prompt" and "token_dim" not in settings:
        # Virtual tokens join the word embeddings: their width is the embedding's (ELECTRA's is not hidden_size).
        settings["token_dim"] = bundle.model.get_input_embeddings().embedding_dim
    config = _build_config(method, settings, bundle.family, model_type)
    if is_long_input(bundle.model) and bundle.model.settings.mode == "hierarchical":
        # The windows' attention pooling is a new, randomly initialised layer under the head: it trains with it (peft
        # would otherwise freeze it; its SEQ_CLS default "score" catches only half of it).
        config.modules_to_save = sorted({*(config.modules_to_save or []), *WINDOW_POOL_MODULES})
    try:
        model = wrap_peft_model(bundle.model, config)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"peft={method} could not be applied to model={bundle.family} ({model_type}): {exc}. "
            "Set the modules for this family with peft.target_modules (a mapping family -> list of module names)."
        ) from exc
    if method in PROMPT_METHODS:
        _probe(model, bundle, method)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "PEFT %s on %s: %s trainable of %s parameters (%.2f%%)",
        method, bundle.family, f"{trainable:,}", f"{total:,}", 100.0 * trainable / max(total, 1),
    )
    targets = getattr(config, "target_modules", None)
    info = {
        "method": method,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "modules_to_save": sorted(set(config.modules_to_save or [])),
        "merged": False,
    }
    return dataclasses.replace(bundle, model=model, extra={**bundle.extra, "peft": info})


def wrap_peft_model(model, config):
    """``peft.get_peft_model``, except that prefix tuning gets :class:`PrefixTuningForSequenceClassification`."""
    import peft

    if config.peft_type == peft.PeftType.PREFIX_TUNING:
        # What get_peft_model records too: adapter_config.json names the base model.
        config.base_model_name_or_path = config.base_model_name_or_path or getattr(model, "name_or_path", None)
        return prefix_tuning_class()(model, config)
    return peft.get_peft_model(model, config)


def _cache_keyword(backbone) -> str | None:
    """The keyword under which ``backbone.forward`` takes a key/value cache (transformers 5: ``cache``), or None."""
    import inspect

    parameters = inspect.signature(backbone.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


_PREFIX_CLASS = None


def prefix_tuning_class():
    """Built on first use: ``peft`` is an optional dependency and is imported lazily."""
    global _PREFIX_CLASS
    if _PREFIX_CLASS is not None:
        return _PREFIX_CLASS
    import peft

    class PrefixTuningForSequenceClassification(peft.PeftModelForSequenceClassification):
        """peft's sequence classifier, with the prefix passed to the encoder under the keyword it declares.

        The classification model's own forward forwards unknown keywords to its encoder, so the prefix (a
        ``DynamicCache`` of per-layer keys/values from ``get_prompt``) reaches every self-attention layer; peft has
        already prepended ``num_virtual_tokens`` ones to the attention mask.
        """

        def _prefix_tuning_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                                   output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
            base = self.base_model
            backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
            keyword = _cache_keyword(backbone) if backbone is not None else None
            if keyword is None:
                raise ValueError(f"{type(base).__name__} takes no key/value cache, which prefix tuning needs")
            batch_size = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]
            kwargs.update(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            )
            kwargs[keyword] = self.get_prompt(batch_size)
            return base(labels=labels, **kwargs)

    _PREFIX_CLASS = PrefixTuningForSequenceClassification
    return _PREFIX_CLASS


def _probe(model, bundle: ClassifierBundle, method: str) -> None:
    """Prompt methods change how the model is called (virtual tokens, past key/values), which some architectures (or
    transformers versions) do not accept: one two-token forward now turns a failure at the first training step into
    a clear config error."""
    import torch

    token = bundle.tokenizer.cls_token_id if bundle.tokenizer.cls_token_id is not None else bundle.tokenizer.pad_token_id
    device = next(model.parameters()).device
    inputs = {
        "input_ids": torch.full((1, 2), int(token), dtype=torch.long, device=device),
        "attention_mask": torch.ones((1, 2), dtype=torch.long, device=device),
    }
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with_prompt = model(**inputs).logits
            without = model.get_base_model()(**inputs).logits
        if torch.equal(with_prompt, without):
            # A model that accepts and ignores the keyword (transformers 5 forwards **kwargs) would train only the
            # head while reporting prefix tuning.
            raise ValueError("the virtual tokens / prefix do not change the model's output (ignored by the model)")
    except Exception as exc:  # noqa: BLE001 - any failure here means the method cannot run on this model
        raise ConfigError(
            f"peft={method} does not work with model={bundle.family} "
            f"({getattr(bundle.model.config, 'model_type', '?')}) in this environment: {type(exc).__name__}: "
            f"{str(exc).rstrip('.')}. "
            "Use peft=lora or peft=ia3 (or peft=prompt where supported)."
        ) from exc
    finally:
        model.train(was_training)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def merge_and_unload(peft_model):
    """Merge every adapter layer into its base layer and drop the wrappers: a plain transformers model.

    peft's own ``merge_and_unload`` does this too, but its IA3 version fails on a ``modules_to_save`` head that is not a
    Linear layer (``BertPooler``, RoBERTa's classification head: "object has no attribute 'weight'"); this walk works
    for LoRA and IA3 alike. It modifies the model in place.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    def unwrap(module):
        for name, child in list(module.named_children()):
            if isinstance(child, AuxiliaryTrainingWrapper):  # modules_to_save: the trained copy replaces the original
                replacement = child.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            elif isinstance(child, BaseTunerLayer):
                child.merge()
                replacement = child.get_base_layer()
            else:
                replacement = child
            if replacement is not child:
                setattr(module, name, replacement)
            unwrap(replacement)

    model = peft_model.get_base_model()
    unwrap(model)
    return model.eval()


def export_bundle(bundle: ClassifierBundle) -> ClassifierBundle:
    """What ``artifacts.export_model`` should save: LoRA/IA3 merged into a plain model (``merge_and_unload``, in
    place: call it last); prefix/prompt tuning unchanged (the PeftModel saves its adapter), with the base model named.
    """
    if not is_peft_model(bundle.model):
        return bundle
    info = dict(bundle.extra.get("peft", {}))
    method = info.get("method")
    if method in MERGEABLE:
        merged = merge_and_unload(bundle.model)
        info["merged"] = True
        return dataclasses.replace(bundle, model=merged, extra={**bundle.extra, "peft": info})
    info["base_model"] = bundle.source
    return dataclasses.replace(bundle, extra={**bundle.extra, "peft": info})
