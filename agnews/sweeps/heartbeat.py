"""Heartbeats of running trials; a trial whose worker died is marked FAIL and queued again with the same parameters.

One mechanism per kind of storage (see :func:`agnews.sweeps.storage.make_storage`):

- RDB (``sqlite:///``, ``postgresql://``, ``mysql+...://``): Optuna's own heartbeat. The storage is built with
  ``heartbeat_interval``, ``grace_period`` and :class:`RetryStaleTrial` as its stale-trial callback; the worker calls
  ``storage.record_heartbeat`` for its trials and :func:`optuna.storages.fail_stale_trials` before asking. The beat is
  stamped with the database server's clock (the workers' clocks do not matter) and a stale trial is failed under a
  row lock, so exactly one worker wins it and queues the retry.
- Journal file: no server clock and no row lock. A worker stamps its trials with a user attribute (its wall clock). A
  worker that finds a stale trial first writes a claim (a user attribute with a token of its own), then FAIL. The
  journal is one ordered log and a finished trial takes no more writes, so the claim that stands is the last one
  written before the first FAIL: exactly one worker reads its own token back and queues the retry.

The retry is Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`: a WAITING copy of the trial with the
same parameters and the system attributes ``failed_trial`` (the original number) and ``retry_history``; the next
``study.ask()`` of any worker takes it before sampling anything new.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "agnews_heartbeat"
CLAIM_ATTR = "agnews_stale_claim"
# A trial killed this many times more is not queued again (e.g. its parameters make the job run out of memory): it
# stays FAIL and a newly sampled trial takes its slot.
MAX_RETRY = 2
# The sweeper's bookkeeping of one attempt (heartbeat, error, pruned step, ...) is not carried over to its retry.
_BOOKKEEPING_PREFIX = "agnews_"


def uses_native_heartbeat(storage: Any) -> bool:
    """An RDB storage made with a heartbeat interval (also behind the cache Optuna wraps it in)."""
    get_interval = getattr(storage, "get_heartbeat_interval", None)
    return get_interval is not None and get_interval() is not None


class RetryStaleTrial:
    """Stale-trial callback: log it and queue a WAITING copy (same parameters) via Optuna's retry callback."""

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        self.max_retry = max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        attempts = len(trial.system_attrs.get("retry_history", [])) + 1
        clean = copy.copy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if not k.startswith(_BOOKKEEPING_PREFIX)}
        self.retry(study, clean)
        if self.max_retry is None or attempts <= self.max_retry:  # the condition of Optuna's callback
            log.warning("Trial %d: no heartbeat (its worker died); marked FAIL and queued again with the same "
                        "parameters (retry %d of %s)", trial.number, attempts, self.max_retry)
        else:
            log.warning("Trial %d: no heartbeat (its worker died); marked FAIL, not queued again (already retried "
                        "%d times); a new trial takes its slot", trial.number, attempts - 1)


class Heartbeat(threading.Thread):
    """Keeps this worker's running trials alive: a beat at once (:meth:`add`) and every ``interval`` seconds."""

    def __init__(self, storage: Any, interval: float) -> None:
        super().__init__(name="optuna-heartbeat", daemon=True)
        self.storage, self.interval = storage, interval
        self.native = uses_native_heartbeat(storage)
        self.trial_ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def beat(self, trial_id: int) -> None:
        try:
            if self.native:
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except Exception:  # noqa: BLE001  (finished meanwhile, or a transient storage error: the next beat retries)
            pass

    def add(self, trial_id: int) -> None:
        self.beat(trial_id)
        with self.lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self.lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                self.beat(trial_id)


def fail_stale_trials(study: Any, grace_period: float, exclude: Iterable[int] = (),
                      retry: RetryStaleTrial | None = None) -> None:
    """Mark FAIL every RUNNING trial whose heartbeat is older than ``grace_period`` and queue its retry (once).

    ``exclude``: trial numbers this worker runs itself (journal storage only; with RDB the server clock decides).
    """
    import optuna

    if uses_native_heartbeat(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # the storage's callback (RetryStaleTrial) runs for each
        return
    _fail_stale_journal(study, grace_period, set(exclude), retry or RetryStaleTrial())


def _fail_stale_journal(study: Any, grace_period: float, exclude: set[int], retry: RetryStaleTrial) -> None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number in exclude:
            continue
        beat = trial.user_attrs.get(HEARTBEAT_ATTR)
        if beat is None and trial.datetime_start is not None:
            beat = trial.datetime_start.timestamp()
        if beat is None or now - float(beat) <= grace_period:
            continue
        token = uuid.uuid4().hex
        try:
            storage.set_trial_user_attr(trial._trial_id, CLAIM_ATTR, token)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # finished meanwhile: by its own worker, or failed by another one whose FAIL may carry our claim
        failed = storage.get_trial(trial._trial_id)
        if failed.state == TrialState.FAIL and failed.user_attrs.get(CLAIM_ATTR) == token:
            retry(study, failed)
