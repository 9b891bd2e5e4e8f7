"""A run's exported classifier (:attr:`agnews.runs.RunDir.model_dir`) back in memory, whatever the fine-tuning method.

The exported model folder is either a plain transformers classifier (full fine-tuning; LoRA and IA3 are merged at
export) or, for prompt and prefix tuning, which cannot be merged, a peft adapter (``adapter_config.json`` +
``adapter_model.safetensors``: virtual tokens and the trained head) beside ``base/``, the frozen base classifier.
A model trained with ``model.long_input`` (``long_input`` in its facts) is wrapped back in
:class:`agnews.models.long_input.LongInputClassifier`.
:class:`agnews.inference.Predictor` (torch backend), meta-evaluation and export read exported models through
:func:`load_classifier`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agnews.runs import MODEL_INFO_FILE, read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_DIR = "base"


@dataclass
class LoadedClassifier:
    model: object  # a transformers (or peft-wrapped) sequence classifier, in eval mode
    tokenizer: object
    info: dict  # the model's facts (MODEL_INFO_FILE): max_length, padding side, label names, peft facts...

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length", 128))


def clean_base_state_dict(peft_model) -> dict:
    """The base model's weights without peft's wrappers: the trained head copy in place of the original head."""
    adapter = peft_model.active_adapter
    state = {}
    for key, value in peft_model.get_base_model().state_dict().items():
        if ".original_module." in key or key.endswith(".original_module"):
            continue
        state[key.replace(f".modules_to_save.{adapter}.", ".")] = value
    return state


def save_unmerged(peft_model, target: Path) -> None:
    """Adapter files in ``target``; the base classifier (with the trained head) in ``target/base``."""
    peft_model.save_pretrained(target, safe_serialization=True)
    peft_model.get_base_model().save_pretrained(
        target / BASE_DIR, state_dict=clean_base_state_dict(peft_model), safe_serialization=True
    )


def load_classifier(model_dir: str | Path) -> LoadedClassifier:
    """Model, tokenizer and facts of an exported model directory (plain or adapter + base)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory (a run exports it with scoring.export_model=true)")
    info_path = model_dir / MODEL_INFO_FILE
    info = read_json(info_path) if info_path.is_file() else {}
    if (model_dir / ADAPTER_CONFIG).is_file():
        model = _load_adapter(model_dir)
    elif (model_dir / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    else:
        raise FileNotFoundError(f"{model_dir} holds neither a model (config.json) nor an adapter ({ADAPTER_CONFIG})")
    from agnews.models.long_input import INFO_KEY as LONG_INPUT_KEY

    if info.get(LONG_INPUT_KEY):  # trained with model.long_input: the same windowing wrapper around the encoder
        from agnews.models.long_input import LongInputClassifier

        model = LongInputClassifier.restore(model, info[LONG_INPUT_KEY], model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if info.get("padding_side"):
        tokenizer.padding_side = info["padding_side"]
    return LoadedClassifier(model.eval(), tokenizer, info)


def _load_adapter(model_dir: Path):
    from transformers import AutoModelForSequenceClassification

    try:
        import peft
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - peft is an optional dependency
        raise ImportError(f"{model_dir} holds a peft adapter: pip install 'agnews[peft]' to load it") from exc
    from agnews.models.peft import wrap_peft_model

    base_dir = model_dir / BASE_DIR
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} holds an adapter but no base model in {base_dir} (exported by an older agnews version?)"
        )
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    config = peft.PeftConfig.from_pretrained(model_dir)
    model = wrap_peft_model(base, config)
    result = set_peft_model_state_dict(model, load_file(model_dir / ADAPTER_WEIGHTS))
    # peft loads the virtual tokens into the prompt encoder itself and still lists them as unexpected.
    unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if k != "prompt_embeddings"]
    if unexpected:
        raise ValueError(f"{model_dir / ADAPTER_WEIGHTS}: weights that fit no adapter parameter: {unexpected[:5]}")
    return model
