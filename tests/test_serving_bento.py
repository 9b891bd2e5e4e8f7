"""``bentoml build -f serving/bentofile.yaml`` makes a Bento of the service that references the run's model, imported
into BentoML's model store with the same id and checksums."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from agnews.serving.identity import model_card

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_bentoml_build_packs_the_service_and_the_model(tiny_run_factory, tmp_path):
    run = tiny_run_factory("minilm")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    imported = subprocess.run(
        [sys.executable, "-m", "agnews.serving.bento_model", f"run={run}"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    tag = imported.stdout.strip().splitlines()[-1]
    assert tag.startswith("agnews-classifier:")

    built = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "serving/bentofile.yaml", "--arg", f"bento_model={tag}", "."],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    bentos = list((tmp_path / "bentoml" / "bentos" / "agnews_classifier").glob("*/bento.yaml"))
    assert len(bentos) == 1
    bento_dir = bentos[0].parent
    manifest = yaml.safe_load(bentos[0].read_text())
    assert manifest["args"] == {"bento_model": tag}
    assert [m["tag"] for m in manifest["services"][0]["models"]] == [tag]
    assert (bento_dir / "src" / "agnews" / "serving" / "service.py").is_file()
    assert (bento_dir / "src" / "proto" / "agnews" / "v1" / "classifier.proto").is_file()
    assert not (bento_dir / "src" / "tests").exists()

    # the model the Bento references (packed by `bentoml export` / `containerize`) is the served model itself: same run
    # id, same content version
    name, version = tag.split(":")
    packed = tmp_path / "bentoml" / "models" / name / version / run.name / "model"
    original = model_card(run / "model", [], None, "torch")
    copy = model_card(packed, [], None, "torch")
    assert (copy.id, copy.version) == (original.id, original.version)
