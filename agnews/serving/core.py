"""The predictor core every protocol adapter calls: one :class:`~agnews.inference.Predictor`, its model card and the
request limits. Adapters validate with :mod:`agnews.serving.schema` first; the core only predicts."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np

from agnews.errors import ConfigError
from agnews.inference import Predictor
from agnews.inference.backends.onnx_backend import THREADS_ENV as ORT_THREADS_ENV
from agnews.runs import BUNDLE_DIR, BUNDLE_MANIFEST_FILE, EXPORT_DIR, EXPORT_INFO_FILE
from agnews.serving.identity import ModelCard, model_card
from agnews.serving.settings import ServeSettings

log = logging.getLogger("agnews.serving")


def choose_backend(path: str | Path, backend: str) -> str:
    """``auto`` serves an ONNX export when the run has one (ONNX Runtime), else what the Predictor's ``auto`` picks
    (ORT for a bundle or export folder, torch for ``model/``). Any other value is used as given."""
    if backend != "auto":
        return backend
    path = Path(path)
    has_bundle = (path / BUNDLE_MANIFEST_FILE).is_file() or (path / BUNDLE_DIR / BUNDLE_MANIFEST_FILE).is_file()
    if not has_bundle and (path / EXPORT_DIR / EXPORT_INFO_FILE).is_file():
        return "onnx"
    return "auto"


class ClassifierCore:
    """Thread-safe ``predict(texts)``: one lock around the model, since a tokenizer is not safe to share between
    threads and the CPU is saturated by one forward pass anyway."""

    def __init__(self, predictor: Predictor, card: ModelCard, settings: ServeSettings):
        self.predictor = predictor
        self.card = card
        self.settings = settings
        self.label_names = list(predictor.label_names)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, settings: ServeSettings) -> "ClassifierCore":
        if not settings.run:
            raise ConfigError("nothing to serve: set run=<run dir, bundle, model/ or export/ folder>")
        backend = choose_backend(settings.run, settings.backend)
        if settings.threads is not None:
            os.environ[ORT_THREADS_ENV] = str(settings.threads)  # read by the ONNX Runtime backend when it loads
        predictor = Predictor.from_path(
            settings.run,
            backend=backend,
            precision=settings.precision,
            device=settings.device,
            batch_size=settings.model_batch_size,
            variant=settings.variant,
            max_texts=None,  # the serving layer enforces the limits (per protocol, with its own messages)
            max_chars=None,
        )
        if settings.threads is not None and "torch" in sys.modules:  # the torch backend (or a torch member) loaded
            sys.modules["torch"].set_num_threads(settings.threads)
        described = predictor.model.describe()
        card = model_card(
            predictor.source, predictor.label_names, predictor.max_length, str(described.get("backend", backend)),
            variant=settings.variant,
        )
        log.info(
            "loaded %s %s version %s (%s backend) from %s in %.2f s",
            card.kind, card.id, card.version, card.backend, card.source, predictor.load_seconds or 0.0,
        )
        return cls(predictor, card, settings)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return self.predictor.predict_proba(texts)

    def predictions(self, texts: list[str]) -> list[dict]:
        """``[{"label", "probabilities": {name: p}}]`` in the model's label order."""
        probs = self.predict_proba(texts)
        names = self.label_names
        return [
            {"label": names[int(row.argmax())], "probabilities": {name: float(p) for name, p in zip(names, row)}}
            for row in probs
        ]

    def model_info(self) -> dict:
        card = self.card
        return {
            "model": card.ref(),
            "kind": card.kind,
            "backend": card.backend,
            "variant": card.variant,
            "label_names": card.label_names,
            "max_length": card.max_length,
            "members": card.members,
            "files": card.files,
            "limits": {"max_texts": self.settings.limits.max_texts, "max_chars": self.settings.limits.max_chars},
            "batching": {
                "enabled": self.settings.batching.enabled,
                "max_batch_size": self.settings.batching.max_batch_size,
                "max_latency_ms": self.settings.batching.max_latency_ms,
            },
        }
