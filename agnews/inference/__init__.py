"""The project's one inference loop: :class:`Predictor` over a run, its model, an ONNX export or an ensemble bundle.

Evaluation, distillation teachers, robustness, export parity and serving all predict through it. It imports neither
Hydra nor Lightning; torch, transformers and onnxruntime are imported by the backend that needs them.
"""

from agnews.inference.predictor import Predictor, resolve_model_path
from agnews.inference.validation import InvalidInputError, validate_texts

__all__ = ["InvalidInputError", "Predictor", "resolve_model_path", "validate_texts"]
