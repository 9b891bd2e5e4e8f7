"""Optuna storage from one string: a URL (RDB: sqlite, postgresql, mysql) or a path (journal file, no server)."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

from agnews.errors import ConfigError

# Drivers a URL may name, and what to install for them (SQLAlchemy >= 2.1: plain postgresql:// means psycopg 3).
_DRIVER_HINTS = {
    "postgresql": "pip install 'psycopg[binary]'  (or name another driver: postgresql+psycopg2://...)",
    "mysql": "pip install pymysql  (URL mysql+pymysql://...)",
}


def is_url(storage: str) -> bool:
    return "://" in storage


def redact(url: str) -> str:
    """The URL without its password, for messages and logs (a journal path as it is)."""
    from sqlalchemy.engine import make_url

    if not is_url(url):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (not even parseable: keep only what follows the credentials)
        return url.split("://", 1)[0] + "://" + url.rsplit("@", 1)[-1].split("://")[-1]


def make_storage(storage: str, heartbeat_interval: float | None = None, grace_period: float | None = None):
    """``heartbeat_interval`` / ``grace_period`` (seconds): for a URL, Optuna's heartbeat with the retry of stale
    trials (:mod:`agnews.sweeps.heartbeat`), rounded up to whole seconds as RDBStorage requires; a journal file has
    no storage-side heartbeat (the sweeper keeps its own). Without them: a plain storage (jobs, scripts, tests)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if is_url(storage):
        return _rdb_storage(storage, heartbeat_interval, grace_period)
    path = Path(storage).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The default lock (a symlink) is safe for several processes on one machine and on NFS.
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _create_rdb_storage(url: str, kwargs: dict):
    import optuna
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                sqlalchemy.exc.ProgrammingError) as error:
            # Workers started together on a new database all create Optuna's tables: one wins, the others' CREATE
            # TABLE fails (PostgreSQL: a unique index of its catalog; SQLite: "already exists"). Then opening works.
            racing = isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in str(error)
            if not racing or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _rdb_storage(url: str, heartbeat_interval: float | None, grace_period: float | None):
    import optuna
    import sqlalchemy.exc

    kwargs: dict = {}
    if heartbeat_interval is not None:
        from agnews.sweeps.heartbeat import RetryStaleTrial

        interval = max(1, math.ceil(heartbeat_interval))
        grace = max(interval + 1, math.ceil(grace_period)) if grace_period is not None else 2 * interval
        kwargs = {"heartbeat_interval": interval, "grace_period": grace,
                  "heartbeat_stale_trial_callback": RetryStaleTrial()}
        # The sweeper asks trials itself (ask-and-tell) and beats them from its own thread, which is what
        # Study.optimize would do; Optuna warns on every ask otherwise.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    sqlite = url.startswith("sqlite")
    if sqlite:
        # Python's sqlite3 runs a SELECT outside the transaction of the UPDATE that follows it, so Optuna's
        # check-then-write steps (pop a WAITING trial, fail a stale one) could succeed in two workers at once. No
        # implicit transactions here (isolation_level=None) and every transaction BEGIN IMMEDIATE (below): one
        # writer at a time, as SELECT ... FOR UPDATE gives on a server. Waits up to 60 s for the lock.
        kwargs["engine_kwargs"] = {"connect_args": {"isolation_level": None, "timeout": 60}}
    else:
        # A worker may sit idle for hours in a long job: test pooled connections before use (server restarts,
        # firewalls dropping idle connections).
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    try:
        storage = _create_rdb_storage(url, kwargs)
    except (ModuleNotFoundError, sqlalchemy.exc.NoSuchModuleError) as error:
        dialect = url.split("://", 1)[0].split("+", 1)[0]
        hint = _DRIVER_HINTS.get(dialect, "install the database driver the URL names")
        raise ConfigError(f"Optuna storage {redact(url)}: database driver missing ({error}); {hint}") from error
    except sqlalchemy.exc.ArgumentError as error:
        raise ConfigError(f"Optuna storage {redact(url)} is not a valid database URL: {error}") from error
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig or error).strip().splitlines()[0]
        raise ConfigError(f"Cannot open the Optuna study database {redact(url)}: {reason}") from error
    if sqlite:
        from sqlalchemy import event

        event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage
