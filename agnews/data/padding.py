"""Pad a batch of token-id sequences (numpy only: used by training's collator and by inference backends)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def pad_token_ids(
    sequences: Sequence[Sequence[int]],
    pad_token_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
    global_attention_first_token: bool = False,
) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64 ``[batch, longest]``), plus Longformer's ``global_attention_mask``.

    ``padding_side="left"`` is what XLNet needs (its classifier reads the last position); the global attention mask
    marks the first real token (<s>/[CLS]) on either padding side.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    longest = max((len(ids) for ids in sequences), default=0)
    if pad_to_multiple_of:
        longest = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    input_ids = np.full((len(sequences), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, ids in enumerate(sequences):
        ids = np.asarray(ids, dtype=np.int64)
        span = slice(longest - len(ids), longest) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = ids
        attention_mask[row, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if global_attention_first_token:
        global_mask = np.zeros_like(attention_mask)
        global_mask[np.arange(len(sequences)), attention_mask.argmax(axis=1)] = 1
        batch["global_attention_mask"] = global_mask
    return batch
