"""ONNX Runtime backend: one ``InferenceSession`` over an exported ONNX file (fp32, ORT-optimized or INT8).

Providers default to the accelerated ones this onnxruntime build offers (TensorRT when the tensorrt package is
importable, then CUDA), always ending with CPU so ORT can place the nodes the others do not take. Only the inputs
the graph declares are fed (an export without ``global_attention_mask`` ignores it), always as int64.
``AGNEWS_ORT_THREADS`` sets ORT's intra-op thread count (default: ORT's own, one per physical core).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from agnews.runs import RunFormatError

THREADS_ENV = "AGNEWS_ORT_THREADS"
# Short names a user may type for the provider list (Predictor.from_path(providers=["cpu"])).
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


def default_providers(available: Sequence[str]) -> list[str]:
    """Accelerated providers first (when present), CPU last."""
    chosen = []
    # ORT lists the TensorRT provider in GPU builds even when libnvinfer is absent; ask for it only with tensorrt installed.
    if "TensorrtExecutionProvider" in available and importlib.util.find_spec("tensorrt") is not None:
        chosen.append("TensorrtExecutionProvider")
    if "CUDAExecutionProvider" in available:
        chosen.append("CUDAExecutionProvider")
    return [*chosen, "CPUExecutionProvider"]


def resolve_providers(providers: Sequence[str] | str | None, available: Sequence[str]) -> list[str]:
    if providers is None:
        return default_providers(available)
    if isinstance(providers, str):
        providers = [providers]
    resolved = [PROVIDER_ALIASES.get(p.lower(), p) if isinstance(p, str) else p for p in providers]
    missing = [p for p in resolved if p not in available]
    if missing:
        raise ValueError(f"ONNX Runtime provider(s) {missing} are not available in this build; available: {list(available)}")
    return resolved


def session_threads() -> int | None:
    value = os.environ.get(THREADS_ENV)
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer") from None
    if threads < 1:
        raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive integer")
    return threads


class OnnxBackend:
    name = "onnx"

    def __init__(self, onnx_path: str | Path, providers: Sequence[str] | str | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise RunFormatError(f"{self.path}: no such ONNX file")
        available = ort.get_available_providers()
        self.requested_providers = resolve_providers(providers, available)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = session_threads()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.requested_providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types: one readable error for a bad file
            raise RunFormatError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"{self.path.name} needs inputs {self.input_names}; missing {missing}")
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.int64) for name in self.input_names}
        (logits,) = self.session.run([self.output_name], feed)
        return np.asarray(logits, dtype=np.float32)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "file": str(self.path),
            "providers": self.session.get_providers(),
            "inputs": self.input_names,
        }
