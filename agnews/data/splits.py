"""Stratified, seeded subsets and validation splits (model selection never touches the test split)."""

from __future__ import annotations

from agnews.data.sources import Split
from agnews.errors import ConfigError


def _count(size: int | float | None, total: int, what: str) -> int | None:
    """Interpret ``size`` as a row count (int >= 1) or a fraction of ``total`` (0 < float < 1)."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ConfigError(f"{what} must be a row count or a fraction, got {size!r}")
    if isinstance(size, float) and not size.is_integer():
        if not 0.0 < size < 1.0:
            raise ConfigError(f"{what}={size}: a fraction must lie strictly between 0 and 1")
        return max(1, round(size * total))
    count = int(size)
    if count < 1:
        raise ConfigError(f"{what}={size} must be at least 1")
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
        raise ConfigError(f"{what}={size} leaves fewer rows than classes ({num_classes}) on one side")
    taken, rest = train_test_split(
        list(range(len(split))), train_size=count, stratify=split.labels, random_state=seed, shuffle=True
    )
    return split.subset(sorted(taken)), split.subset(sorted(rest))


def make_splits(
    train: Split,
    test: Split,
    val_size: int | float,
    train_size: int | float | None,
    seed: int,
) -> dict[str, Split]:
    """Carve a stratified validation split from train, then optionally a stratified training subset of the rest."""
    val, remaining = stratified_take(train, val_size, seed, "data.val_size")
    if remaining is None:
        raise ConfigError("data.val_size takes every training row; nothing is left to train on")
    val.name = "val"
    fit, _ = stratified_take(remaining, train_size, seed, "data.train_size")
    fit.name = "train"
    return {"train": fit, "val": val, "test": test}
