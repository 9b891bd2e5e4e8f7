"""``python -m agnews.export run=<dir> [format=onnx|tensorrt] [quantize=int8]``: a finished run as ONNX files that
serve on their own (tokenizer and label map beside them), optimised for ONNX Runtime, optionally INT8, optionally a
TensorRT engine; every variant is checked against PyTorch through :class:`agnews.inference.Predictor`.

Importing this package imports no torch, onnx or onnxruntime (the CLI composes its config first).
"""

from agnews.export.errors import ExportError
from agnews.export.pipeline import Int8Options, ParityOptions, TensorRTOptions, export_run

__all__ = ["ExportError", "Int8Options", "ParityOptions", "TensorRTOptions", "export_run"]
