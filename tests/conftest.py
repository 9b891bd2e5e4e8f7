"""Shared fixtures: small AG News folders written on the fly, the real shared copy, and Hydra composition."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
SHARED_DATA_DIR = Path(os.environ.get("AGNEWS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "ag_news"))
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
# A tiny random BERT on CPU in fp32: the cheapest full pipeline run.
TINY = ["model=minilm", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", "logger=csv"]


def small_data_overrides(folder) -> list[str]:
    """Overrides for a fast run on a synthetic ag_news_csv folder (see make_ag_news_dir)."""
    return [
        f"data.data_dir={folder}",
        "data.source=csv",
        "data.val_size=40",
        "data.max_length=32",
        "data.batch_size=16",
        "data.eval_batch_size=64",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null",
    ]

# Short, clearly separable texts per class so tiny models can learn something on a few hundred rows.
_VOCAB = {
    1: ["president", "minister", "election", "war", "embassy", "parliament", "treaty", "refugees"],
    2: ["match", "goal", "season", "coach", "tournament", "league", "striker", "olympic"],
    3: ["shares", "profit", "market", "earnings", "investors", "bank", "merger", "stocks"],
    4: ["software", "internet", "computer", "researchers", "space", "chip", "wireless", "linux"],
}


def synthetic_rows(per_class: int, seed: int = 0, empty_title_every: int = 5) -> list[list[str]]:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(per_class):
        for label, words in _VOCAB.items():
            title = " ".join(rng.choices(words, k=3)).title()
            description = " ".join(rng.choices(words, k=rng.randint(4, 20)))
            if empty_title_every and i % empty_title_every == 0:
                # the shared train subset has rows with an empty title and the joined text in the description
                title, description = "", f"{title} {description}"
            rows.append([str(label), title, description])
    rng.shuffle(rows)
    return rows


def write_ag_news_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return path


@pytest.fixture
def make_ag_news_dir(tmp_path):
    """Factory: ``make_ag_news_dir(train_per_class=50, test_per_class=10)`` -> folder in ag_news_csv format."""

    def make(train_per_class: int = 50, test_per_class: int = 10, name: str = "ag_news") -> Path:
        folder = tmp_path / name
        write_ag_news_csv(folder / "train.csv", synthetic_rows(train_per_class, seed=1))
        write_ag_news_csv(folder / "test.csv", synthetic_rows(test_per_class, seed=2, empty_title_every=0))
        (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
        return folder

    return make


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real AG News copy beside the checkout. Its absence is an error, never a silent skip."""
    if not (SHARED_DATA_DIR / "test.csv").is_file() or not (SHARED_DATA_DIR / "train.csv").is_file():
        pytest.fail(
            f"The shared AG News data is required but missing at {SHARED_DATA_DIR} "
            "(expected ../shared/data/ag_news beside the checkout, or set AGNEWS_SHARED_DATA)."
        )
    return SHARED_DATA_DIR


@pytest.fixture
def compose_train_cfg(tmp_path):
    """Compose ``conf/train.yaml`` with overrides, as ``python -m agnews.train`` would, with outputs in tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import agnews.resolvers  # noqa: F401

    def compose_cfg(overrides: list[str] | None = None, return_hydra_config: bool = False):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides or []), return_hydra_config=return_hydra_config)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.cache_dir = str(tmp_path / "cache")
        return cfg

    yield compose_cfg
    GlobalHydra.instance().clear()
