"""PyTorch classifier -> fp32 ONNX with dynamic batch and sequence axes.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, with eager attention. Its graphs keep the
MatMul/Softmax/Add attention pattern and the int mask arithmetic that ONNX Runtime's BERT fusions (``Attention``,
``EmbedLayerNormalization``, ``SkipLayerNormalization``, ``BiasGelu``) are written against; on all-MiniLM-L6-v2 the
dynamo exporter's graph only got SkipLayerNormalization/BiasGelu fused (no Attention), so it is not used.

Tracing records one input shape. Every architecture here was checked to stay shape-generic except Longformer, whose
sliding-window attention chunks the sequence with Python loops/``as_strided`` sized from the traced shape; its export
therefore pads every input to one fixed length (``max_length`` rounded up to the attention window) inside the graph
(:class:`PaddedInputs`) and chunks with slices (:func:`_patch_longformer`). The sequence axis stays dynamic for
callers; the padded tail is masked, so logits match PyTorch. Its global attention mask is a graph input.

A ``model.long_input`` run (:class:`agnews.models.long_input.LongInputClassifier`) sizes its window grid from the
padded length in Python, so its export pads every input to ``max_length`` inside the graph too;
which windows hold content stays dynamic (only those run through the encoder), and the pooling is part of the graph.
"""

from __future__ import annotations

import contextlib
import logging
import math
import types
import warnings
from pathlib import Path

from agnews.export.errors import ExportError

log = logging.getLogger(__name__)

OUTPUT_NAME = "logits"
MIN_OPSET = 14  # older opsets lack operators these architectures export to (e.g. Trilu)
EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False), eager attention"
# Two texts of different lengths: the traced graph includes the padding path.
EXAMPLE_TEXTS = ["Stocks rallied on Wall Street as investors cheered upbeat earnings reports from technology firms.", "Match"]


def load_model(model_dir: Path):
    """The run's classifier in fp32 with eager attention, so the exported graph is the one ORT's fusions match (a
    long-input run's encoder wrapped back in its windowing, as :func:`agnews.models.exported.load_classifier` does)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from agnews.models.long_input import INFO_KEY, LongInputClassifier
    from agnews.runs import MODEL_INFO_FILE, read_json

    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager")
        info_path = Path(model_dir) / MODEL_INFO_FILE
        long_input = (read_json(info_path) if info_path.is_file() else {}).get(INFO_KEY)
        if long_input:
            model = LongInputClassifier.restore(model, long_input, model_dir)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{model_dir}: cannot load the classifier to export it ({exc})") from exc
    return model.to(torch.float32).eval()


def is_long_input(model) -> bool:
    from agnews.models.long_input import LongInputClassifier

    return isinstance(model, LongInputClassifier)


def input_names(info: dict) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if info.get("global_attention_first_token"):
        names.append("global_attention_mask")
    return names


def is_longformer(model) -> bool:
    return getattr(model.config, "model_type", None) == "longformer"


def example_texts(model) -> list[str]:
    """Texts to trace with: a long-input model also gets one text spanning several windows (the pooling path)."""
    if not is_long_input(model):
        return EXAMPLE_TEXTS
    settings = model.settings
    return [" ".join([EXAMPLE_TEXTS[0]] * (2 * settings.window // 8 + 1)), *EXAMPLE_TEXTS]


def longformer_length(model, max_length: int) -> int:
    """``max_length`` rounded up to the model's attention window (what Longformer pads to itself)."""
    window = model.config.attention_window
    window = window if isinstance(window, int) else max(window)
    return int(math.ceil(max_length / window) * window)


def _overlapping_chunks(x, size: int, step: int):
    """``[N, L, D] -> [N, count, size, D]`` windows every ``step``; ``L`` is fixed in the export, so slices suffice."""
    import torch

    count = (int(x.size(1)) - size) // step + 1
    return torch.stack([x[:, i * step : i * step + size] for i in range(count)], dim=1)


def _chunk(hidden_states, window_overlap, onnx_export=False):
    return _overlapping_chunks(hidden_states, 2 * window_overlap, window_overlap)


def _sliding_chunks_matmul_attn_probs_value(self, attn_probs, value, window_overlap):
    """transformers' LongformerSelfAttention method, with its ``as_strided`` (whose traced gather indices bake in the
    batch size) replaced by slices."""
    import torch
    from torch import nn

    batch_size, seq_len, num_heads, head_dim = value.size()
    chunked_attn_probs = attn_probs.transpose(1, 2).reshape(
        batch_size * num_heads, torch.div(seq_len, window_overlap, rounding_mode="trunc"), window_overlap,
        2 * window_overlap + 1,
    )
    value = value.transpose(1, 2).reshape(batch_size * num_heads, seq_len, head_dim)
    padded_value = nn.functional.pad(value, (0, 0, window_overlap, window_overlap), value=-1)
    chunked_value = _overlapping_chunks(padded_value, 3 * window_overlap, window_overlap)
    chunked_attn_probs = self._pad_and_diagonalize(chunked_attn_probs)
    context = torch.einsum("bcwd,bcdh->bcwh", (chunked_attn_probs, chunked_value))
    return context.view(batch_size, num_heads, seq_len, head_dim).transpose(1, 2)


def _patch_longformer(model) -> None:
    """Instance-level overrides on this (export-only) model copy; the class and other models are untouched."""
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    for module in model.modules():
        if isinstance(module, LongformerSelfAttention):
            module._chunk = _chunk
            module._sliding_chunks_matmul_attn_probs_value = types.MethodType(
                _sliding_chunks_matmul_attn_probs_value, module
            )


def wrap_for_export(model, names: list[str], max_length: int, pad_token_id: int):
    """A module ``forward(*inputs) -> logits`` (positional, in ``names`` order) for the tracer."""
    from torch import nn

    class LogitsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).logits

    class PaddedInputs(nn.Module):
        """Every input padded on the right to ``length``: the graph's shape-dependent Python values (Longformer's
        chunk count, the long-input window grid) are traced for the longest input the Predictor sends. Padding is
        masked (and the long-input wrapper finds each row's first real token, whatever the padding side)."""

        def __init__(self, length: int):
            super().__init__()
            self.model = model
            self.length = length

        def forward(self, *inputs):
            extra = self.length - inputs[0].shape[1]
            padded = {
                name: nn.functional.pad(tensor, (0, extra), value=pad_token_id if name == "input_ids" else 0)
                for name, tensor in zip(names, inputs)
            }
            return self.model(**padded).logits

    if is_long_input(model):
        if is_longformer(model.model):
            _patch_longformer(model.model)  # windows have a fixed width; the window count (batch) stays dynamic
        return PaddedInputs(max_length).eval()
    if is_longformer(model):
        _patch_longformer(model)
        return PaddedInputs(longformer_length(model, max_length)).eval()
    return LogitsOnly().eval()


@contextlib.contextmanager
def _quiet_tracing():
    """The tracer warns about every shape-dependent Python value; parity checks on other shapes are the real test."""
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def export_fp32(model, tokenizer, info: dict, path: Path, opset: int) -> dict:
    """Write ``path`` (fp32 ONNX); returns the facts export.json records."""
    import torch

    from agnews.inference.encoding import TextEncoder

    names = input_names(info)
    encoder = TextEncoder.from_info(tokenizer, info)
    texts = example_texts(model)
    _, example = next(encoder.batches(texts, len(texts)))
    missing = [n for n in names if n not in example]
    if missing:
        raise ExportError(f"the tokenizer/padding produced no {missing} for this model")
    wrapped = wrap_for_export(model, names, int(info.get("max_length", 128)), encoder.tokenizer.pad_token_id or 0)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    dynamic_axes = {**{n: {0: "batch", 1: "sequence"} for n in names}, OUTPUT_NAME: {0: "batch"}}
    try:
        with _quiet_tracing(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                wrapped, args, str(path), input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes,
                opset_version=opset, dynamo=False, do_constant_folding=True,
            )
    except Exception as exc:  # the tracer and symbolic functions raise many types; one clear message
        family = info.get("family") or getattr(model.config, "model_type", "?")
        raise ExportError(
            f"model family {family!r} ({type(model).__name__}) cannot be exported to ONNX at opset {opset}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    facts = {"exporter": EXPORTER, "inputs": names, "output": OUTPUT_NAME, "opset": opset}
    if is_long_input(model):
        facts["fixed_internal_length"] = int(info.get("max_length", 128))
        facts["long_input"] = model.settings.mode
    elif is_longformer(model):
        facts["fixed_internal_length"] = longformer_length(model, int(info.get("max_length", 128)))
    return facts


def stamp_metadata(path: Path, props: dict) -> None:
    """Add ``metadata_props`` (strings) to an ONNX file in place (opset, source run, variant...)."""
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
