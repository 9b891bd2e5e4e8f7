"""Scale-out: 2-process CPU DDP (trainer=ddp_cpu) against the equivalent single-process run, and FSDP composition."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LABELS, synthetic_rows, write_ag_news_csv

# Equal within tolerance: 2 ranks x batch 8 see exactly the 16 examples the single process sees per step (no length
# grouping, so the global batch is the same slice of the same permutation), dropout is off and DDP averages the two
# 8-example mean gradients = the 16-example mean gradient. What remains is float summation order (all-reduce of two
# partial sums vs one sum), ~1e-7 relative per step, compounded over 16 Adam steps: observed <= 1e-6 on probabilities.
PROB_TOLERANCE = 1e-4


def _common(data: Path) -> list[str]:
    return [
        "model=minilm", "model.tiny=true", "logger=csv", "callbacks.progress_bar=null", "callbacks.early_stopping=null",
        f"data.data_dir={data}", "data.source=csv", "data.val_size=41", "data.train_size=128", "data.max_length=32",
        "data.eval_batch_size=8", "data.group_by_length=false", "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1", "trainer.max_epochs=2", "strategy.optimizer.lr=1e-2", "torch_threads=1",
        "+model.tiny_config.hidden_dropout_prob=0.0", "+model.tiny_config.attention_probs_dropout_prob=0.0",
    ]


def _run(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    run_dir = tmp_path / name
    home = tmp_path / "home"  # no W&B key anywhere: logger=wandb runs offline
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"},
        "HOME": str(home), "WANDB_CONFIG_DIR": str(home / "wandb-config"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_DATA_DIR": str(home / "wandb-data"), "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-m", "agnews.train", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _files(run_dir: Path) -> set[str]:
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    return {f for f in files if not f.startswith("wandb/")}


def test_ddp_cpu_two_processes_match_single_process(tmp_path):
    """trainer=ddp_cpu (2 spawned gloo ranks, batch 8 each) vs trainer=cpu (batch 16): same metrics and predictions
    within PROB_TOLERANCE, one complete prediction set, artifacts written once, CSV rows not doubled."""
    data = tmp_path / "data"
    write_ag_news_csv(data / "train.csv", synthetic_rows(44, seed=1))  # 176 rows: 41 val + 128 train (+7 unused)
    write_ag_news_csv(data / "test.csv", synthetic_rows(9, seed=2, empty_title_every=0))  # 36 rows
    (data / "classes.txt").write_text("\n".join(LABELS) + "\n")

    single = _run(tmp_path, "single", [*_common(data), "trainer=cpu", "trainer.precision=32-true", "data.batch_size=16"])
    ddp = _run(tmp_path, "ddp", [*_common(data), "trainer=ddp_cpu", "data.batch_size=8", "logger=[csv,wandb]"])

    # Same artifact set, nothing extra (no per-rank copies, no leftover hand-over file).
    assert _files(ddp) == _files(single), _files(ddp) ^ _files(single)
    assert not (ddp / ".predictions.pt").exists()
    ddp_manifest = json.loads((ddp / "run.json").read_text())
    single_manifest = json.loads((single / "run.json").read_text())
    assert ddp_manifest["global_step"] == single_manifest["global_step"] == 16
    assert ddp_manifest["epochs"] == single_manifest["epochs"] == 2
    assert ddp_manifest["artifacts"]["last_checkpoint"] == str(ddp / "checkpoints" / "last.ckpt")
    assert ddp_manifest["artifacts"]["best_checkpoint"] == str(ddp / "checkpoints" / "best.ckpt")

    # Every example predicted exactly once (val: 41 rows, sharded 21 + 20 with one padding duplicate removed).
    ddp_metrics = json.loads((ddp / "metrics.json").read_text())
    single_metrics = json.loads((single / "metrics.json").read_text())
    for split, size in (("val", 41), ("test", 36)):
        ddp_rows = _rows(ddp / "predictions" / f"{split}.csv")
        single_rows = _rows(single / "predictions" / f"{split}.csv")
        assert [r["id"] for r in ddp_rows] == [r["id"] for r in single_rows]
        assert len({r["id"] for r in ddp_rows}) == size == ddp_metrics[split]["num_examples"]
        assert sum(map(sum, ddp_metrics[split]["confusion_matrix"])) == size
        diffs = [
            abs(float(a[f"prob_{n}"]) - float(b[f"prob_{n}"])) for a, b in zip(ddp_rows, single_rows) for n in LABELS
        ]
        assert max(diffs) <= PROB_TOLERANCE, max(diffs)
        assert ddp_metrics[split]["accuracy"] == pytest.approx(single_metrics[split]["accuracy"], abs=1 / size)
    # The model learned something between the two compared runs (identical untrained models would prove nothing).
    assert single_metrics["test"]["accuracy"] > 0.5

    # Logging not duplicated: one row per optimizer step, one validation row per epoch, one final row (the final
    # scores reuse the names val/accuracy, test/accuracy: 2 validations + 1 final row carry val/accuracy).
    ddp_log, single_log = _rows(ddp / "csv" / "metrics.csv"), _rows(single / "csv" / "metrics.csv")
    assert len(ddp_log) == len(single_log)
    for column, count in (("train/loss", 16), ("val/loss", 2), ("val/accuracy", 3), ("test/accuracy", 1)):
        assert sum(1 for r in ddp_log if r.get(column)) == count, column
    # W&B (logger=[csv,wandb] on the DDP run only): one run, one history row per step, the final metrics once.
    from tests.test_tracking import summarize_offline_run

    (wandb_run,) = (ddp / "wandb").glob("offline-run-*")
    recorded = summarize_offline_run(wandb_run)
    assert sum(1 for row in recorded["history"] if "train/loss" in row) == 16
    assert sum(1 for row in recorded["history"] if "val/loss" in row) == 2
    assert sum(1 for row in recorded["history"] if "val/accuracy" in row) == 3
    assert recorded["summary"]["test/accuracy"] == pytest.approx(ddp_metrics["test"]["accuracy"])
    # Validation runs on the full split on each rank and is synced: the epoch metrics match the single process.
    for a, b in zip([r for r in ddp_log if r.get("val/loss")], [r for r in single_log if r.get("val/loss")]):
        assert float(a["val/loss"]) == pytest.approx(float(b["val/loss"]), abs=1e-4)
        assert float(a["val/accuracy"]) == pytest.approx(float(b["val/accuracy"]))


def test_sharded_eval_sampler_covers_every_example_once(monkeypatch):
    """The per-rank shards (as each rank of a world of 3 draws them; the real 2-rank run is the slow test above)
    partition the split with equal batch counts, and the merge restores one row per example in index order."""
    import numpy as np

    import agnews.distributed as dist

    lengths = np.random.default_rng(0).integers(3, 40, size=23)
    sampler = dist.ShardedEvalBatchSampler(lengths, batch_size=4)
    assert sorted(i for batch in sampler for i in batch) == list(range(23))  # no process group: everything
    shards = []
    for rank in range(3):
        monkeypatch.setattr(dist, "_rank_and_world", lambda rank=rank: (rank, 3))
        shards.append([i for batch in sampler for i in batch])
        assert len(sampler) == 2  # ceil(ceil(23 / 3) / 4): the same on every rank
    assert {len(s) for s in shards} == {8}
    flat = [i for s in shards for i in s]
    assert sorted(set(flat)) == list(range(23)) and len(flat) == 24  # one padding duplicate, removed by the merge
    merged = dist._merge(
        [
            {"index": torch_tensor(s), "labels": torch_tensor(s), "probs": torch_tensor(s).float()[:, None]}
            for s in shards
        ]
    )
    assert merged["index"].tolist() == list(range(23)) and merged["labels"].tolist() == list(range(23))


def torch_tensor(values):
    import torch

    return torch.tensor(values, dtype=torch.long)


def test_ddp_cpu_and_fsdp_configs_compose(compose_train_cfg):
    from hydra.utils import instantiate

    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", "trainer=ddp_cpu"])
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 2
    assert cfg.trainer.strategy.start_method == "spawn" and cfg.trainer.strategy.process_group_backend == "gloo"
    assert cfg.trainer.use_distributed_sampler is False

    cfg = compose_train_cfg(["model=deberta", "model.size=large", "trainer=fsdp", "trainer.num_nodes=2"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.num_nodes == 2
    strategy = instantiate(cfg.trainer.strategy)
    from lightning.pytorch.strategies import FSDPStrategy

    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    # The policy wraps each encoder layer of a real (tiny) model and nothing else.
    from agnews.models.factory import load_classifier

    bundle = load_classifier(
        family="minilm", pretrained="unused", tiny=True, label_names=LABELS,
        tiny_config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64},
    )
    wrapped = [name for name, module in bundle.model.named_modules() if policy(module=module, recurse=False, nonwrapped_numel=0)]
    assert wrapped == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
