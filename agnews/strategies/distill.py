"""Knowledge distillation (Hinton et al., 2015): a student learns from a teacher's soft labels and the gold labels.

The teacher is either anything :class:`agnews.inference.Predictor` loads (a finished run, its exported model, an
ensemble bundle; or a bare ``save_pretrained`` directory) or a CSV of per-example probabilities in the predictions
format (``id`` + ``prob_<class>`` columns: an ensemble's average, an external labeller, a run's own stored
predictions). The teacher scores through the Predictor on the student's device, in fp32. Teacher outputs over the
training split are computed once in ``setup("fit")`` and cached on disk keyed by teacher, texts and example ids;
training epochs (and resumed runs) read the cache, the teacher never runs inside the training loop.

Loss per batch::

    kd_weight * T² * KL(softmax(teacher / T) || softmax(student / T)) + ce_weight * CE(student, gold)

The T² factor keeps the soft-label gradients on the same scale as the hard-label ones when T changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from agnews.errors import ConfigError, DataError
from agnews.inference import Predictor, resolve_model_path
from agnews.inference.predictor import load_model_dir
from agnews.models.layers import layer_count_key
from agnews.runs import BUNDLE_MANIFEST_FILE, MODEL_INFO_FILE, RunFormatError, read_json, read_predictions
from agnews.strategies.base import ClassificationModule

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Probabilities read from a CSV are rounded (6 decimals): a 0.000000 would be log(0) = -inf.
MIN_PROB = 1e-8
# A bare save_pretrained teacher folder (Hugging Face's file, not the run format).
HF_CONFIG_FILE = "config.json"
# Config entries holding one value per layer (cut together with the layers).
PER_LAYER_CONFIG_KEYS = ("attention_window", "layer_types")


# ---- student: a shallower copy of the encoder -------------------------------------------------------------------------
def select_layers(total: int, keep: int | Sequence[int]) -> list[int]:
    """Which encoder layers a student keeps: an int ``k`` keeps ``k`` evenly spaced layers starting at 0
    (6 -> 3 keeps 0, 2, 4: every other layer, as DistilBERT was initialised); a list keeps exactly those layers."""
    if isinstance(keep, bool):
        raise ConfigError(f"strategy.student_layers must be an int or a list of layer indices, got {keep!r}")
    if isinstance(keep, int):
        if not 1 <= keep <= total:
            raise ConfigError(f"strategy.student_layers={keep}: the model has {total} layers")
        return [i * total // keep for i in range(keep)]
    indices = [int(i) for i in keep]
    if not indices or sorted(set(indices)) != indices or indices[0] < 0 or indices[-1] >= total:
        raise ConfigError(
            f"strategy.student_layers={list(keep)}: need distinct increasing layer indices in 0..{total - 1}"
        )
    return indices


def keep_encoder_layers(model: torch.nn.Module, keep: int | Sequence[int]) -> list[int]:
    """Cut a (pretrained) encoder down to some of its layers, in place, keeping their weights; the config follows, so
    ``save_pretrained`` writes a model that ``from_pretrained`` rebuilds with the same, smaller depth."""
    config = model.config
    key = layer_count_key(config)
    total = getattr(config, key)
    stacks = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == total
    ]
    if len(stacks) != 1:
        raise ConfigError(
            f"strategy.student_layers: expected one stack of {total} layers in {type(model).__name__}, "
            f"found {[name for name, _ in stacks]}"
        )
    indices = select_layers(total, keep)
    name, stack = stacks[0]
    kept = [stack[i] for i in indices]
    for new_index, layer in enumerate(kept):
        for sub in layer.modules():  # cache bookkeeping (unused by encoders, but keep it consistent)
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = new_index
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], torch.nn.ModuleList(kept))
    setattr(config, key, len(indices))
    # Per-layer settings (Longformer's attention_window list) must shrink with the stack.
    for attr in PER_LAYER_CONFIG_KEYS:
        value = getattr(config, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == total:
            setattr(config, attr, [value[i] for i in indices])
    return indices


# ---- teachers ---------------------------------------------------------------------------------------------------------
def teacher_model_dir(teacher: str | Path) -> Path:
    """The folder a teacher loads from: a finished run (its ensemble ``bundle/`` or exported ``model/``), an exported
    model folder, an ensemble bundle, or a bare ``save_pretrained`` directory (``config.json``, no agnews facts)."""
    path = Path(teacher).expanduser()
    try:
        return resolve_model_path(path, "auto")[1]
    except RunFormatError as exc:
        if path.is_dir() and (path / HF_CONFIG_FILE).is_file():
            return path
        raise ConfigError(
            f"strategy.teacher={str(teacher)!r}: {exc}. A teacher is a finished run, an exported model or ensemble "
            "bundle, a save_pretrained directory, or a soft-label CSV file"
        ) from None


def soft_labels_from_file(path: str | Path, ids: Sequence[str], label_names: Sequence[str]) -> torch.Tensor:
    """Log-probabilities for ``ids`` (in that order, columns in ``label_names`` order) from a predictions-format CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"soft-label file {str(path)!r} does not exist")
    try:
        table = read_predictions(path)
    except DataError as exc:
        raise DataError(
            f"soft-label file {str(path)!r} is not in the predictions format (id,label,pred,prob_*): {exc}"
        ) from None
    if sorted(table.label_names) != sorted(label_names):
        raise DataError(
            f"soft-label file {str(path)!r} has probability columns for {table.label_names}, the run's labels are "
            f"{list(label_names)}"
        )
    row_of = {example_id: row for row, example_id in enumerate(table.ids)}
    missing = [example_id for example_id in ids if example_id not in row_of]
    if missing:
        raise DataError(
            f"soft-label file {str(path)!r} lacks {len(missing)} of the {len(ids)} training examples "
            f"(e.g. {missing[:5]}); it must hold a row for every id of the training split"
        )
    columns = [table.label_names.index(name) for name in label_names]
    probs = table.probs[np.ix_([row_of[example_id] for example_id in ids], columns)].clip(MIN_PROB, None)
    return torch.from_numpy(np.log(probs / probs.sum(axis=1, keepdims=True))).float()


def _fingerprint_dir(path: Path) -> list:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kd, ce). ``teacher_log_probs`` may be logits or log-probabilities (softmax ignores a constant shift)."""
    student_logits = student_logits.float()
    soft_targets = torch.softmax(teacher_log_probs.float() / temperature, dim=-1)
    kd = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), soft_targets, reduction="batchmean")
    kd = kd * temperature**2
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return kd_weight * kd + ce_weight * ce, kd, ce


class Distillation(ClassificationModule):
    """Student fine-tuning on a mix of teacher soft labels (temperature-scaled KL) and gold labels (cross-entropy)."""

    def __init__(
        self,
        *args,
        teacher: str | None = None,
        temperature: float = 2.0,
        kd_weight: float = 0.5,
        ce_weight: float = 0.5,
        student_layers: int | Sequence[int] | None = None,
        teacher_batch_size: int = 128,
        cache_dir: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not teacher:
            raise ConfigError(
                "strategy=distill needs strategy.teacher: a finished run directory, a saved model directory, "
                "or a soft-label CSV (id + prob_<class> columns)"
            )
        if temperature <= 0:
            raise ConfigError(f"strategy.temperature must be > 0, got {temperature}")
        if kd_weight < 0 or ce_weight < 0 or kd_weight + ce_weight == 0:
            raise ConfigError(f"strategy.kd_weight/ce_weight must be >= 0, not both 0 (got {kd_weight}, {ce_weight})")
        self.teacher = str(teacher)
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.ce_weight = float(ce_weight)
        self.teacher_batch_size = int(teacher_batch_size)
        self.cache_dir = cache_dir
        self.student_layers = None
        if student_layers is not None:
            keep = student_layers if isinstance(student_layers, int) else list(student_layers)
            self.student_layers = keep_encoder_layers(self.model, keep)
            log.info("Student keeps encoder layers %s", self.student_layers)
        # Not a buffer: the cache is data, not state (checkpoints stay the student's size; resumes re-read the cache).
        self.teacher_log_probs: torch.Tensor | None = None
        self.teacher_examples_scored = 0  # rows the teacher model ran on in this process (0 on a cache hit)

    # ---- teacher outputs, once --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit" or self.teacher_log_probs is not None:
            return
        datamodule = self.trainer.datamodule
        datamodule.setup("fit")
        train = datamodule.splits["train"]
        if Path(self.teacher).expanduser().is_file():
            self.teacher_log_probs = soft_labels_from_file(Path(self.teacher).expanduser(), train.ids, self.label_names)
            log.info("Soft labels for %d training examples read from %s", len(train), self.teacher)
            return
        self.teacher_log_probs = self._cached_teacher_outputs(train.ids, train.texts, datamodule.max_length)

    def _cache_path(self, model_dir: Path, ids: Sequence[str], texts: Sequence[str], max_length: int) -> Path:
        from agnews.data.tokenization import texts_fingerprint

        payload = [
            CACHE_FORMAT, str(model_dir.resolve()), _fingerprint_dir(model_dir), max_length,
            texts_fingerprint(list(texts)), texts_fingerprint(list(ids)), self.label_names,
        ]
        key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]
        root = Path(self.cache_dir) if self.cache_dir else Path(self.trainer.default_root_dir) / "teacher_cache"
        return root.expanduser() / f"{key}.safetensors"

    def _cached_teacher_outputs(self, ids: Sequence[str], texts: Sequence[str], max_length: int) -> torch.Tensor:
        from safetensors import safe_open
        from safetensors.torch import save_file

        model_dir = teacher_model_dir(self.teacher)
        # The teacher's own max length (from its facts, read without loading it: a cache hit loads no model).
        info_path = model_dir / MODEL_INFO_FILE
        info = read_json(info_path) if info_path.is_file() else {}
        teacher_max_length = int(info.get("max_length") or max_length)
        path = self._cache_path(model_dir, ids, texts, teacher_max_length)
        if path.is_file():
            with safe_open(str(path), framework="pt") as handle:  # ids live in the header metadata
                cached_ids = json.loads((handle.metadata() or {}).get("ids", "[]"))
                if cached_ids == list(ids):
                    log.info("Teacher outputs for %d examples read from cache %s", len(ids), path)
                    return handle.get_tensor("log_probs")
            log.warning("Teacher cache %s holds other ids; recomputing", path)
        log_probs = self.score_with_teacher(model_dir, texts, teacher_max_length)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.tmp")
        save_file({"log_probs": log_probs.contiguous()}, str(tmp), metadata={"ids": json.dumps(list(ids))})
        os.replace(tmp, path)
        log.info("Teacher scored %d training examples; cached at %s", len(ids), path)
        return log_probs

    def load_teacher(self, model_dir: Path, max_length: int | None = None) -> Predictor:
        """The teacher as a :class:`Predictor` on the student's device, with its own tokenizer (teacher and student may
        tokenize differently). ``max_length`` is used only for a bare save_pretrained folder, which records none."""
        device = str(self.trainer.strategy.root_device) if self._trainer is not None else "cpu"
        if (model_dir / MODEL_INFO_FILE).is_file() or (model_dir / BUNDLE_MANIFEST_FILE).is_file():
            predictor = Predictor.from_path(model_dir, device=device, batch_size=self.teacher_batch_size)
        else:  # a bare save_pretrained folder: label names from its config, the student's max length
            config = read_json(model_dir / HF_CONFIG_FILE)
            id2label = config.get("id2label") or {}
            info = {
                "label_names": [id2label[key] for key in sorted(id2label, key=int)],
                "max_length": int(max_length or self.trainer.datamodule.max_length),
            }
            model = load_model_dir(model_dir, info, backend="torch", device=device, batch_size=self.teacher_batch_size)
            predictor = Predictor(model, info["label_names"], info, str(model_dir))
        if predictor.label_names != self.label_names:
            raise ConfigError(
                f"strategy.teacher={self.teacher!r} predicts labels {predictor.label_names}, the student {self.label_names}"
            )
        return predictor

    def score_with_teacher(self, model_dir: Path, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """Teacher log-probabilities ``[n, classes]`` through the project's one inference loop (:class:`Predictor`):
        the exact log-softmax of a single model's logits; for an ensemble bundle, the log of its clamped average."""
        predictor = self.load_teacher(model_dir, max_length)
        log_probs = predictor.predict_log_proba(list(texts), min_prob=MIN_PROB)
        self.teacher_examples_scored += len(texts)
        del predictor
        return torch.from_numpy(log_probs).float()

    # ---- training ------------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> torch.Tensor:
        if self.teacher_log_probs is None:
            raise RuntimeError("teacher outputs are missing: Distillation.setup('fit') has not run")
        logits = self(batch)
        teacher = self.teacher_log_probs[batch["index"].cpu()].to(logits.device)
        loss, kd, ce = distillation_loss(
            logits, teacher, batch["labels"], self.temperature, self.kd_weight, self.ce_weight, self.label_smoothing
        )
        size = batch["labels"].numel()
        self.log("train/kd_loss", kd, batch_size=size)
        self.log("train/ce_loss", ce, batch_size=size)
        return loss
