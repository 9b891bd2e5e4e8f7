"""TensorRT backend: an engine built from the exported ONNX file (TensorRT 10 Python API), run on a CUDA GPU.

The engine has one optimization profile: batch 1..``max_batch_size`` and sequence 1..``max_sequence_length`` (the
export's ``max_length``, from ``agnews_model.json`` beside the ONNX file). Larger batches are split. Device buffers
are torch CUDA tensors (``set_tensor_address`` + ``execute_async_v3`` on torch's current stream), so nothing beyond
torch and tensorrt is needed.

An engine is specific to a GPU model and TensorRT version: ``python -m agnews.export format=tensorrt`` builds one and
lists it in ``export.json`` (``tensorrt``: engine file, the ONNX it came from, TensorRT version, GPU, precision,
profile); this backend reuses it when all of those match and builds a fresh one in memory otherwise.

TensorRT parses standard ONNX only: ORT-specific variants (``optimized``/``int8``, which hold ``com.microsoft`` fused
or quantized operators) are replaced by the export's plain ``fp32`` file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from agnews.errors import ModelLoadError
from agnews.runs import EXPORT_INFO_FILE, MODEL_INFO_FILE, RunFormatError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "tf32", "fp16")
DEFAULT_MAX_SEQUENCE = 512
ORT_DOMAIN = "com.microsoft"


class TensorRTUnavailableError(ModelLoadError):
    """No CUDA GPU, or the tensorrt package is not installed."""


def require_tensorrt():
    """``(tensorrt, torch)`` modules, or a clear error saying what is missing."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            "backend=tensorrt needs a CUDA GPU, and torch sees none (use backend=onnx on CPU machines)"
        )
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "backend=tensorrt needs the tensorrt package: pip install 'agnews[tensorrt]' (TensorRT 10, CUDA 12)"
        ) from exc
    return trt, torch


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def uses_ort_operators(onnx_path: Path) -> bool:
    """Whether the graph holds ONNX Runtime contrib operators (fused attention, quantized MatMul...)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(op.domain == ORT_DOMAIN for op in model.opset_import) or any(
        node.domain == ORT_DOMAIN for node in model.graph.node
    )


def portable_onnx(onnx_path: Path) -> Path:
    """``onnx_path`` if TensorRT can parse it, else the export's plain fp32 file (from ``export.json``)."""
    if not uses_ort_operators(onnx_path):
        return onnx_path
    files = _read_json(onnx_path.parent / EXPORT_INFO_FILE).get("files") or {}
    plain = onnx_path.parent / files["fp32"] if "fp32" in files else None
    if plain is None or not plain.is_file():
        raise RunFormatError(
            f"{onnx_path}: holds ONNX Runtime-only operators TensorRT cannot parse, and no plain fp32 export is "
            f"listed beside it in {EXPORT_INFO_FILE}"
        )
    log.info("%s holds ONNX Runtime-only operators; TensorRT builds from %s instead", onnx_path.name, plain.name)
    return plain


def build_engine(
    onnx_path: str | Path,
    precision: str = "fp32",
    max_batch_size: int = 64,
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE,
    workspace_gib: float = 4.0,
) -> bytes:
    """A serialized engine for ``onnx_path`` with one dynamic-shape profile."""
    trt, _ = require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if max_batch_size < 1 or max_sequence_length < 1:
        raise ValueError("max_batch_size and max_sequence_length must be >= 1")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "fp32":
        # TF32 is on by default on Ampere and later; plain fp32 keeps logits within the export's parity tolerance.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    opt_batch = min(max_batch_size, 32)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if len(tensor.shape) != 2:
            raise ModelLoadError(f"{onnx_path}: input {tensor.name} has shape {tuple(tensor.shape)}; expected [batch, sequence]")
        profile.set_shape(tensor.name, (1, 1), (opt_batch, max_sequence_length), (max_batch_size, max_sequence_length))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    return bytes(serialized)


def engine_facts(trt, torch, device: int) -> dict:
    """What an engine depends on besides the ONNX file."""
    return {"tensorrt_version": trt.__version__, "gpu": torch.cuda.get_device_name(device)}


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        onnx_path: str | Path,
        engine_path: str | Path | None = None,
        precision: str | None = None,
        max_batch_size: int | None = None,
        max_sequence_length: int | None = None,
        workspace_gib: float = 4.0,
        device: int = 0,
    ):
        """Unset options take the values the export recorded (``export.json``), else fp32, batch 64 and the
        model's ``max_length``."""
        trt, torch = require_tensorrt()
        self._trt, self._torch = trt, torch
        requested = Path(onnx_path)
        if not requested.is_file():
            raise RunFormatError(f"{requested}: no such ONNX file")
        self.onnx_path = portable_onnx(requested)
        self.device = torch.device("cuda", device)
        folder = self.onnx_path.parent
        listed = _read_json(folder / EXPORT_INFO_FILE).get("tensorrt") or {}
        self.max_sequence_length = int(
            max_sequence_length
            or listed.get("max_sequence_length")
            or _read_json(folder / MODEL_INFO_FILE).get("max_length")
            or DEFAULT_MAX_SEQUENCE
        )
        self.max_batch_size = int(max_batch_size or listed.get("max_batch_size") or 64)
        self.precision = precision or listed.get("precision") or "fp32"
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.engine_source = "built"
        serialized = self._cached_engine(engine_path, listed, device)
        if serialized is None:
            log.info("Building a TensorRT engine from %s (%s)", self.onnx_path.name, self.precision)
            serialized = build_engine(
                self.onnx_path, self.precision, self.max_batch_size, self.max_sequence_length, workspace_gib
            )
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise ModelLoadError(f"{self.onnx_path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in self.input_names]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.input_dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.input_names}
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))

    def _cached_engine(self, engine_path, listed: dict, device: int) -> bytes | None:
        """The engine named by ``engine_path`` or ``export.json`` when it was built for this ONNX file, GPU and
        TensorRT version; ``None`` (build one) otherwise."""
        if engine_path is not None:
            path = Path(engine_path)
            if not path.is_file():
                raise RunFormatError(f"{path}: no such TensorRT engine file")
            self.engine_source = str(path)
            return path.read_bytes()
        if not listed.get("engine") or listed.get("onnx") != self.onnx_path.name:
            return None
        path = self.onnx_path.parent / listed["engine"]
        current = {
            **engine_facts(self._trt, self._torch, device),
            "precision": self.precision,
            "max_batch_size": self.max_batch_size,
            "max_sequence_length": self.max_sequence_length,
        }
        stale = {k: (listed.get(k), v) for k, v in current.items() if listed.get(k) != v}
        if stale or not path.is_file():
            log.info("Not reusing %s (built for %s); building a new engine", path.name, stale or "missing file")
            return None
        self.engine_source = str(path)
        return path.read_bytes()

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        keep = []  # the device buffers must outlive the asynchronous execution
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            for name in self.input_names:
                array = np.ascontiguousarray(inputs[name], dtype=self.input_dtypes[name])
                if array.shape[1] > self.max_sequence_length:
                    raise ValueError(
                        f"sequence length {array.shape[1]} exceeds the engine's profile ({self.max_sequence_length})"
                    )
                tensor = torch.from_numpy(array).to(self.device)
                keep.append(tensor)
                if not self.context.set_input_shape(name, tuple(array.shape)):
                    raise ValueError(f"TensorRT rejected input shape {array.shape} for {name}")
                self.context.set_tensor_address(name, tensor.data_ptr())
            shape = tuple(self.context.get_tensor_shape(self.output_name))
            out = torch.empty(shape, dtype=getattr(torch, self.output_dtype.name), device=self.device)
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for inputs of shape {shape}")
            stream.synchronize()
            return out.float().cpu().numpy()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"the engine needs inputs {self.input_names}; missing {missing}")
        batch = len(inputs[self.input_names[0]])
        parts = [
            self._run({name: inputs[name][start : start + self.max_batch_size] for name in self.input_names})
            for start in range(0, batch, self.max_batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "file": str(self.onnx_path),
            "engine": self.engine_source,
            "precision": self.precision,
            "device": str(self.device),
            "tensorrt": self._trt.__version__,
            "profile": {"max_batch_size": self.max_batch_size, "max_sequence_length": self.max_sequence_length},
        }
