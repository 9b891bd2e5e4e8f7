"""Inference backends: each turns a batch of padded inputs (numpy) into float32 logits (numpy).

``torch`` (fp32 or bf16 autocast, CPU or CUDA), ``onnx`` (ONNX Runtime: CPU, CUDA or TensorRT execution providers),
``tensorrt`` (an engine built from the ONNX file). Heavy libraries are imported by the backend that needs them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``[batch, classes]`` (float32) for ``input_ids``/``attention_mask`` (+ ``global_attention_mask``)."""
        ...

    def describe(self) -> dict:
        ...
