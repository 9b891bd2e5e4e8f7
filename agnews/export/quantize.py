"""Dynamic INT8 quantisation (int8 weights, activations quantised per batch at run time) of the optimized graph.

Why types first: the fused graph holds ONNX Runtime contrib operators (Attention, SkipLayerNormalization...) that
ONNX's own shape inference cannot type, so every tensor downstream of one is untyped, and ``quantize_dynamic`` stops
with "Unable to find data type for weight_name=.../attention/output/dense/MatMul_output_0 ... shape_inference
failed" (the error a reviewer hit quantizing an optimized MiniLM). ONNX Runtime's symbolic shape inference knows the
contrib operators and types the whole graph; only if it fails is the quantizer told to assume float
(``DefaultTensorType``), which is what every activation of these graphs is.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from agnews.export.optimize import quiet_logging

log = logging.getLogger(__name__)


def quantized_operator_counts(path: Path) -> dict[str, int]:
    """Integer / quantizing operators in the graph (MatMulInteger, DynamicQuantizeLinear, QAttention...)."""
    import collections

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(
        node.op_type
        for node in model.graph.node
        if "Integer" in node.op_type or "Quantize" in node.op_type or (node.domain == "com.microsoft" and node.op_type.startswith("Q"))
    )
    return dict(sorted(counts.items()))


def typed_model(source: Path):
    """(ModelProto with value types for every tensor, how they were obtained)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(source))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its failures as well as raising them
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True), "symbolic_shape_inference"
    except Exception as exc:  # noqa: BLE001 - the fallback below is always valid for float graphs
        log.warning("ORT symbolic shape inference failed (%s); quantizing with DefaultTensorType=FLOAT", exc)
        return model, "default_tensor_type_float"


def strip_value_info(path: Path) -> None:
    """Drop the intermediate shapes the quantizer stores. They come from shape inference on one traced graph and can
    be wrong where shapes are data-dependent (Longformer's global-attention NonZero/ScatterND): ONNX Runtime's memory
    planner trusts them and fails ("ScatterND ... updates tensor should have shape ..."). ORT infers shapes itself."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def quantize_int8(source: Path, target: Path, per_channel: bool = True) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, typing = typed_model(source)
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if typing != "symbolic_shape_inference" else None
    with quiet_logging(logging.WARNING):  # it warns "consider pre-processing" on every call
        quantize_dynamic(model, str(target), weight_type=QuantType.QInt8, per_channel=per_channel, extra_options=extra)
    strip_value_info(target)
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "activations": "dynamic uint8 per batch",
        "per_channel": per_channel,  # weight scales per output channel (else one per tensor)
        "source": source.name,
        "typing": typing,
        "quantized_ops": quantized_operator_counts(target),
    }
