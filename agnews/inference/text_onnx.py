"""A text-input ONNX model: a whole classical pipeline (TF-IDF + linear classifier) converted with skl2onnx.

Strings go in (``text``: a string tensor ``[n, 1]`` or ``[n]``), class probabilities come out (the float output named
``probabilities``). There is no tokenizer, no padding and no logits: everything the scikit-learn pipeline did happens
inside the graph (see :mod:`agnews.baseline.onnx_convert` and docs/baseline.md). ``Predictor.from_path`` builds this
for a model folder whose ``agnews_model.json`` says ``"input": "text"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.inference.backends.onnx_backend import resolve_providers, session_threads
from agnews.runs import RunFormatError

PROBABILITIES_OUTPUT = "probabilities"
# The TF-IDF features are dense inside the graph ([batch, vocabulary] float32): small batches keep memory bounded.
DEFAULT_BATCH_SIZE = 32


class TextOnnxModel:
    """``predict_proba(texts) -> [n, classes]`` (float64) from an ONNX graph that takes raw strings."""

    name = "onnx"

    def __init__(
        self,
        onnx_path: str | Path,
        label_names: Sequence[str],
        providers: Sequence[str] | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.label_names = list(label_names)
        if not self.path.is_file():
            raise RunFormatError(f"{self.path}: no such ONNX file")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        available = ort.get_available_providers()
        # The string operators (tokenizer, n-gram counting) exist on CPU only: accelerators would only add copies.
        self.requested = resolve_providers(providers if providers is not None else ["CPUExecutionProvider"], available)
        options = ort.SessionOptions()
        threads = session_threads()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.requested)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types: one readable error for a bad file
            hint = ""
            if "locale" in str(exc).lower():
                hint = " (the graph lowercases text under a locale this machine lacks; see docs/baseline.md)"
            reason = f"{type(exc).__name__}: {exc}"
            raise RunFormatError(f"{self.path}: ONNX Runtime cannot load it{hint} ({reason})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(string)":
            found = [(i.name, i.type) for i in inputs]
            raise RunFormatError(f"{self.path}: not a text-input model (expected one string input, found {found})")
        self.input_name = inputs[0].name
        self.input_rank = len(inputs[0].shape or [None])
        self.output_name = self._probability_output()

    def _probability_output(self) -> str:
        outputs = self.session.get_outputs()
        for output in outputs:
            if output.name == PROBABILITIES_OUTPUT:
                return output.name
        floats = [o.name for o in outputs if o.type in ("tensor(float)", "tensor(double)") and len(o.shape or []) == 2]
        if len(floats) == 1:
            return floats[0]
        raise RunFormatError(
            f"{self.path}: no '{PROBABILITIES_OUTPUT}' output (outputs: {[(o.name, o.type) for o in outputs]})"
        )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        num_classes = len(self.label_names)
        if not texts:
            return np.zeros((0, num_classes), dtype=np.float64)
        shape = (-1, 1) if self.input_rank == 2 else (-1,)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = np.array(texts[start : start + self.batch_size], dtype=object).reshape(shape)
            (probs,) = self.session.run([self.output_name], {self.input_name: batch})
            chunks.append(np.asarray(probs, dtype=np.float64))
        probs = np.concatenate(chunks)
        if probs.shape != (len(texts), num_classes):
            raise RuntimeError(f"{self.path.name} returned probabilities of shape {probs.shape} for {len(texts)} texts")
        return probs

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "input": "text",
            "file": str(self.path),
            "providers": self.session.get_providers(),
            "batch_size": self.batch_size,
        }
