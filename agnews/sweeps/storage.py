"""Optuna storage from one string: a URL (RDB: sqlite, postgresql, mysql) or a path (journal file, no server)."""

from __future__ import annotations

from pathlib import Path


def is_url(storage: str) -> bool:
    return "://" in storage


def make_storage(storage: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if is_url(storage):
        return optuna.storages.RDBStorage(storage)
    path = Path(storage).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The default lock (a symlink) is safe for several processes on one machine and on NFS.
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
