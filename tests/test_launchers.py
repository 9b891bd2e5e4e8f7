"""Hydra launchers: SLURM (submitit) composition, and a local parallel launcher whose jobs really run concurrently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest


def test_slurm_launcher_composes_with_cluster_settings(compose_train_cfg):
    cfg = compose_train_cfg(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu-a100",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.mem_gb=120",
            "hydra.launcher.account=nlp",
        ],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu-a100" and launcher.account == "nlp"
    assert launcher.gpus_per_node == 4
    assert launcher.tasks_per_node == 4, "one task per GPU (Lightning's SLURM DDP contract)"
    assert launcher.nodes == 2, "nodes follow trainer.num_nodes"
    assert launcher.timeout_min == 90 and launcher.mem_gb == 120
    assert launcher.name == "train"
    assert launcher.submitit_folder.endswith("/.submitit/%j")
    # The plugin's own config class accepts every key we set (a typo would fail here, not on the cluster).
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), OmegaConf.to_container(launcher, resolve=True))
    assert merged.partition == "gpu-a100"


def test_slurm_launcher_cli_cfg_hydra(tmp_path):
    """``--cfg hydra`` through the real CLI shows the launcher settings (what users check before submitting)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "agnews.train", "--cfg", "hydra", "--package", "hydra.launcher",
            "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=2",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "partition: debug" in result.stdout
    assert "gpus_per_node: 2" in result.stdout and "tasks_per_node: ${.gpus_per_node}" in result.stdout
    assert "SlurmLauncher" in result.stdout


def test_local_parallel_launcher_runs_jobs_concurrently(tmp_path, make_ag_news_dir):
    """Two jobs of a -m run with hydra/launcher=local_parallel: both succeed, and their wall-clock spans overlap."""
    data = make_ag_news_dir(train_per_class=8, test_per_class=2)
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "agnews.train", "-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
        "model=minilm", "model.tiny=true", "trainer=debug", "logger=csv", "callbacks.progress_bar=null",
        f"data.data_dir={data}", "data.source=csv", "data.val_size=8", "data.max_length=16", "torch_threads=1",
        "scoring.export_model=false", f"hydra.sweep.dir={sweep_dir}", "seed=1,2",
    ]
    # cwd outside the checkout: only installed Hydra plugins are scanned (as for an installed package).
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    spans = []
    for job in ("0", "1"):
        manifest = json.loads((sweep_dir / job / "run.json").read_text())
        spans.append((datetime.fromisoformat(manifest["started_at"]), datetime.fromisoformat(manifest["finished_at"])))
        assert (sweep_dir / job / "metrics.json").is_file()
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start < b_end and b_start < a_end, f"jobs ran one after the other: {spans}"
