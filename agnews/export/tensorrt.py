"""``format=tensorrt``: a TensorRT engine built from the plain fp32 ONNX file, stored beside it and listed in
``export.json`` so :class:`~agnews.inference.backends.tensorrt_backend.TensorRTBackend` reuses it on the same GPU
model and TensorRT version (and rebuilds it elsewhere)."""

from __future__ import annotations

from pathlib import Path

from agnews.errors import ModelLoadError
from agnews.export.errors import ExportError

ENGINE_FILE = "model.plan"


def check_available() -> None:
    """Fail before any work when this machine cannot build engines."""
    from agnews.inference.backends.tensorrt_backend import require_tensorrt

    try:
        require_tensorrt()
    except ModelLoadError as exc:
        raise ExportError(f"format=tensorrt: {exc}. format=onnx works on any machine.") from exc


def build(folder: Path, onnx_name: str, precision: str, max_batch_size: int, max_sequence_length: int, workspace_gib: float) -> dict:
    """Write ``folder/model.plan``; returns the ``tensorrt`` entry of export.json."""
    from agnews.inference.backends.tensorrt_backend import build_engine, engine_facts, require_tensorrt
    from agnews.runs import sha256_file

    trt, torch = require_tensorrt()
    try:
        serialized = build_engine(folder / onnx_name, precision, max_batch_size, max_sequence_length, workspace_gib)
    except (ModelLoadError, ValueError) as exc:
        raise ExportError(f"TensorRT engine build failed: {exc}") from exc
    (folder / ENGINE_FILE).write_bytes(serialized)
    return {
        "engine": ENGINE_FILE,
        "onnx": onnx_name,
        "onnx_sha256": sha256_file(folder / onnx_name),
        **engine_facts(trt, torch, 0),
        "precision": precision,
        "max_batch_size": max_batch_size,
        "max_sequence_length": max_sequence_length,
    }
