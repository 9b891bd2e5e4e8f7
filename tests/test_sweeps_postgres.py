"""Optuna sweeps on a real PostgreSQL server (a throwaway cluster, tests/pg_server.py): storage errors, stale trials
marked FAIL exactly once and queued again (also on the journal file and SQLite), and two real worker processes of
one study: no trial lost or run twice, and a SIGKILLed worker's trial failed and re-run by the other worker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna  # the sweeps extra: a missing install must fail, not skip
import psycopg  # noqa: F401  (the PostgreSQL driver of the sweeps extra: its absence is a failure too)
import pytest

from agnews.errors import ConfigError
from agnews.sweeps.heartbeat import HEARTBEAT_ATTR, Heartbeat, RetryStaleTrial, fail_stale_trials
from agnews.sweeps.storage import make_storage
from tests.conftest import REPO_ROOT
from tests.pg_server import PostgresServer, free_port
from tests.test_sweeps import _env, _optuna_args, _popen, _states

COMPLETE, FAIL, RUNNING, WAITING = (optuna.trial.TrialState[s] for s in ("COMPLETE", "FAIL", "RUNNING", "WAITING"))


@pytest.fixture(scope="module")
def pg():
    """One server for the module; each test makes its own database."""
    with PostgresServer() as server:
        yield server


# ----------------------------------------------------------------------------------------------- the server itself


def test_throwaway_server_listens_on_loopback_and_is_removed_after():
    with PostgresServer() as server:
        root, port = server.root, server.port
        assert (server.data_dir / "postmaster.pid").is_file()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert list(root.glob(".s.PGSQL.*")), "unix socket not in the server's own folder"
    assert not root.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ----------------------------------------------------------------------------------------------- storage


def test_storage_url_gets_optuna_heartbeat_and_clear_errors(pg, tmp_path):
    url = pg.create_database("storage")
    storage = make_storage(url, heartbeat_interval=0.5, grace_period=3.2)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_heartbeat_interval() == 1 and storage.grace_period == 4  # whole seconds, rounded up
    assert isinstance(storage.get_heartbeat_stale_trial_callback(), RetryStaleTrial)
    assert make_storage(url).get_heartbeat_interval() is None  # jobs and scripts: no heartbeat of their own

    for bad, expected in [
        (pg.url("storage", password="wrong-password"), "password authentication failed"),
        (f"postgresql+psycopg://agnews:pw-not-shown@127.0.0.1:{free_port()}/storage", "Cannot open"),
        (pg.url("no_such_db"), 'database "no_such_db" does not exist'),
        ("postgresql+nodriver://agnews:pw-not-shown@127.0.0.1/x", "database driver missing"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
            make_storage(bad, heartbeat_interval=1, grace_period=3)
        assert "wrong-password" not in str(caught.value) and "pw-not-shown" not in str(caught.value)
        assert pg.password not in str(caught.value)


def _open_study(url: str, results) -> None:
    try:
        study = optuna.create_study(study_name="s", storage=make_storage(url, 1, 3), load_if_exists=True)
        results.put(study._study_id)
    except Exception as error:  # noqa: BLE001  (reported to the test)
        results.put(f"{type(error).__name__}: {error}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_starting_together_on_a_new_database(kind, pg, tmp_path):
    """Three workers open a new database at the same moment: all of them create Optuna's tables, one wins; the
    others retry instead of failing, and all end up in the one study."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'new.db'}" if kind == "sqlite" else pg.create_database("new")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [context.Process(target=_open_study, args=(url, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert len(set(outcomes)) == 1 and isinstance(outcomes[0], int), outcomes


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_stale_trial_is_failed_once_and_queued_again(kind, pg, tmp_path):
    """A trial whose worker stopped beating: two workers look at once, it is failed exactly once and one WAITING copy
    (same params, Optuna's retry attributes, none of the dead attempt's bookkeeping) is what the next ask returns.
    A trial that keeps beating is left alone."""
    target = (str(tmp_path / "journal.log") if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
              if kind == "sqlite" else pg.create_database("stale"))
    storages = [make_storage(target, heartbeat_interval=1, grace_period=2) for _ in range(3)]  # 3 "workers"
    dead_worker, live_worker, *_ = [optuna.create_study(study_name="s", storage=s, load_if_exists=True)
                                    for s in storages]
    dead = dead_worker.ask()
    dead.suggest_float("lr", 1e-5, 1e-2, log=True)
    dead.suggest_categorical("batch", [16, 32])
    dead.set_user_attr("agnews_overrides", ["x=1"])
    dead.set_user_attr("note", "kept")
    live = live_worker.ask()
    Heartbeat(storages[0], 1).beat(dead._trial_id)  # one beat, then the worker "dies"
    beating = Heartbeat(storages[1], 0.5)
    beating.add(live._trial_id)
    beating.start()
    try:
        time.sleep(3.5)  # past the grace period (the RDB check counts whole seconds on the server's clock)
        observers = [optuna.load_study(study_name="s", storage=s) for s in storages[1:]]
        barrier = threading.Barrier(len(observers))

        def observe(study):
            barrier.wait()
            fail_stale_trials(study, grace_period=2, exclude={live.number}, retry=RetryStaleTrial())

        threads = [threading.Thread(target=observe, args=(s,)) for s in observers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        trials = optuna.load_study(study_name="s", storage=make_storage(target)).get_trials()
        by_state = {state: [t for t in trials if t.state == state] for state in (FAIL, RUNNING, WAITING)}
        assert [t.number for t in by_state[FAIL]] == [dead.number]
        assert [t.number for t in by_state[RUNNING]] == [live.number]  # alive: never failed
        assert len(by_state[WAITING]) == 1, [(t.number, t.state.name) for t in trials]
        retry = by_state[WAITING][0]
        assert retry.params == by_state[FAIL][0].params and retry.distributions == by_state[FAIL][0].distributions
        assert retry.system_attrs["failed_trial"] == dead.number
        assert retry.system_attrs["retry_history"] == [dead.number]
        assert retry.user_attrs == {"note": "kept"}

        # The next ask of any worker runs the queued copy, with the same values whatever the sampler says.
        again = observers[0].ask()
        assert again.number == retry.number
        assert again.suggest_float("lr", 1e-5, 1e-2, log=True) == dead.params["lr"]
        assert again.suggest_categorical("batch", [16, 32]) == dead.params["batch"]
    finally:
        beating.stop()


def test_a_trial_killed_again_and_again_is_retried_max_retry_times(pg):
    from agnews.sweeps.heartbeat import MAX_RETRY

    url = pg.create_database("retries")
    storage = make_storage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.suggest_int("x", 0, 1000)
    for attempt in range(MAX_RETRY + 1):
        storage.record_heartbeat(trial._trial_id)
        time.sleep(3.2)
        fail_stale_trials(study, grace_period=2)
        waiting = study.get_trials(states=(WAITING,))
        if attempt < MAX_RETRY:
            assert len(waiting) == 1 and waiting[0].system_attrs["retry_history"] == list(range(attempt + 1))
            trial = study.ask()
            assert trial.number == waiting[0].number
    assert not study.get_trials(states=(WAITING,))  # given up: the sweeper samples a new trial for the slot
    assert _states(study) == {"FAIL": MAX_RETRY + 1}


# ----------------------------------------------------------------------------------------------- two real workers


def _pg_args(tmp_path: Path, data: Path, url: str, n_trials: int, sweep: str) -> list[str]:
    args = [a for a in _optuna_args(tmp_path, data, n_trials=n_trials, sweep=sweep)
            if not a.startswith("hydra.sweeper.storage=")]
    return [*args, f"hydra.sweeper.storage='{url}'"]


def _wait_all(workers, seconds: int) -> list[int]:
    try:
        return [w.wait(timeout=seconds) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)


def _ran_in(sweep_dir: Path) -> set[int]:
    return {int(p.name.split("_")[1]) for p in sweep_dir.glob("trial_*") if (p / "metrics.json").is_file()}


def test_two_workers_on_postgres_lose_and_repeat_no_trial(pg, tmp_path, make_ag_news_dir):
    """Two workers started together on a new database, budget 4. The password is in $PGPASSWORD, not in the URL, so
    it is written nowhere (job configs carry the URL for the pruning callback)."""
    pg.create_database("two_workers")
    url = pg.url("two_workers", include_password=False)
    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    env = {**_env(tmp_path), "PGPASSWORD": pg.password}
    workers = []
    for i in range(2):
        with (tmp_path / f"worker{i}.log").open("w") as out:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "agnews.train", *_pg_args(tmp_path, data, url, 4, f"sweep{i}")],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    codes = _wait_all(workers, 400)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-2000:] for log in logs]
    assert not (tmp_path / "study").exists()  # nothing went to the default journal file

    study = optuna.load_study(study_name="t", storage=make_storage(pg.url("two_workers")))
    trials = study.get_trials()
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) == 4, _states(study)
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
    for trial in trials:  # anything else was a surplus ask for the last slot, never run
        if trial.state != COMPLETE:
            assert trial.state == FAIL and trial.user_attrs.get("agnews_surplus"), trial
    # Each completed trial ran once, in one worker, with the value of its own job's metrics.
    ran = [_ran_in(tmp_path / f"sweep{i}") for i in range(2)]
    assert ran[0] and ran[1] and not ran[0] & ran[1], ran
    assert ran[0] | ran[1] == {t.number for t in complete}
    for trial in complete:
        sweep = tmp_path / ("sweep0" if trial.number in ran[0] else "sweep1")
        metrics = json.loads((sweep / f"trial_{trial.number:04d}" / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val"]["accuracy"])
    best = (tmp_path / "conf" / "experiment" / "best_t.yaml").read_text()
    assert f"127.0.0.1:{pg.port}/two_workers" in best
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 10_000_000]
    assert len(written) > 20 and not [p for p in written if pg.password.encode() in p.read_bytes()]


def test_sigkilled_worker_trial_is_failed_and_rerun_by_the_other_worker(pg, tmp_path, make_ag_news_dir):
    """Both workers start; once both are running a trial, worker A (one slow trial) is SIGKILLed in the middle of its
    job. Worker B finds A's trial stale after the grace period, marks it FAIL and runs the queued copy (same params):
    the study ends with exactly n_trials COMPLETE, nothing RUNNING or WAITING, nothing run twice."""
    url = pg.create_database("killed")
    data = make_ag_news_dir(train_per_class=12, test_per_class=4)
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=5"]
    slow = ["trainer.max_epochs=300", "callbacks.early_stopping=null"]
    worker_a = _popen([*_pg_args(tmp_path, data, url, 3, "sweep_a"), *beat, *slow], tmp_path, tmp_path / "a.log")
    worker_b = _popen([*_pg_args(tmp_path, data, url, 3, "sweep_b"), *beat], tmp_path, tmp_path / "b.log")
    study = None
    killed = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and worker_a.poll() is None and killed is None:
            time.sleep(0.5)
            asked_a = re.findall(r"Trial (\d+): \S+=", (tmp_path / "a.log").read_text())
            asked_b = re.findall(r"Trial (\d+): \S+=", (tmp_path / "b.log").read_text())
            if not (asked_a and asked_b and (tmp_path / "sweep_a" / f"trial_{int(asked_a[-1]):04d}").is_dir()):
                continue
            study = study or optuna.load_study(study_name="t", storage=make_storage(url))
            if study.get_trials()[int(asked_a[-1])].state == RUNNING:
                killed = int(asked_a[-1])  # its job runs, and B is at work too: kill A in the middle of it
                os.killpg(worker_a.pid, signal.SIGKILL)
        assert killed is not None, [(tmp_path / f"{w}.log").read_text()[-2000:] for w in "ab"]
        worker_a.wait()
        code = worker_b.wait(timeout=400)
    finally:
        for worker in (worker_a, worker_b):
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    log_b = (tmp_path / "b.log").read_text()
    assert code == 0, log_b[-3000:]
    assert f"Trial {killed}: no heartbeat" in log_b

    trials = optuna.load_study(study_name="t", storage=make_storage(url)).get_trials()
    states = {t.number: t.state for t in trials}
    assert states[killed] == FAIL and "agnews_error" not in trials[killed].user_attrs
    assert not [n for n, s in states.items() if s in (RUNNING, WAITING)], states
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) == 3, states
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1, states
    retry = retries[0]
    assert retry.state == COMPLETE and retry.params == trials[killed].params
    assert retry.system_attrs["retry_history"] == [killed] and retry.number > killed
    ran_a, ran_b = _ran_in(tmp_path / "sweep_a"), _ran_in(tmp_path / "sweep_b")
    assert killed not in ran_a and retry.number in ran_b and not ran_a & ran_b
    assert ran_a | ran_b == {t.number for t in complete}  # each completed trial ran once, in one worker
    assert HEARTBEAT_ATTR not in trials[killed].user_attrs  # RDB: Optuna's heartbeat table, not a user attribute
