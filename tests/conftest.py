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
def build_tiny(compose_train_cfg):
    """``build_tiny("xlnet")`` -> the bundle of model=<name> model.tiny=true, seeded, as the pipeline builds it."""

    def build(name: str, *overrides: str):
        import torch
        from hydra.utils import instantiate

        cfg = compose_train_cfg([f"model={name}", "model.tiny=true", *overrides])
        torch.manual_seed(0)
        return instantiate(cfg.model, label_names=list(LABELS))

    return build


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


# ---- finished runs, for everything downstream of training (inference, export, ensembles) ------------------------------
def real_rows_dir(folder: Path, shared: Path, train_rows: int = 600, test_rows: int = 400) -> Path:
    """A small ag_news_csv folder of REAL rows: the first ``train_rows`` of the shared train subset and a class-balanced
    ``test_rows`` of the real test split (so a real-model run scores real texts in seconds, not minutes)."""
    import itertools

    with (shared / "train.csv").open(newline="", encoding="utf-8") as handle:
        train = list(itertools.islice(csv.reader(handle), train_rows))
    with (shared / "test.csv").open(newline="", encoding="utf-8") as handle:
        per_class: dict[str, list] = {}
        for row in csv.reader(handle):
            bucket = per_class.setdefault(row[0], [])
            if len(bucket) < test_rows // 4:
                bucket.append(row)
    write_ag_news_csv(folder / "train.csv", train)
    write_ag_news_csv(folder / "test.csv", [row for rows in zip(*per_class.values()) for row in rows])
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def train_run(run_dir: Path, overrides: list[str], cache_dir: Path | None = None) -> Path:
    """Run ``agnews.train`` in-process (composed as the CLI would) with its run directory at ``run_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import agnews.resolvers  # noqa: F401
    from agnews.pipeline import train

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.log_dir = str(run_dir.parent / "logs")
        cfg.paths.cache_dir = str(cache_dir or run_dir.parent / "cache")
    train(cfg)
    return run_dir


@pytest.fixture(scope="session")
def real_minilm_run(tmp_path_factory, shared_data_dir) -> Path:
    """A finished run of the shipped pretrained MiniLM on 600 real train rows (1 epoch, max length 64, bf16 autocast
    as the quickstart trains), scored on 400 real test rows, with its exported model. About 30 s, once per session."""
    root = tmp_path_factory.mktemp("real_minilm")
    data = real_rows_dir(root / "data", shared_data_dir)
    return train_run(
        root / "run",
        [
            "experiment=quickstart",
            f"data.data_dir={data}",
            "data.train_size=null",
            "data.val_size=100",
            "data.batch_size=16",
            "strategy.optimizer.lr=2e-4",
            "callbacks.progress_bar=null",
        ],
    )


@pytest.fixture(scope="session")
def tiny_run_factory(tmp_path_factory):
    """``tiny_run_factory(family, *overrides)``: a finished tiny random-weight run of that architecture (minilm, deberta,
    roberta, xlnet, electra, longformer) on synthetic separable texts, cached per arguments for the session."""
    cache: dict[tuple, Path] = {}
    data = None

    def make(family: str = "minilm", *overrides: str) -> Path:
        nonlocal data
        key = (family, *overrides)
        if key in cache:
            return cache[key]
        root = tmp_path_factory.mktemp(f"tiny_{family}")
        if data is None:
            data_root = tmp_path_factory.mktemp("tiny_data")
            write_ag_news_csv(data_root / "train.csv", synthetic_rows(30, seed=1))
            write_ag_news_csv(data_root / "test.csv", synthetic_rows(8, seed=2, empty_title_every=0))
            (data_root / "classes.txt").write_text("\n".join(LABELS) + "\n")
            data = data_root
        cache[key] = train_run(
            root / "run",
            [
                f"model={family}", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", "logger=csv",
                "trainer.max_epochs=1", *small_data_overrides(data), *overrides,
            ],
        )
        return cache[key]

    return make
