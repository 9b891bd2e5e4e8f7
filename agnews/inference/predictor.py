"""One way to predict from anything a run leaves: a run, its ``model/``, an ONNX export, or an ensemble bundle."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from agnews.inference.validation import validate_texts
from agnews.runs import (
    BUNDLE_MANIFEST_FILE,
    EXPORT_INFO_FILE,
    MANIFEST_FILE,
    MODEL_INFO_FILE,
    ONNX_MODEL_FILE,
    RunFormatError,
    load_run,
    looks_like_run,
    read_json,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "tensorrt")


class ProbabilityModel(Protocol):
    def predict_proba(self, texts: list[str]) -> np.ndarray: ...

    def describe(self) -> dict: ...


class Predictor:
    """``predict_proba(texts) -> [n, classes]`` for one model or an ensemble; texts are validated first.

    Build it with :meth:`from_path`. ``label_names`` gives the column order; ``predict`` returns label names.

    Input rules (:func:`agnews.inference.validation.validate_texts`): a list (or tuple) of non-empty strings; an empty
    list gives an empty ``[0, classes]`` result; anything else raises :class:`InvalidInputError` naming the offending
    index. A text longer than the model's ``max_length`` tokens is truncated to its first ``max_length`` tokens
    (special tokens included), exactly as training truncated it. Rows come back in the order of ``texts`` (batches
    are length-sorted internally). See docs/inference.md.
    """

    def __init__(
        self,
        model: ProbabilityModel,
        label_names: Sequence[str],
        info: dict | None = None,
        source: str | None = None,
        max_texts: int | None = None,
        max_chars: int | None = None,
    ):
        self.model = model
        self.label_names = list(label_names)
        self.info = dict(info or {})
        self.source = source
        self.max_texts = max_texts
        self.max_chars = max_chars
        self.load_seconds: float | None = None

    @property
    def max_length(self) -> int | None:
        value = self.info.get("max_length")
        return int(value) if value is not None else None

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = validate_texts(texts, self.max_texts, self.max_chars)
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
        probs = np.asarray(self.model.predict_proba(texts), dtype=np.float64)
        if probs.shape != (len(texts), len(self.label_names)):
            raise RuntimeError(f"model returned probabilities of shape {probs.shape} for {len(texts)} texts")
        return probs

    @property
    def has_logits(self) -> bool:
        """Whether :meth:`predict_logits` works: single transformer models have logits; an ensemble or a text-input
        ONNX pipeline gives probabilities only."""
        return callable(getattr(self.model, "predict_logits", None))

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits ``[n, classes]`` (float32), before the softmax ``predict_proba`` applies."""
        texts = validate_texts(texts, self.max_texts, self.max_chars)
        if not self.has_logits:
            raise TypeError(f"{self.source}: {type(self.model).__name__} gives probabilities only; use predict_proba")
        if not texts:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        logits = np.asarray(self.model.predict_logits(texts), dtype=np.float32)
        if logits.shape != (len(texts), len(self.label_names)):
            raise RuntimeError(f"model returned logits of shape {logits.shape} for {len(texts)} texts")
        return logits

    def predict_log_proba(self, texts: Sequence[str], min_prob: float = 1e-12) -> np.ndarray:
        """Log-probabilities ``[n, classes]`` (float64): the exact log-softmax of the logits when the model has them,
        else the log of the probabilities clamped at ``min_prob`` (an ensemble's average can hold exact zeros)."""
        if self.has_logits:
            logits = self.predict_logits(texts).astype(np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True) if len(logits) else logits
            return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return np.log(np.clip(self.predict_proba(texts), min_prob, None))

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.label_names[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def classify(self, texts: Sequence[str]) -> list[dict]:
        """``[{"label": name, "probabilities": {name: p, ...}}, ...]``: the answer a service returns."""
        probs = self.predict_proba(texts)
        return [
            {
                "label": self.label_names[int(row.argmax())],
                "probabilities": {name: float(p) for name, p in zip(self.label_names, row)},
            }
            for row in probs
        ]

    def describe(self) -> dict:
        return {
            "source": self.source,
            "label_names": self.label_names,
            "max_length": self.max_length,
            **self.model.describe(),
        }

    # ---- loading --------------------------------------------------------------------------------------------------
    @classmethod
    def from_path(
        cls,
        path: str | Path,
        backend: str = "auto",
        precision: str = "fp32",
        device: str = "cpu",
        batch_size: int = 64,
        variant: str | None = None,
        providers: Sequence[str] | None = None,
        max_texts: int | None = None,
        max_chars: int | None = None,
    ) -> "Predictor":
        """Load what ``path`` holds (see :func:`resolve_model_path`) with the chosen backend.

        ``backend``: ``auto`` (torch for a ``model/`` folder, ONNX Runtime for an export or bundle), ``torch``,
        ``onnx`` or ``tensorrt``. ``precision`` (torch): ``fp32`` or ``bf16``. ``variant`` (ONNX): a file named in the
        export's ``export.json`` (e.g. ``fp32``, ``optimized``, ``int8``); default: the export's own default.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        started = time.perf_counter()
        kind, target = resolve_model_path(path, backend)
        options = dict(
            backend=backend, precision=precision, device=device, batch_size=batch_size, variant=variant,
            providers=providers,
        )
        if kind == "bundle":
            from agnews.inference.ensemble import load_bundle_model

            model, label_names, info = load_bundle_model(target, **options)
        else:
            info = read_json(target / MODEL_INFO_FILE)
            label_names = info.get("label_names")
            if not label_names:
                raise RunFormatError(f"{target / MODEL_INFO_FILE} names no label_names")
            model = load_model_dir(target, info, **options)
        predictor = cls(model, label_names, info, str(target), max_texts, max_chars)
        predictor.load_seconds = round(time.perf_counter() - started, 3)
        return predictor


def resolve_model_path(path: str | Path, backend: str = "auto") -> tuple[str, Path]:
    """("bundle" | "model", folder) for ``path``: a bundle folder, a run (its bundle, ``export/`` or ``model/``), an
    ``export/`` folder, or a ``model/`` folder. A path that is none of these gets one error naming what is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RunFormatError(f"{path}: no such run, model, export or bundle directory")
    if path.is_file():
        raise RunFormatError(f"{path}: a file; give the folder that holds it (a run, model/, export/ or bundle/)")
    if (path / BUNDLE_MANIFEST_FILE).is_file():
        return "bundle", path
    if (path / MODEL_INFO_FILE).is_file():
        return "model", path
    if looks_like_run(path):
        run = load_run(path)  # raises for a run that did not finish
        if run.has_bundle:
            return "bundle", run.bundle_dir
        if backend in ("onnx", "tensorrt"):
            if not (run.export_dir / EXPORT_INFO_FILE).is_file():
                raise RunFormatError(
                    f"{path}: backend={backend} needs an ONNX export; run `python -m agnews.export run={path}` first"
                )
            return "model", run.export_dir
        return "model", run.require_model()
    raise RunFormatError(
        f"{path}: not a run ({MANIFEST_FILE}), a model folder ({MODEL_INFO_FILE}) or a bundle ({BUNDLE_MANIFEST_FILE})"
    )


def load_model_dir(
    target: Path,
    info: dict,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    batch_size: int = 64,
    variant: str | None = None,
    providers: Sequence[str] | None = None,
) -> ProbabilityModel:
    """A folder with ``agnews_model.json``: transformers weights (torch), an ONNX export, or a text-input ONNX model."""
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel

    label_names = list(info["label_names"])
    if info.get("input") == "text":  # a classical pipeline (TF-IDF + linear) exported whole to ONNX: strings in
        if backend not in ("auto", "onnx"):
            raise ValueError(f"{target} is a text-input ONNX model; it runs on backend=onnx, not {backend}")
        from agnews.inference.text_onnx import TextOnnxModel

        return TextOnnxModel(target / info.get("onnx_file", ONNX_MODEL_FILE), label_names, providers=providers)
    has_weights = (target / "config.json").is_file() or (target / "adapter_config.json").is_file()
    has_onnx = (target / EXPORT_INFO_FILE).is_file() or (target / ONNX_MODEL_FILE).is_file()
    if backend == "torch" or (backend == "auto" and has_weights):
        if not has_weights:
            raise RunFormatError(f"{target}: backend=torch needs transformers weights (config.json); this is an ONNX export")
        from agnews.inference.backends.torch_backend import TorchBackend
        from agnews.models.exported import load_classifier

        loaded = load_classifier(target)
        encoder = TextEncoder.from_info(loaded.tokenizer, {**info, **loaded.info})
        return TransformerModel(encoder, TorchBackend(loaded.model, precision, device), len(label_names), batch_size)
    if not has_onnx:
        raise RunFormatError(f"{target}: backend={backend} needs an ONNX export ({EXPORT_INFO_FILE} or {ONNX_MODEL_FILE})")
    from transformers import AutoTokenizer

    onnx_path = onnx_file_for(target, variant)
    encoder = TextEncoder.from_info(AutoTokenizer.from_pretrained(target), info)
    if backend == "tensorrt":
        from agnews.inference.backends.tensorrt_backend import TensorRTBackend

        runner = TensorRTBackend(onnx_path)
    else:
        from agnews.inference.backends.onnx_backend import OnnxBackend

        runner = OnnxBackend(onnx_path, providers=providers)
    return TransformerModel(encoder, runner, len(label_names), batch_size)


def onnx_file_for(export_dir: Path, variant: str | None = None) -> Path:
    """The ONNX file of ``variant`` listed in ``export.json`` (``files: {variant: name}``, ``default: variant``)."""
    info_path = export_dir / EXPORT_INFO_FILE
    if not info_path.is_file():
        if variant is not None:
            raise RunFormatError(f"{export_dir}: variant={variant!r} asked for, but there is no {EXPORT_INFO_FILE}")
        return export_dir / ONNX_MODEL_FILE
    export_info = read_json(info_path)
    files = export_info.get("files") or {}
    chosen = variant or export_info.get("default")
    if chosen not in files:
        raise RunFormatError(f"{export_dir}: no ONNX variant {chosen!r}; this export has {sorted(files)}")
    path = export_dir / files[chosen]
    if not path.is_file():
        raise RunFormatError(f"{path}: listed in {info_path.name} but missing")
    return path
