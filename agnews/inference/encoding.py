"""Texts to padded, length-sorted model inputs, exactly as training tokenized and padded them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from agnews.data.padding import pad_token_ids


@dataclass
class TextEncoder:
    """A tokenizer with the facts a run recorded in ``agnews_model.json`` (max length, padding side, global attention)."""

    tokenizer: object
    max_length: int
    padding_side: str = "right"
    global_attention_first_token: bool = False

    @classmethod
    def from_info(cls, tokenizer, info: dict) -> "TextEncoder":
        padding_side = info.get("padding_side") or getattr(tokenizer, "padding_side", "right")
        tokenizer.padding_side = padding_side
        return cls(tokenizer, int(info.get("max_length", 128)), padding_side, bool(info.get("global_attention_first_token")))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """With special tokens, truncated to ``max_length`` (texts longer than that are scored on their first tokens)."""
        if not texts:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True)[
            "input_ids"
        ]

    def batches(self, texts: list[str], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(rows, inputs) per batch, longest texts first: little padding, results scattered back through ``rows``."""
        ids = self.token_ids(texts)
        order = np.argsort(-np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids)), kind="stable")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield rows, pad_token_ids(
                [ids[i] for i in rows], pad_id, self.padding_side, None, self.global_attention_first_token
            )
