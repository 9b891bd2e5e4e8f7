"""Multi-stage training (``python -m agnews.train stages=[...]``) with tiny models on synthetic texts.

- A chain mlm -> train -> train: every stage starts from the previous stage's weights (the last stage runs at lr 0, so
  its model must equal stage 2's tensor for tensor, classifier head included; stage 2's encoder is the adapted one).
  Earlier stages are finished runs under ``stages/<i>-<name>/``; ``stages.json`` and ``run.json`` record all of them;
  the top run is a normal run (the Predictor loads it).
- A failing stage fails the whole run with an error naming the stage; ``stages.json`` records why; no ``run.json``.
- Bad input (unknown stage, last stage not a training stage, malformed entries, ``ckpt_path``) fails before anything
  runs, with a clear error.
- The CLI: one command, as a multirun of two jobs (each job chains its own stages in its own directory).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agnews.errors import ConfigError
from agnews.runs import load_run
from agnews.stages import StageFailed, parse_stages, run_stages
from tests.conftest import REPO_ROOT, TINY, small_data_overrides

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def base_overrides(data: Path, cache: Path) -> list[str]:
    return [*TINY, *small_data_overrides(data), "trainer.max_epochs=1", "pretrain.data.val_texts=20",
            f"paths.cache_dir={cache}", *QUIET]


def chain(compose_train_cfg, tmp_path: Path, data: Path, stages: str, *extra: str) -> tuple[Path, dict]:
    base = [*base_overrides(data, tmp_path / "cache"), *extra]
    cfg = compose_train_cfg([*base, f"stages={stages}"])
    metrics = run_stages(cfg, base_overrides=base)
    return Path(cfg.paths.output_dir), metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.conftest import LABELS, synthetic_rows, write_ag_news_csv

    folder = tmp_path_factory.mktemp("stages_data")
    write_ag_news_csv(folder / "train.csv", synthetic_rows(30, seed=1))
    write_ag_news_csv(folder / "test.csv", synthetic_rows(6, seed=2, empty_title_every=0))
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def test_each_stage_starts_from_the_previous_one(compose_train_cfg, tmp_path, data):
    top, metrics = chain(
        compose_train_cfg, tmp_path, data,
        "[mlm,{name:warmup,kind:train,overrides:['strategy.optimizer.lr=5e-3']},"
        "{name:frozen,kind:train,overrides:['strategy.optimizer.lr=0.0']}]",
    )
    mlm, warm = top / "stages" / "1-mlm", top / "stages" / "2-warmup"
    assert load_run(mlm).task == "pretrain" and load_run(warm).task == "train"
    mlm_w, warm_w, final_w = (load_file(str(p / "model" / "model.safetensors")) for p in (mlm, warm, top))

    # Stage 3 trained at lr 0: its exported model is stage 2's, every tensor, the classifier head included.
    assert set(final_w) == set(warm_w)
    for key in final_w:
        assert torch.equal(final_w[key], warm_w[key]), key
    # Stage 2 started from stage 1's adapted encoder (not a fresh random one): it trained away from it a little.
    encoder = [k for k in mlm_w if k.startswith("bert.encoder.")]
    distance = max((warm_w[k] - mlm_w[k]).abs().max().item() for k in encoder)
    assert 0 < distance < 0.1

    # The record: stages.json and run.json's stages entry agree, one entry per stage, all finished.
    record = json.loads((top / "stages.json").read_text())
    manifest = load_run(top).manifest
    assert manifest["stages"]["stages"] == record["stages"]
    stages = record["stages"]
    assert [(s["name"], s["kind"], s["status"], s["run_dir"]) for s in stages] == [
        ("mlm", "mlm", "finished", "stages/1-mlm"),
        ("warmup", "train", "finished", "stages/2-warmup"),
        ("frozen", "train", "finished", "."),
    ]
    assert [s["starts_from"] for s in stages] == [None, "stages/1-mlm", "stages/2-warmup"]
    assert stages[2]["overrides"] == ["strategy.optimizer.lr=0.0"]
    assert stages[1]["command"][-2:] == [f"model.pretrained='{mlm}'", "model.tiny=false"]
    assert stages[0]["metrics"]["val"]["mlm_loss"] == load_run(mlm).metrics["val"]["mlm_loss"]
    assert stages[2]["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"] == load_run(top).metrics[
        "test"]["accuracy"]

    # The top run is a normal run: the Predictor serves it.
    from agnews.inference import Predictor

    probs = Predictor.from_path(top).predict_proba(["Striker scores in the league match"])
    assert len(probs[0]) == 4 and abs(sum(probs[0]) - 1) < 1e-5


def test_the_mlm_stage_adapts_the_encoder_the_next_stage_loads(compose_train_cfg, tmp_path, data):
    """mlm -> train at lr 0: the classifier's encoder is exactly the masked-LM run's."""
    top, _ = chain(compose_train_cfg, tmp_path, data, "[mlm,{name:full,overrides:['strategy.optimizer.lr=0.0']}]")
    mlm_w = load_file(str(top / "stages" / "1-mlm" / "model" / "model.safetensors"))
    final_w = load_file(str(top / "model" / "model.safetensors"))
    shared = [k for k in mlm_w if k.startswith(("bert.encoder.", "bert.embeddings."))]
    assert shared and all(torch.equal(final_w[k], mlm_w[k]) for k in shared)
    # Not a coincidence of seeds: a fresh tiny classifier built as the stage would without chaining differs.
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(42)
    fresh = instantiate(compose_train_cfg(base_overrides(data, tmp_path / "cache")).model,
                        label_names=["a", "b", "c", "d"]).model.state_dict()
    assert any(not torch.equal(fresh[k], mlm_w[k]) for k in shared)


def test_the_documented_chain_mlm_curriculum_full(compose_train_cfg, tmp_path, data):
    """The issue's example: the curriculum stage runs data/curriculum=length (its report reaches the stage's manifest
    through the pipeline's data section) from the adapted encoder; the full stage then trains on from it."""
    top, _ = chain(compose_train_cfg, tmp_path, data, "[mlm,curriculum,full]")
    record = json.loads((top / "stages.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in record] == [
        ("mlm", "finished"), ("curriculum", "finished"), ("full", "finished")]
    curriculum = load_run(top / "stages" / "2-curriculum")
    assert curriculum.manifest["data"]["curriculum"]["difficulty"] == "length"
    assert curriculum.config["model"]["pretrained"] == str(top / "stages" / "1-mlm")
    assert load_run(top).config["model"]["pretrained"] == str(top / "stages" / "2-curriculum")
    assert "curriculum" not in load_run(top).manifest["data"]  # the full stage: the plain sampler


def test_a_failing_stage_fails_the_run_and_says_which(compose_train_cfg, tmp_path, data):
    with pytest.raises(StageFailed, match=r"stage 2/3 'broken' \(train\) failed: ConfigError: data.max_length=4096") as info:
        chain(compose_train_cfg, tmp_path, data,
              "[mlm,{name:broken,kind:train,overrides:['data.max_length=4096']},full]")
    assert isinstance(info.value.__cause__, ConfigError)
    top = tmp_path / "run"
    record = json.loads((top / "stages.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["finished", "failed", "pending"]
    assert "exceeds" in record["stages"][1]["error"]
    assert not (top / "run.json").exists()  # the run did not finish
    load_run(top / "stages" / "1-mlm")  # the stage before it did, and stays


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("[mlm,nosuchstage]", r"unknown stage 'nosuchstage': no conf/stage/nosuchstage.yaml \(available: .*full.*mlm"),
        ("[full,mlm]", "the last stage \\('mlm'\\) is a 'mlm' stage"),
        ("[{name:x,kind:finetune}]", "kind must be one of \\['mlm', 'train'\\]"),
        ("[{kind:train}]", "a stage mapping has a string 'name'"),
        ("[{name:x,kind:train,overrides:oops}]", "overrides must be a list"),
        ("[3]", "expected a stage name or a mapping"),
    ],
)
def test_bad_stage_lists_are_refused_before_anything_runs(compose_train_cfg, tmp_path, stages, message):
    cfg = compose_train_cfg([f"stages={stages}"])
    with pytest.raises(ConfigError, match=message):
        run_stages(cfg, base_overrides=[])
    assert not (tmp_path / "run").exists()


def test_ckpt_path_is_refused_with_stages(compose_train_cfg, tmp_path):
    cfg = compose_train_cfg(["stages=[mlm,full]", "ckpt_path=/x/last.ckpt"])
    with pytest.raises(ConfigError, match="ckpt_path cannot resume a multi-stage run"):
        run_stages(cfg, base_overrides=[])


def test_stage_files_name_their_kind_and_overrides():
    from agnews.stages import _hydra

    with _hydra():
        stages = parse_stages(["mlm", "curriculum", {"name": "full", "overrides": ["trainer.max_epochs=2"]}])
    assert [(s.name, s.kind, s.overrides) for s in stages] == [
        ("mlm", "mlm", []), ("curriculum", "train", ["data/curriculum=length"]), ("full", "train",
                                                                                   ["trainer.max_epochs=2"]),
    ]


def test_cli_multirun_chains_stages_per_job(tmp_path, data):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "agnews.train", "-m", *base_overrides(data, tmp_path / "cache"), "stages=[mlm,full]",
         "seed=1,2", f"hydra.sweep.dir={sweep}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, seed in (("0", 1), ("1", 2)):
        run = load_run(sweep / job)
        assert run.config["seed"] == seed and run.config["stages"] == []
        record = json.loads((sweep / job / "stages.json").read_text())
        assert [s["status"] for s in record["stages"]] == ["finished", "finished"]
        assert f"seed={seed}" in record["command_overrides"]
        assert load_run(sweep / job / "stages" / "1-mlm").config["seed"] == seed
    assert (sweep / "summary.csv").is_file()
