"""Texts longer than one encoder window: ``model.long_input=sliding_window|head_tail|hierarchical``.

The windowing happens inside the model (:class:`LongInputClassifier`), so data, training, scoring, the Predictor and
the ONNX export keep feeding one padded row per text (up to ``data.max_length`` tokens). Per row, the content tokens
(the row without its special tokens) are cut into windows of ``window`` tokens (special tokens re-added per window,
padded on the model's side), the encoder runs on every window that holds content as one batch, and:

- ``sliding_window``: windows every ``window - specials - stride`` content tokens (``stride`` tokens shared by
  consecutive windows, as in Hugging Face tokenizers); window logits are pooled by ``pooling`` (mean or max);
- ``head_tail``: one window of the first ``head_tokens`` and the last ``window - specials - head_tokens`` content
  tokens (Sun et al., 2019, "How to Fine-Tune BERT for Text Classification?");
- ``hierarchical``: the sliding windows' summary vectors (the position the model's head reads: the first token, or
  the last for left-padded XLNet) are pooled by a small additive attention layer, then the model's own head classifies
  the pooled vector.

A text that fits one window gives exactly its plain model's input (same tokens), so short texts are unaffected.
All geometry is integer tensor arithmetic on the batch; only the padded length sets the window grid, which is why the
ONNX export pads inputs to ``max_length`` inside the graph (:mod:`agnews.export.onnx_export`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from agnews.errors import ConfigError

MODES = ("sliding_window", "head_tail", "hierarchical")
POOLINGS = ("mean", "max")
WEIGHTS_FILE = "long_input.safetensors"
INFO_KEY = "long_input"
# Tokenizers without a real limit report a huge model_max_length (1e30).
NO_LIMIT = 1_000_000


def _head_features(model, features: torch.Tensor) -> torch.Tensor:
    """The model's own classification head on ``[N, 1, hidden]`` (every head reads position 0 or -1: the one row)."""
    kind = model.config.model_type
    if kind == "bert":
        return model.classifier(model.dropout(model.bert.pooler(features)))
    if kind in ("roberta", "electra", "longformer"):
        return model.classifier(features)
    if kind == "deberta-v2":
        return model.classifier(model.dropout(model.pooler(features)))
    if kind == "xlnet":
        return model.logits_proj(model.sequence_summary(features))
    raise ConfigError(f"model.long_input=hierarchical has no head recipe for model_type {kind!r}")


HIERARCHICAL_TYPES = ("bert", "roberta", "electra", "longformer", "deberta-v2", "xlnet")


@dataclass
class LongInputSettings:
    """Resolved windowing facts; written to ``agnews_model.json`` under ``long_input`` and read back at load."""

    mode: str
    window: int  # tokens per window, special tokens included
    stride: int  # content tokens shared by consecutive windows
    max_windows: int
    pooling: str = "mean"
    head_tokens: int | None = None  # None: Sun et al.'s 128, or a quarter of a smaller window's text
    prefix_ids: list[int] = field(default_factory=list)  # special tokens before the content ([CLS], <s>)
    suffix_ids: list[int] = field(default_factory=list)  # after it ([SEP], </s>; XLNet: <sep> <cls>)
    pad_token_id: int = 0
    padding_side: str = "right"
    global_attention_first_token: bool = False

    @property
    def specials(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    @property
    def content(self) -> int:
        """Content tokens per window."""
        return self.window - self.specials

    @property
    def step(self) -> int:
        return self.content - self.stride

    @property
    def max_length(self) -> int:
        """The longest row (special tokens included) whose content the windows cover: the tokenizer's new limit."""
        if self.mode == "head_tail":
            return NO_LIMIT  # any length: the middle is dropped by design
        return self.specials + self.content + (self.max_windows - 1) * self.step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LongInputSettings":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"long_input settings {unknown} are unknown (known: {sorted(known)})")
        settings = cls(**dict(values))
        settings.check(None)
        return settings

    def check(self, position_limit: int | None) -> None:
        """Clear errors for options that cannot work (``position_limit``: the encoder's longest input, if any)."""
        where = "model.long_input_options"
        if self.mode not in MODES:
            raise ConfigError(f"model.long_input={self.mode!r} is unknown; choose one of {list(MODES)} (or null: off)")
        for name in ("window", "max_windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}.{name}={value!r}: expected a positive integer")
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 0:
            raise ConfigError(f"{where}.stride={self.stride!r}: expected an integer >= 0 (tokens shared by windows)")
        if position_limit is not None and self.window > position_limit:
            raise ConfigError(
                f"{where}.window={self.window} exceeds the model's maximum input of {position_limit} tokens"
            )
        if self.content < 1:
            raise ConfigError(
                f"{where}.window={self.window} leaves no room for text beside the {self.specials} special tokens"
            )
        if self.mode != "head_tail" and self.stride >= self.content:  # head_tail has one window, no stride
            raise ConfigError(
                f"{where}.stride={self.stride} must be smaller than the window's {self.content} text tokens "
                f"(window={self.window} minus {self.specials} special tokens): windows would not advance"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"{where}.pooling={self.pooling!r}: expected one of {list(POOLINGS)}")
        if self.head_tokens is None:
            self.head_tokens = min(128, max(0, self.content) // 4)
        if self.mode == "head_tail" and (
            not isinstance(self.head_tokens, int) or not 0 <= self.head_tokens <= self.content
        ):
            raise ConfigError(
                f"{where}.head_tokens={self.head_tokens!r}: expected 0..{self.content} (the window's text tokens)"
            )
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"long_input padding_side={self.padding_side!r}: expected 'left' or 'right'")


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after one segment's tokens."""
    probe = "hello world"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ConfigError(f"model.long_input: cannot find where {type(tokenizer).__name__} puts its special tokens")


def position_limit(model, tokenizer, tiny: bool) -> int | None:
    """The longest input the encoder takes: its absolute positions and (for pretrained models) its tokenizer's limit."""
    config = model.config
    limits = []
    if not tiny:
        tokenizer_limit = getattr(tokenizer, "model_max_length", None)
        if tokenizer_limit and tokenizer_limit < NO_LIMIT:
            limits.append(int(tokenizer_limit))
    positions = getattr(config, "max_position_embeddings", None)
    absolute = config.model_type != "xlnet" and getattr(config, "position_biased_input", True)
    if positions and absolute:
        if config.model_type in ("roberta", "longformer"):  # positions start after the padding id
            positions -= (config.pad_token_id or 0) + 1
        limits.append(int(positions))
    return min(limits) if limits else None


def resolve_settings(
    mode: str, options: Mapping[str, Any] | None, model, tokenizer, global_attention_first_token: bool, tiny: bool
) -> LongInputSettings:
    options = dict(options or {})
    known = {"window", "stride", "max_windows", "pooling", "head_tokens"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"model.long_input_options: unknown option(s) {unknown}; known: {sorted(known)}")
    if mode not in MODES:
        raise ConfigError(f"model.long_input={mode!r} is unknown; choose one of {list(MODES)} (or null: off)")
    if mode == "hierarchical" and model.config.model_type not in HIERARCHICAL_TYPES:
        raise ConfigError(
            f"model.long_input=hierarchical supports model types {list(HIERARCHICAL_TYPES)}, "
            f"not {model.config.model_type!r}"
        )
    prefix, suffix = special_tokens(tokenizer)
    settings = LongInputSettings(
        mode=mode,
        window=options.get("window", 512),
        stride=options.get("stride", 128),
        max_windows=options.get("max_windows", 8),
        pooling=options.get("pooling", "mean"),
        head_tokens=options.get("head_tokens"),
        prefix_ids=[int(i) for i in prefix],
        suffix_ids=[int(i) for i in suffix],
        pad_token_id=int(tokenizer.pad_token_id or 0),
        padding_side=tokenizer.padding_side,
        global_attention_first_token=bool(global_attention_first_token),
    )
    settings.check(position_limit(model, tokenizer, tiny))
    return settings


class AttentionPool(nn.Module):
    """Additive attention over window vectors (Yang et al., 2016): ``softmax_k(v . tanh(W h_k))``-weighted sum."""

    def __init__(self, hidden: int):
        super().__init__()
        self.project = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, vectors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.project(vectors))).squeeze(-1)  # [B, K]
        scores = scores.float().masked_fill(~valid, torch.finfo(torch.float32).min)
        weights = torch.softmax(scores, dim=-1).to(vectors.dtype)
        return (weights.unsqueeze(-1) * vectors).sum(dim=1)


@dataclass
class WindowBatch:
    """The windows holding content, flattened: ``inputs`` for the encoder, ``index`` into the ``[B*K]`` grid."""

    inputs: dict[str, torch.Tensor]
    index: torch.Tensor  # [N] positions of these windows in the row-major [B, K] grid
    valid: torch.Tensor  # [B, K] which grid windows hold content
    summary_position: int  # where each window's summary token sits (0, or the last position for left padding)


def grid_windows(settings: LongInputSettings, padded_length: int) -> int:
    """Window slots per row for rows padded to ``padded_length`` (the longest content decides)."""
    if settings.mode == "head_tail":
        return 1
    extra = max(0, padded_length - settings.specials - settings.content)
    return min(settings.max_windows, 1 + math.ceil(extra / settings.step))


def make_windows(settings: LongInputSettings, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> WindowBatch:
    """Cut each row's content into windows (see the module docstring); tensor ops only, any padding side."""
    device = input_ids.device
    batch, length = input_ids.shape
    prefix = torch.tensor(settings.prefix_ids, dtype=input_ids.dtype, device=device)
    suffix = torch.tensor(settings.suffix_ids, dtype=input_ids.dtype, device=device)
    n_prefix, n_suffix = len(settings.prefix_ids), len(settings.suffix_ids)
    mask = attention_mask.to(torch.long)
    first = mask.argmax(dim=1)  # first real token: 0 for right padding, the padding width for left padding
    content_len = (mask.sum(dim=1) - settings.specials).clamp(min=0)  # [B]
    slots = max(1, min(settings.content, length - settings.specials))  # content slots per window
    windows = grid_windows(settings, length)
    k = torch.arange(windows, device=device).view(1, windows, 1)
    j = torch.arange(slots, device=device).view(1, 1, slots)
    n = content_len.view(batch, 1, 1)
    if settings.mode == "head_tail":
        # first head_tokens, then the tail: slot j >= head reads content position n - slots + j
        source = torch.where((n <= slots) | (j < settings.head_tokens), j, n - slots + j)
        used = torch.minimum(n, torch.full_like(n, slots))  # [B, 1, 1]
    else:
        source = k * settings.step + j
        used = (n - k * settings.step).clamp(min=0, max=slots)  # [B, K, 1]
    used = used.expand(batch, windows, 1)
    position = (first.view(batch, 1, 1) + n_prefix + source).clamp(max=length - 1)
    content = torch.gather(input_ids.unsqueeze(1).expand(batch, windows, length), 2, position.expand(batch, windows, slots))

    # Right-aligned window: prefix | `used` content tokens | suffix | padding.
    width = settings.specials + slots
    p = torch.arange(width, device=device).view(1, 1, width)
    in_content = (p >= n_prefix) & (p < n_prefix + used)
    in_suffix = (p >= n_prefix + used) & (p < n_prefix + used + n_suffix)
    pad = torch.full((batch, windows, width), settings.pad_token_id, dtype=input_ids.dtype, device=device)
    content_at = torch.gather(content, 2, (p - n_prefix).clamp(min=0, max=slots - 1).expand(batch, windows, width))
    ids = torch.where(in_content, content_at, pad)
    if n_suffix:
        suffix_at = suffix[(p - n_prefix - used).clamp(min=0, max=n_suffix - 1)]
        ids = torch.where(in_suffix, suffix_at, ids)
    if n_prefix:
        prefix_at = prefix[p.clamp(max=n_prefix - 1)].expand(batch, windows, width)
        ids = torch.where(p < n_prefix, prefix_at, ids)
    real = used + settings.specials  # [B, K, 1]
    window_mask = (p < real).to(attention_mask.dtype)
    if settings.padding_side == "left":  # XLNet: real tokens at the end; roll each window right by its padding
        roll = (p + real) % width
        ids = torch.gather(ids, 2, roll)
        window_mask = torch.gather(window_mask, 2, roll)

    # The first window always counts (an empty text still gets its special tokens); later ones when they add content
    # the previous window did not cover.
    if settings.mode == "head_tail":
        valid = torch.ones(batch, 1, dtype=torch.bool, device=device)
    else:
        needed = content_len.view(batch, 1) - (k.view(1, windows) - 1) * settings.step - settings.content
        valid = (k.view(1, windows) == 0) | (needed > 0)
    index = torch.nonzero(valid.reshape(-1)).squeeze(1)
    inputs = {
        "input_ids": ids.reshape(batch * windows, width).index_select(0, index),
        "attention_mask": window_mask.reshape(batch * windows, width).index_select(0, index),
    }
    if settings.global_attention_first_token:
        flat_mask = inputs["attention_mask"]
        inputs["global_attention_mask"] = (
            torch.arange(width, device=device).view(1, width) == flat_mask.argmax(dim=1, keepdim=True)
        ).to(flat_mask.dtype)
    summary = width - 1 if settings.padding_side == "left" else 0
    return WindowBatch(inputs, index, valid, summary)


@dataclass
class LongInputOutput:
    logits: torch.Tensor


class LongInputClassifier(nn.Module):
    """A Hugging Face sequence classifier run over windows of each text; returns an object with ``.logits``."""

    def __init__(self, model: nn.Module, settings: LongInputSettings):
        super().__init__()
        self.model = model
        self.settings = settings
        if settings.mode == "hierarchical":
            self.pool = AttentionPool(int(model.config.hidden_size))

    @property
    def config(self):
        return self.model.config

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, global_attention_mask=None, **_ignored) -> LongInputOutput:
        # global_attention_mask (Longformer) is rebuilt per window; token types are all zero for one segment.
        if attention_mask is None:
            attention_mask = (input_ids != self.settings.pad_token_id).long()
        windows = make_windows(self.settings, input_ids, attention_mask)
        batch, slots = windows.valid.shape
        if self.settings.mode == "hierarchical":
            hidden = self.model.base_model(**windows.inputs)[0][:, windows.summary_position]
            grid = hidden.new_zeros(batch * slots, hidden.shape[-1])
            grid[windows.index] = hidden
            pooled = self.pool(grid.view(batch, slots, -1), windows.valid)
            return LongInputOutput(_head_features(self.model, pooled.unsqueeze(1)))
        logits = self.model(**windows.inputs).logits
        grid = logits.new_zeros(batch * slots, logits.shape[-1])
        grid[windows.index] = logits
        grid = grid.view(batch, slots, -1)
        valid = windows.valid.unsqueeze(-1)
        if self.settings.pooling == "max":
            return LongInputOutput(grid.masked_fill(~valid, torch.finfo(grid.dtype).min).amax(dim=1))
        return LongInputOutput((grid * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1))

    # ---- saving: the encoder as a normal Hugging Face folder, the pooling layer beside it -------------------------
    def save_extra(self, target: Path) -> None:
        if self.settings.mode == "hierarchical":
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in self.pool.state_dict().items()}, target / WEIGHTS_FILE)

    def load_pool(self, model_dir: Path) -> bool:
        """Load the hierarchical attention layer ``model_dir`` saved beside its encoder; False where it saved none."""
        from safetensors.torch import load_file

        path = Path(model_dir) / WEIGHTS_FILE
        if self.settings.mode != "hierarchical" or not path.is_file():
            return False
        self.pool.load_state_dict(load_file(path))
        return True

    @classmethod
    def restore(cls, model: nn.Module, values: Mapping[str, Any], model_dir: Path) -> "LongInputClassifier":
        """Rebuild the wrapper an export saved (settings from ``agnews_model.json``, pooling weights from safetensors)."""
        wrapper = cls(model, LongInputSettings.from_dict(values))
        if wrapper.settings.mode == "hierarchical" and not wrapper.load_pool(model_dir):
            raise FileNotFoundError(f"{model_dir}: a hierarchical long-input model needs {WEIGHTS_FILE}")
        return wrapper.eval()


def wrap(bundle_model, mode: str | None, options, tokenizer, global_attention_first_token: bool, tiny: bool):
    """``(model, settings)``: the model wrapped for ``mode`` (``None``: unchanged), with the tokenizer's limit raised."""
    if mode in (None, "none", "null", False):
        if options and not isinstance(options, Mapping):
            raise ConfigError(f"model.long_input_options must be a mapping, got {options!r}")
        return bundle_model, None
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"model.long_input_options must be a mapping, got {options!r}")
    settings = resolve_settings(str(mode), options, bundle_model, tokenizer, global_attention_first_token, tiny)
    tokenizer.model_max_length = settings.max_length
    return LongInputClassifier(bundle_model, settings), settings
