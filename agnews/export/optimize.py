"""ONNX Runtime graph optimisation of the fp32 export, saved as a separate (portable) ONNX file.

First choice: ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``) with the
model's head count and hidden size, which fuses attention, embedding + layer norm, skip + layer norm and GELU. It
needs ``num_heads``/``hidden_size`` given: the exported Reshape targets are computed from the input shape, so its
auto-detection fails ("Failed to detect num_heads and hidden_size") and attention is left unfused.
Fallback, when it raises, fuses nothing, or (checked by the caller) breaks parity: ONNX Runtime's own session-level
optimisation at the extended level, written out through ``SessionOptions.optimized_model_filepath`` (the ``all``
level adds layout changes tied to the machine, so it is left to load time). export.json records which was used.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

TRANSFORMER_OPTIMIZER = "onnxruntime.transformers.optimizer"
SESSION_OPTIMIZER = "onnxruntime session (ORT_ENABLE_EXTENDED)"
# transformers model_type -> the ORT optimizer's model_type (its "bert" covers BERT-style encoders; it has no
# roberta/deberta/electra types of its own). Architectures not listed go straight to the session-level fallback:
# Longformer's sliding-window graph is large and the BERT patterns found only BiasGelu in it, after ~20 s.
ORT_MODEL_TYPES = {
    "bert": "bert",
    "electra": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "deberta": "bert",
    "deberta-v2": "bert",
    "xlnet": "bert",
}
ORT_DOMAIN = "com.microsoft"


@contextlib.contextmanager
def quiet_logging(level: int = logging.INFO):
    """ORT's fusion and quantization tools log every pattern they try (under top-level logger names such as
    ``fusion_base``, and on the root logger); keep warnings and errors only while they run."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


def fused_operator_counts(path: Path) -> dict[str, int]:
    """Count of each ONNX Runtime contrib operator (fused or quantized) in the graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(node.op_type for node in model.graph.node if node.domain == ORT_DOMAIN)
    return dict(sorted(counts.items()))


def transformer_optimize(source: Path, target: Path, hf_config) -> dict:
    """Run ORT's transformer optimizer; raises ``ValueError`` when the architecture is not covered or nothing fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = ORT_MODEL_TYPES.get(getattr(hf_config, "model_type", ""))
    if model_type is None:
        raise ValueError(f"ORT's transformer optimizer has no fusions for model_type={hf_config.model_type!r}")
    with quiet_logging(logging.WARNING):  # it also warns about every pattern it does not find
        optimized = optimize_model(
            str(source),
            model_type=model_type,
            num_heads=int(getattr(hf_config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(hf_config, "hidden_size", 0) or 0),
            opt_level=1,  # ORT's basic (hardware-independent) rewrites first, then the Python fusions
        )
    optimized.save_model_to_file(str(target))
    fused = fused_operator_counts(target)
    if not fused:
        raise ValueError(f"ORT's transformer optimizer ({model_type}) matched no fusion pattern in this graph")
    return {"method": TRANSFORMER_OPTIMIZER, "model_type": model_type, "fused_ops": fused}


def session_optimize(source: Path, target: Path) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return {"method": SESSION_OPTIMIZER, "fused_ops": fused_operator_counts(target)}


def optimize(source: Path, target: Path, hf_config, method: str = "auto") -> dict:
    """Write the optimized graph to ``target``; ``method``: ``auto`` (transformer optimizer, else session) or
    ``session``. Returns what was done (method, fused operator counts, why a fallback happened)."""
    if method == "session":
        return session_optimize(source, target)
    try:
        return transformer_optimize(source, target, hf_config)
    except Exception as exc:  # noqa: BLE001 - any failure of the optional fusion pass falls back to ORT's own
        log.warning("ORT transformer optimizer not used (%s: %s); using session-level optimisation", type(exc).__name__, exc)
        target.unlink(missing_ok=True)
        return {**session_optimize(source, target), "fallback_reason": f"{type(exc).__name__}: {exc}"}
