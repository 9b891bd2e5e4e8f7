"""A finished run's data split rebuilt from its resolved config: the same source, label names, seed and sizes.

Runs store predictions keyed by example id, not the texts; every tool that must score a run's split again (robustness,
meta-evaluation, parity checks, baselines, ensembles, tests) rebuilds it here. Imports no torch: it reads the config
through :class:`agnews.runs.RunDir` (plain YAML) and the CSV/hub source like the datamodule does.
"""

from __future__ import annotations

from pathlib import Path

from agnews.data.sources import AG_NEWS_LABELS, HUB_DATASET, Split, load_source
from agnews.data.splits import make_splits
from agnews.runs import CONFIG_FILE, RunDir, RunFormatError, load_run

SPLITS = ("train", "val", "test")


def load_run_split(run: RunDir | str | Path, split: str = "test", data_dir: str | None = None) -> Split:
    """The run's ``split`` (ids, texts, labels) as the run saw it. ``data_dir`` overrides the config's ``data.data_dir``
    (a run moved to another machine whose CSV copy lives elsewhere)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    run = load_run(run)
    data = run.config.get("data")
    if not isinstance(data, dict) or "source" not in data:
        raise RunFormatError(f"{run.config_path}: no data section (source, sizes, seed): cannot rebuild the {split} split")
    raw = load_source(
        data["source"],
        data_dir or data.get("data_dir"),
        list(data.get("label_names") or AG_NEWS_LABELS),
        data.get("on_bad_rows", "fail"),
        data.get("hub_dataset", HUB_DATASET),
        data.get("hub_revision"),
    )
    if split == "test":
        return raw["test"]
    missing = [key for key in ("val_size", "seed") if data.get(key) is None]
    if missing:
        raise RunFormatError(f"{run.path / CONFIG_FILE}: data.{missing[0]} is missing: cannot rebuild the {split} split")
    return make_splits(raw["train"], raw["test"], data["val_size"], data.get("train_size"), data["seed"])[split]
