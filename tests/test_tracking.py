"""logger=wandb (offline, read back from the run's .wandb file), mode resolution, and several loggers at once."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LABELS

TINY = ["model=minilm", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", "torch_threads=1"]


def _small_data(folder) -> list[str]:
    return [
        f"data.data_dir={folder}", "data.source=csv", "data.val_size=12", "data.max_length=16", "data.batch_size=16",
        "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "callbacks.progress_bar=null",
        "trainer.max_epochs=1",
    ]


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No API key anywhere (fresh HOME without .netrc), W&B's own folders inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "NETRC", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    values = {
        "HOME": str(home),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"),
        "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_DATA_DIR": str(home / "wandb-data"),
        "HF_HUB_OFFLINE": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ}


def read_wandb_file(path: Path) -> list:
    """Records of a run's ``.wandb`` file (W&B's LevelDB-style log: 7-byte file header, 32 KiB blocks, each record
    ``crc32 | length (u16) | type (full/first/middle/last)``), parsed with W&B's own protobuf definitions."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", "not a W&B transaction log"
    block, header = 32768, 7
    pos, pending, records = 7, b"", []
    while pos + header <= len(raw):
        left = block - pos % block
        if left < header:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + header])
        pos += header
        if kind == 0 and length == 0:
            pos += left - header
            continue
        if pos + length > len(raw):
            break  # a block still being written
        chunk = raw[pos : pos + length]
        pos += length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def summarize_offline_run(run_dir: Path) -> dict:
    """run metadata, the config, every history row and the final summary of one offline run directory."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    out = {"run": None, "config": {}, "history": [], "summary": {}}
    # wandb.finish() returns once the run is closed; the W&B service writes the log's last block asynchronously.
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in read_wandb_file(wandb_file)):
        assert time.monotonic() < deadline, f"{wandb_file} never got its exit record (run not finished?)"
        time.sleep(0.2)

    def key(item):
        return item.key or "/".join(item.nested_key)

    for record in read_wandb_file(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = type(record.run)()
            out["run"].CopyFrom(record.run)
            out["config"].update({key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
    return out


def _read_predictions(path: Path) -> list[dict]:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        return [{"id": r["id"], "label": int(r["label"]), "pred": int(r["pred"])} for r in csv.DictReader(handle)]


def _summary_node(summary: dict, prefix: str) -> dict:
    """A logged media object's summary entry (W&B stores it as nested keys ``<prefix>/<field>``)."""
    node = {key[len(prefix) + 1 :]: value for key, value in summary.items() if key.startswith(prefix + "/")}
    assert node, f"{prefix} was not logged"
    return node


# ---- mode resolution -------------------------------------------------------------------------------------------
def test_wandb_mode_from_key_netrc_env_and_override(tmp_path):
    from agnews.errors import ConfigError
    from agnews.tracking import resolve_mode

    home = tmp_path / "h"
    home.mkdir()
    bare = {"HOME": str(home)}
    assert resolve_mode("auto", bare) == "offline"
    assert resolve_mode("auto", {**bare, "WANDB_API_KEY": "x" * 40}) == "online"
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_mode("auto", bare) == "online"
    # A key for another host (a self-hosted server configured elsewhere) does not count for the default host.
    assert resolve_mode("auto", {**bare, "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"
    assert resolve_mode("auto", {**bare, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_mode("auto", {**bare, "WANDB_MODE": "dryrun"}) == "offline"
    # An explicit config value wins over the environment.
    assert resolve_mode("offline", {**bare, "WANDB_API_KEY": "x" * 40}) == "offline"
    assert resolve_mode("online", {"HOME": str(tmp_path)}) == "online"
    with pytest.raises(ConfigError):
        resolve_mode("sometimes", bare)
    with pytest.raises(ConfigError):
        resolve_mode("auto", {**bare, "WANDB_MODE": "bogus"})


def test_logger_list_composes(compose_train_cfg):
    cfg = compose_train_cfg([*TINY, "logger=[csv,wandb]", "tags=[baseline,tiny]"])
    assert set(cfg.logger) == {"csv", "wandb"}
    assert cfg.logger.wandb.tags == ["baseline", "tiny"] and cfg.logger.wandb.job_type == "train"
    assert cfg.logger.wandb.mode == "auto" and cfg.logger.wandb.log_exported_model is False
    cfg = compose_train_cfg([*TINY, "logger=[csv,tensorboard,wandb]"])
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}


# ---- real runs -------------------------------------------------------------------------------------------------
def test_wandb_offline_run_records_config_metrics_and_tables(tmp_path, make_ag_news_dir, compose_train_cfg, wandb_env):
    """logger=[csv,wandb] with no API key: an offline W&B run holding the config, training metrics, final metrics,
    per-class tables and confusion matrices (plus the model artifact when asked), and the CSV log next to it."""
    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=10, test_per_class=3)
    cfg = compose_train_cfg(
        [*TINY, *_small_data(data), "logger=[csv,wandb]", "tags=[smoke,ci]", "logger.wandb.log_exported_model=true"]
    )
    metrics = train(cfg)
    run_root = tmp_path / "run"
    runs = sorted((run_root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = summarize_offline_run(runs[0])

    assert run["run"].project == "agnews" and run["run"].job_type == "train"
    assert list(run["run"].tags) == ["smoke", "ci"]
    assert run["run"].run_group == "run", "single runs are grouped by their run directory's name"
    # The resolved config (logged once, as nested dicts).
    assert run["config"]["data"]["max_length"] == 16
    assert run["config"]["model"]["family"] == "minilm" and run["config"]["seed"] == 42
    # Training metrics stepped by Lightning, final metrics in the summary matching metrics.json.
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(losses) == 2  # 28 training rows / batch 16
    assert any("val/accuracy" in row for row in run["history"])
    for split, size in (("val", 12), ("test", 12)):
        assert run["summary"][f"{split}/accuracy"] == pytest.approx(metrics[split]["accuracy"])
        assert run["summary"][f"{split}/num_examples"] == size
        table_meta = _summary_node(run["summary"], f"{split}/per_class")
        assert table_meta["_type"] == "table-file" and table_meta["nrows"] == len(LABELS)
        table = json.loads((runs[0] / "files" / table_meta["path"]).read_text())
        assert [row[0] for row in table["data"]] == LABELS
        assert [row[4] for row in table["data"]] == [metrics[split]["per_class"][n]["support"] for n in LABELS]
        confusion = _summary_node(run["summary"], f"{split}/confusion_matrix_table")
        cells = json.loads((runs[0] / "files" / confusion["path"]).read_text())["data"]
        counts = {(row[0], row[1]): row[2] for row in cells}
        expected = metrics[split]["confusion_matrix"]
        assert all(counts[(LABELS[i], LABELS[j])] == expected[i][j] for i in range(4) for j in range(4))
        # Calibration and mistakes, as the evaluation report shows them: a reliability diagram (a real PNG), ECE/MCE,
        # and the most confident mistakes with their texts, matching the stored predictions.
        image = _summary_node(run["summary"], f"{split}/reliability_diagram")
        assert image["_type"] == "image-file" and image["width"] > 100 and image["height"] > 100
        assert (runs[0] / "files" / image["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 0 <= run["summary"][f"{split}/ece"] <= run["summary"][f"{split}/mce"] <= 1
        stored = _read_predictions(run_root / "predictions" / f"{split}.csv")
        wrong = [r for r in stored if r["label"] != r["pred"]]
        mistakes = _summary_node(run["summary"], f"{split}/confident_mistakes")
        rows = json.loads((runs[0] / "files" / mistakes["path"]).read_text())
        assert rows["columns"] == ["id", "gold", "predicted", "confidence", "p(gold)", "text"]
        assert len(rows["data"]) == min(20, len(wrong))
        confidences = [row[3] for row in rows["data"]]
        assert confidences == sorted(confidences, reverse=True)
        by_id = {r["id"]: r for r in stored}
        for row in rows["data"]:
            assert by_id[row[0]]["label"] == LABELS.index(row[1]) and by_id[row[0]]["pred"] == LABELS.index(row[2])
            assert row[5].strip(), "the mistake's text is in the table"
    # The exported model went in as an artifact.
    artifacts = [r for r in read_wandb_file(next(runs[0].glob("run-*.wandb"))) if r.WhichOneof("record_type") == "artifact"]
    model_artifacts = [r.artifact for r in artifacts if r.artifact.type == "model"]
    assert len(model_artifacts) == 1
    assert "model.safetensors" in {entry.path for entry in model_artifacts[0].manifest.contents}
    # The CSV logger ran alongside.
    assert (run_root / "csv" / "metrics.csv").is_file()
    # The run was finished (an exit record), so a next job cannot attach to it.
    import wandb

    assert wandb.run is None


def test_wandb_multirun_gives_one_run_per_job_in_one_group(tmp_path, make_ag_news_dir, wandb_env):
    """Two jobs of a -m run (basic launcher: same process) produce two W&B runs, grouped by the sweep."""
    data = make_ag_news_dir(train_per_class=6, test_per_class=2)
    sweep_dir = tmp_path / "multirun" / "sweep-xyz"
    command = [
        sys.executable, "-m", "agnews.train", "-m", *TINY, *_small_data(data), "logger=wandb",
        "data.val_size=8", "scoring.export_model=false", f"hydra.sweep.dir={sweep_dir}", "seed=1,2",
    ]
    env = {**wandb_env, "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {job: sorted((sweep_dir / job / "wandb").glob("offline-run-*")) for job in ("0", "1")}
    assert all(len(found) == 1 for found in runs.values()), runs
    summaries = {job: summarize_offline_run(found[0]) for job, found in runs.items()}
    ids = {s["run"].run_id for s in summaries.values()}
    assert len(ids) == 2, "each job must get its own W&B run"
    assert {s["run"].run_group for s in summaries.values()} == {"sweep-xyz"}
    assert summaries["0"]["run"].display_name.startswith("0-") and summaries["1"]["run"].display_name.startswith("1-")
    assert summaries["0"]["config"]["seed"] == 1 and summaries["1"]["config"]["seed"] == 2
    for job in ("0", "1"):
        assert "test/accuracy" in summaries[job]["summary"]
    # At the end of the multirun, one more run of the same group holds the sweep summary (summary.csv) as a table.
    (summary_run,) = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    summary = summarize_offline_run(summary_run)
    assert summary["run"].run_group == "sweep-xyz" and summary["run"].job_type == "sweep-summary"
    assert summary["summary"]["sweep/jobs"] == 2 and summary["summary"]["sweep/ok"] == 2
    meta = _summary_node(summary["summary"], "sweep/summary")
    table = json.loads((summary_run / "files" / meta["path"]).read_text())
    assert table["columns"][:3] == ["job", "overrides", "status"] and "test/accuracy" in table["columns"]
    assert [row[0] for row in table["data"]] == ["0", "1"]
    column = table["columns"].index("test/accuracy")
    for row, job in zip(table["data"], ("0", "1")):
        assert row[column] == pytest.approx(summaries[job]["summary"]["test/accuracy"], abs=1e-4)
    assert _summary_node(summary["summary"], "sweep/summary_by_config")["nrows"] == 1  # seeds of one configuration


def test_csv_and_tensorboard_loggers_together(tmp_path, make_ag_news_dir, compose_train_cfg):
    """logger=[csv,tensorboard] (same as logger=many): both write their logs, final metrics included."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agnews.pipeline import train

    data = make_ag_news_dir(train_per_class=10, test_per_class=3)
    cfg = compose_train_cfg([*TINY, *_small_data(data), "logger=[csv,tensorboard]", "scoring.export_model=false"])
    assert set(cfg.logger) == {"csv", "tensorboard"}
    metrics = train(cfg)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(tmp_path / "run" / "tensorboard"))  # all event files of the run
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "val/accuracy", "test/accuracy"} <= scalars
    (final,) = accumulator.Scalars("test/accuracy")
    assert final.value == pytest.approx(metrics["test"]["accuracy"])
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as handle:
        assert sum(1 for row in __import__("csv").DictReader(handle) if row.get("test/accuracy")) == 1


# ---- the evaluation report on W&B ---------------------------------------------------------------------------------
def test_evaluation_report_logged_to_wandb_offline(tmp_path, tiny_run_factory, wandb_env):
    """The report of a tiny run (metrics, calibration, errors, attributions) logged by evaluation_to_wandb into an
    offline run of the evaluated run's group: numbers in the summary, every figure as an image, the per-class and
    confident-mistakes tables, and the attribution heat-maps as HTML."""
    pytest.importorskip("captum", reason="the report extra (pip install -e '.[report]') provides captum")
    from agnews.evaluation.attribution import attribution_section
    from agnews.evaluation.calibration import calibration_section
    from agnews.evaluation.error_analysis import errors_section
    from agnews.evaluation.report import write_report
    from agnews.evaluation.sections import metrics_section
    from agnews.evaluation.source import EvaluationSource
    from agnews.tracking.evaluation import evaluation_to_wandb

    run_dir = tiny_run_factory("minilm")
    source = EvaluationSource.open(run_dir)
    sections = [
        metrics_section(source), calibration_section(source), errors_section(source, k=5),
        attribution_section(source, sample_size=4, seed=0, top_k=2, n_steps=8, shap_max_evals=40, random_draws=2),
    ]
    report = tmp_path / "evaluation"
    write_report(sections, report, "tiny")
    result = evaluation_to_wandb(report, run_dir, {"mode": "auto", "tags": ["eval"]}, sections=sections)
    assert result["mode"] == "offline" and result["group"] == run_dir.name

    (offline,) = sorted((report / "wandb").glob("offline-run-*"))
    logged = summarize_offline_run(offline)
    assert logged["run"].job_type == "evaluate" and logged["run"].run_group == run_dir.name
    assert list(logged["run"].tags) == ["eval"]
    evaluation = json.loads((report / "evaluation.json").read_text())
    s = logged["summary"]
    assert s["evaluation/metrics/accuracy"] == pytest.approx(evaluation["metrics"]["accuracy"])
    assert s["evaluation/calibration/before/ece"] == pytest.approx(evaluation["calibration"]["before"]["ece"])
    assert s["evaluation/calibration/temperature"] == pytest.approx(evaluation["calibration"]["temperature"])
    for name in ("confusion_matrix", "per_class", "reliability_before", "reliability_after", "attribution_heatmaps"):
        image = _summary_node(s, f"evaluation/figures/{name}")
        logged_png = (offline / "files" / image["path"]).read_bytes()
        assert image["_type"] == "image-file" and logged_png[:4] == b"\x89PNG" and len(logged_png) > 1000
    per_class = json.loads((offline / "files" / _summary_node(s, "evaluation/per_class")["path"]).read_text())
    assert [row[0] for row in per_class["data"]] == LABELS
    mistakes = json.loads((offline / "files" / _summary_node(s, "evaluation/confident_mistakes")["path"]).read_text())
    assert [row[0] for row in mistakes["data"]] == [m["id"] for m in evaluation["errors"]["most_confident_mistakes"]]
    heatmaps = _summary_node(s, "evaluation/attribution_heatmaps")
    assert heatmaps["_type"] == "html-file"
    page = (offline / "files" / heatmaps["path"]).read_text()
    assert 'class="attr"' in page and "captum" in page  # the token spans of the heat-maps
    assert _summary_node(s, "evaluation/report")["_type"] == "html-file"


def test_evaluation_to_wandb_refuses_a_folder_without_a_report(tmp_path, wandb_env):
    from agnews.tracking.evaluation import log_report_to_wandb

    with pytest.raises(FileNotFoundError, match="evaluation.json"):
        log_report_to_wandb(object(), tmp_path)


def test_confident_mistakes_order_and_shape_errors():
    import numpy as np

    from agnews.tracking.evaluation import confident_mistakes

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    rows = confident_mistakes([1, 1, 1, 0], probs, ["a", "b"], texts=["t0", "t1", "t2", "t3"], ids=list("wxyz"))
    assert [r[0] for r in rows] == ["w", "z", "y"]  # wrong ones only, most confident first
    assert rows[0][1:] == ["b", "a", 0.9, 0.1, "t0"]
    assert confident_mistakes([1, 1, 1, 0], probs, ["a", "b"], k=1)[0][0] == "0"
    with pytest.raises(ValueError, match="probs"):
        confident_mistakes([0, 1], probs, ["a", "b"])


def test_the_wandb_table_and_the_report_rank_mistakes_alike_ties_included():
    import numpy as np

    from agnews.evaluation.error_analysis import error_analysis
    from agnews.tracking.evaluation import confident_mistakes

    probs = np.array([[0.7, 0.3], [0.3, 0.7], [0.7, 0.3], [0.9, 0.1], [0.3, 0.7]])
    labels, ids, texts = [1, 0, 1, 1, 1], ["e", "d", "c", "b", "a"], list("01234")
    table = [row[0] for row in confident_mistakes(labels, probs, ["a", "b"], texts, ids)]
    report = [m["id"] for m in error_analysis(ids, labels, probs, texts, ["a", "b"])["most_confident_mistakes"]]
    assert table == report == ["b", "c", "d", "e"]  # 0.9 first, then the three 0.7 ties by id


def test_evaluate_cli_logs_the_report_with_wandb_enabled(tmp_path, tiny_run_factory, wandb_env):
    """python -m agnews.evaluate ... wandb.enabled=true: the written report also lands in an offline W&B run."""
    run_dir = tiny_run_factory("minilm")
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "agnews.evaluate", f"run={run_dir}", f"output_dir={out}", "robustness.enabled=false",
        "attack.enabled=false", "attribution.enabled=false", "wandb.enabled=true", "wandb.tags=[cli]",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = subprocess.run(command, env=wandb_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"in group {run_dir.name}" in result.stdout
    (offline,) = sorted((out / "wandb").glob("offline-run-*"))
    logged = summarize_offline_run(offline)
    assert logged["run"].job_type == "evaluate" and list(logged["run"].tags) == ["cli"]
    assert logged["config"]["run"] == str(run_dir) and logged["config"]["output_dir"] == str(out)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert logged["summary"]["evaluation/metrics/accuracy"] == pytest.approx(evaluation["metrics"]["accuracy"])
    assert _summary_node(logged["summary"], "evaluation/figures/reliability_after")["_type"] == "image-file"
    assert _summary_node(logged["summary"], "evaluation/confident_mistakes")["_type"] == "table-file"
