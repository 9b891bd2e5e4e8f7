"""Stratified, seeded subsets and validation splits (model selection never touches the test split)."""

from __future__ import annotations

import math
import numbers

from agnews.data.sources import Split
from agnews.errors import ConfigError


def _count(size: int | float | None, total: int, what: str) -> int | None:
    """Interpret ``size`` as a row count (an integer >= 1) or a fraction of ``total`` (a float in (0, 1]).

    A float with an integer value above 1 (``2000.0``, as a command line may give) counts rows; ``1.0`` means all rows.
    """
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise ConfigError(f"{what} must be a row count (int >= 1) or a fraction (0 < float <= 1), got {size!r}")
    if isinstance(size, numbers.Integral):
        count = int(size)
    else:
        size = float(size)
        if not math.isfinite(size) or size <= 0.0:
            raise ConfigError(f"{what}={size}: must be a row count (int >= 1) or a fraction (0 < float <= 1)")
        if size <= 1.0:
            return total if size == 1.0 else max(1, round(size * total))
        if not size.is_integer():
            raise ConfigError(f"{what}={size}: a fraction must lie in (0, 1]; a row count must be a whole number")
        count = int(size)
    if count < 1:
        raise ConfigError(f"{what}={size} must be at least 1 (a row count) or a fraction in (0, 1]")
    return count


def stratified_take(split: Split, size: int | float | None, seed: int, what: str) -> tuple[Split, Split | None]:
    """Split ``split`` into (taken, rest) with ``size`` rows taken, class proportions kept; rest is None if all."""
    from sklearn.model_selection import train_test_split

    count = _count(size, len(split), what)
    if count is None or count == len(split):
        return split, None
    num_classes = len(set(split.labels))
    if count > len(split):
        raise ConfigError(f"{what}={size} asks for {count} rows, but the {split.name} split has only {len(split)}")
    if count < num_classes or len(split) - count < num_classes:
        raise ConfigError(
            f"{what}={size} ({count} of {len(split)} rows of the {split.name} split) leaves fewer rows than classes "
            f"({num_classes}) on one side; a stratified split needs at least one row per class on each side"
        )
    try:
        taken, rest = train_test_split(
            list(range(len(split))), train_size=count, stratify=split.labels, random_state=seed, shuffle=True
        )
    except ValueError as exc:  # e.g. a class with a single row cannot be stratified
        raise ConfigError(f"{what}={size}: cannot take a stratified subset of the {split.name} split: {exc}") from exc
    return split.subset(sorted(taken)), split.subset(sorted(rest))


def make_splits(
    train: Split,
    test: Split,
    val_size: int | float,
    train_size: int | float | None,
    seed: int,
    with_rest: bool = False,
) -> dict[str, Split]:
    """Carve a stratified validation split from train, then optionally a stratified training subset of the rest.

    ``with_rest=True`` adds ``"rest"``: the training rows neither in ``train`` nor in ``val`` (what ``train_size``
    leaves over; empty when it is null), the unlabelled pool of pseudo-labelling.
    """
    val, remaining = stratified_take(train, val_size, seed, "data.val_size")
    if remaining is None:
        raise ConfigError(
            f"data.val_size={val_size} takes every one of the {len(train)} training rows; nothing is left to train on"
        )
    val.name = "val"
    fit, rest = stratified_take(remaining, train_size, seed, "data.train_size")
    fit.name = "train"
    splits = {"train": fit, "val": val, "test": test}
    if with_rest:
        splits["rest"] = rest if rest is not None else Split("rest", [], [], [])
        splits["rest"].name = "rest"
    return splits
