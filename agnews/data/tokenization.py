"""Tokenize once, cache on disk (safetensors), keyed by tokenizer, max length and data content."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that changes token ids: the tokenizer's full serialized state and its class."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # slow tokenizers: fall back on the vocabulary
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.padding_side, tokenizer.truncation_side, tokenizer.model_input_names]).encode())
    return digest.hexdigest()


def texts_fingerprint(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


class TokenizedTexts:
    """Ragged token ids stored flat with offsets (cheap to save, load and slice)."""

    def __init__(self, flat_ids: np.ndarray, offsets: np.ndarray):
        self.flat_ids = flat_ids
        self.offsets = offsets
        self.lengths = np.diff(offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.flat_ids[self.offsets[index] : self.offsets[index + 1]]

    @classmethod
    def from_lists(cls, ids: list[list[int]]) -> "TokenizedTexts":
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)


def tokenize_texts(
    tokenizer,
    texts: list[str],
    max_length: int,
    cache_dir: str | Path | None = None,
    batch_size: int = 2048,
) -> TokenizedTexts:
    """Token ids (with special tokens, truncated to ``max_length``), from the cache when the same key was seen."""
    from safetensors.numpy import load_file, save_file

    key = hashlib.sha256(
        json.dumps([CACHE_FORMAT, tokenizer_fingerprint(tokenizer), max_length, texts_fingerprint(texts)]).encode()
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        try:
            tensors = load_file(str(path))
            log.info("Tokenization cache hit: %s", path)
            return TokenizedTexts(tensors["flat_ids"], tensors["offsets"])
        except Exception as exc:  # a truncated file from an interrupted run: rebuild it
            log.warning("Ignoring unreadable tokenization cache %s (%s); re-tokenizing", path, exc)

    ids: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size], truncation=True, max_length=max_length, add_special_tokens=True
        )
        ids.extend(encoded["input_ids"])
    tokenized = TokenizedTexts.from_lists(ids)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"flat_ids": tokenized.flat_ids, "offsets": tokenized.offsets}, str(tmp))
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry under the final name
        log.info("Tokenized %d texts -> %s", len(texts), path)
    return tokenized
