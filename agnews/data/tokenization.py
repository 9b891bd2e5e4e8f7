"""Tokenize once, cache on disk (safetensors), keyed by tokenizer, max length and data content."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import numbers
import os
import uuid
from pathlib import Path

import numpy as np

from agnews.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that changes token ids: the tokenizer's class, its serialized state and truncation side.

    The fast backend's transient ``truncation``/``padding`` settings are left out: every ``tokenizer(...)`` call
    rewrites them (with that call's max length), so keeping them would make the key depend on what the tokenizer was
    last used for, and a second identical request would miss the cache. ``padding_side`` is left out too: the cached
    ids are unpadded (the collator pads), so left- and right-padding tokenizers share one entry.
    """
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:  # slow tokenizers: fall back on the vocabulary and the special tokens
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    digest.update(json.dumps([tokenizer.truncation_side, getattr(tokenizer, "split_special_tokens", None)]).encode())
    return digest.hexdigest()


def texts_fingerprint(texts: list[str]) -> str:
    digest = hashlib.sha256(str(len(texts)).encode())
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))  # length-prefixed: no two lists hash the same bytes
        digest.update(encoded)
    return digest.hexdigest()


def cache_key(tokenizer, texts: list[str], max_length: int) -> str:
    """The cache file stem for these texts, tokenizer and max length."""
    payload = [CACHE_FORMAT, tokenizer_fingerprint(tokenizer), max_length, texts_fingerprint(texts)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


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

    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
        raise ConfigError(f"data.max_length must be a positive integer (tokens per text), got {max_length!r}")
    max_length = int(max_length)
    path = None
    if cache_dir:
        path = Path(cache_dir).expanduser() / f"{cache_key(tokenizer, texts, max_length)}.safetensors"
    if path is not None and path.is_file():
        try:
            tensors = load_file(str(path))
            tokenized = TokenizedTexts(tensors["flat_ids"], tensors["offsets"])
            _check_cached(tokenized, len(texts), max_length)
            log.info("Tokenization cache hit: %s", path)
            return tokenized
        except Exception as exc:  # a truncated file from an interrupted run, or one damaged since: rebuild it
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("Ignoring unreadable tokenization cache %s (%s); re-tokenizing", path, reason)

    ids: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size], truncation=True, max_length=max_length, add_special_tokens=True
        )
        ids.extend(encoded["input_ids"])
    tokenized = TokenizedTexts.from_lists(ids)
    if path is not None:
        # A name unique to this writer: ranks of a DDP run tokenize the same split at once and must not share it.
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"flat_ids": tokenized.flat_ids, "offsets": tokenized.offsets}, str(tmp))
            tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry under the final name
            log.info("Tokenized %d texts -> %s", len(texts), path)
        except OSError as exc:  # the cache only saves time: an unwritable cache folder must not stop the run
            log.warning("Could not write the tokenization cache %s (%s); continuing without it", path, exc)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return tokenized


def _check_cached(tokenized: TokenizedTexts, count: int, max_length: int) -> None:
    offsets = tokenized.offsets
    if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != len(tokenized.flat_ids):
        raise ValueError(f"offsets do not describe {count} texts over {len(tokenized.flat_ids)} token ids")
    if count and (tokenized.lengths.min() < 0 or tokenized.lengths.max() > max_length):
        raise ValueError(f"sequence lengths outside 0..{max_length}")
