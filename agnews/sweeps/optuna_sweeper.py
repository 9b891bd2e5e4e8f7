"""Optuna (>= 4) as a Hydra sweeper, on the ask-and-tell API.

One loop per worker process (``python -m agnews.train -m hparams_search=NAME``), any number of workers per study:

1. mark RUNNING trials whose heartbeat is older than ``grace_period`` as FAIL (their worker was killed) and queue
   each again with the same parameters (``agnews.sweeps.heartbeat``: Optuna's heartbeat with an RDB URL);
2. count the study's trials that use the budget: COMPLETE, PRUNED, RUNNING and FAIL from a job error
   (``agnews_error``); stop once ``n_trials`` of them are finished, wait while the rest are running elsewhere;
3. ask up to ``n_jobs`` trials; a trial asked when ``n_trials`` lower-numbered trials already use the budget (two
   workers asked at once) is marked surplus (FAIL, ``agnews_surplus``) and never run, so no worker overshoots;
4. launch the batch through Hydra's launcher, each job in ``<sweep dir>/trial_<number>``, then tell each trial
   COMPLETE (the task function's return value), PRUNED (the pruning callback marked it) or FAIL (job error).

The study lives in the storage, so a killed sweep rerun with the same command keeps its finished trials and runs
only what is left. At the end the best trial is written out as a ready-to-run experiment config.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from agnews.errors import ConfigError
from agnews.sweeps.heartbeat import Heartbeat, RetryStaleTrial, fail_stale_trials
from agnews.sweeps.pruning import PRUNED_ATTR
from agnews.sweeps.search_space import Param, format_value, parse_search_space
from agnews.sweeps.storage import is_url, make_storage, redact

log = logging.getLogger(__name__)

ERROR_ATTR = "agnews_error"
SURPLUS_ATTR = "agnews_surplus"
OVERRIDES_ATTR = "agnews_overrides"
POLL_SECONDS = 2.0


def _format_mapping(node: dict) -> str:
    parts = []
    for key, value in node.items():
        parts.append(f"{key}:{_format_mapping(value) if isinstance(value, dict) else format_value(value)}")
    return "{" + ",".join(parts) + "}"


class OptunaSweeperImpl:
    def __init__(self, direction: str = "maximize", study_name: str = "agnews", storage: str | None = None,
                 n_trials: int = 20, n_jobs: int = 1, sampler: Any = None, pruner: Any = None,
                 pruning_monitor: str | None = "val/accuracy", params: Any = None, heartbeat_interval: float = 10.0,
                 grace_period: float = 60.0, best_experiment_path: str | None = None) -> None:
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction must be maximize or minimize, got {direction!r}")
        if n_trials < 1 or n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        if grace_period <= heartbeat_interval:
            raise ConfigError("hydra.sweeper.grace_period must be longer than heartbeat_interval")
        to_plain = lambda node: OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node  # noqa: E731
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler_cfg = to_plain(sampler) or {"_target_": "optuna.samplers.TPESampler"}
        self.pruner_cfg = to_plain(pruner)
        self.pruning_monitor = pruning_monitor
        self.params = to_plain(params) or {}
        self.heartbeat_interval, self.grace_period = float(heartbeat_interval), float(grace_period)
        self.best_experiment_path = best_experiment_path
        self.job_idx = 0

    # ---------------------------------------------------------------- Hydra
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        root = OmegaConf.select(config, "paths.root_dir", default=None)
        self.root_dir = Path(root) if root else Path.cwd()

    # ---------------------------------------------------------------- helpers
    def storage_string(self) -> str:
        return self.storage or str(self.root_dir / "sweeps" / self.study_name / "journal.log")

    def _instantiate(self, node: dict | None, **extra: Any) -> Any:
        from hydra.utils import instantiate

        return instantiate({**node, **extra}) if node else None

    def _sampler_for(self, trial_number: int) -> Any:
        # A seeded sampler is re-seeded per trial (seed + trial number): one worker is reproducible, while resumed
        # runs and concurrent workers draw different values instead of repeating the first worker's sequence.
        seed = self.sampler_cfg.get("seed")
        extra = {"seed": int(seed) + trial_number} if seed is not None else {}
        return self._instantiate(self.sampler_cfg, **extra)

    @staticmethod
    def _uses_budget(trial: Any) -> bool:
        from optuna.trial import TrialState

        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            return True
        return trial.state == TrialState.FAIL and ERROR_ATTR in trial.user_attrs

    def _suggest(self, trial: Any, param: Param) -> Any:
        import optuna.distributions as d

        dist = param.distribution
        if isinstance(dist, d.FloatDistribution):
            return trial.suggest_float(param.name, dist.low, dist.high, step=dist.step, log=dist.log)
        if isinstance(dist, d.IntDistribution):
            return trial.suggest_int(param.name, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_categorical(param.name, list(dist.choices))

    def _ask(self, study: Any, searched: list[Param], fixed: list[str]) -> tuple[Any, list[str]] | None:
        from optuna.trial import TrialState

        trial = study.ask()  # a queued retry of a killed trial first, else a new one
        self.heartbeat.add(trial._trial_id)
        ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and self._uses_budget(t)]
        if len(ahead) >= self.n_trials:
            log.info("Trial %d not needed (another worker took the last slot)", trial.number)
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            self.heartbeat.discard(trial._trial_id)
            return None
        study.sampler = self._sampler_for(trial.number)
        values = {p.name: self._suggest(trial, p) for p in searched}
        task_overrides = [*fixed, *(f"{p.key}={format_value(values[p.name])}" for p in searched)]
        trial.set_user_attr(OVERRIDES_ATTR, task_overrides)
        storage = self.storage_string()
        internal = [
            f"hydra.sweep.subdir=trial_{trial.number:04d}",
            f"+optuna.study_name={format_value(self.study_name)}",
            f"+optuna.storage={format_value(storage)}",
            f"+optuna.trial_number={trial.number}",
        ]
        if self.pruner_cfg and self.pruning_monitor:
            callback = {"_target_": "agnews.sweeps.pruning.OptunaPruningCallback", "storage": storage,
                        "study_name": self.study_name, "trial_number": trial.number, "monitor": self.pruning_monitor,
                        "pruner": self.pruner_cfg}
            internal.append(f"+callbacks.optuna_pruning={_format_mapping(callback)}")
        log.info("Trial %d: %s", trial.number, " ".join(task_overrides[len(fixed):]))
        return trial, [*task_overrides, *internal]

    def _tell(self, study: Any, trial: Any, job_return: Any) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self._tell_result(study, trial, job_return)
        except UpdateFinishedTrialError:
            # Its heartbeat went stale while this worker was alive (stalled longer than grace_period): another
            # worker marked it FAIL and queued it again, so this result is not recorded.
            log.warning("Trial %d was marked FAIL meanwhile (no heartbeat within grace_period); result dropped",
                        trial.number)

    def _tell_result(self, study: Any, trial: Any, job_return: Any) -> None:
        from optuna.trial import TrialState

        error = None
        try:
            value = job_return.return_value
        except Exception as exc:  # noqa: BLE001  (a launcher that did not go through agnews.train's handler)
            value, error = None, f"{type(exc).__name__}: {exc}"
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if PRUNED_ATTR in frozen.user_attrs:
            study.tell(trial, state=TrialState.PRUNED)
            log.info("Trial %d pruned at validation %s", trial.number, frozen.user_attrs[PRUNED_ATTR])
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            study.tell(trial, float(value))
            log.info("Trial %d finished: %s", trial.number, value)
            return
        if error is None:
            job_dir = OmegaConf.select(job_return.hydra_cfg, "hydra.runtime.output_dir") if job_return.hydra_cfg else None
            error_file = Path(job_dir) / "error.txt" if job_dir else None
            error = (error_file.read_text().split("\n", 1)[0] if error_file and error_file.is_file()
                     else f"objective returned {value!r}")
        trial.set_user_attr(ERROR_ATTR, error[:2000])
        study.tell(trial, state=TrialState.FAIL)
        log.warning("Trial %d failed: %s", trial.number, error)

    # ---------------------------------------------------------------- the loop
    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from optuna.trial import TrialState

        searched, fixed = parse_search_space(self.params, list(arguments))
        if not searched:
            raise ConfigError("The Optuna sweeper has nothing to search: set hydra.sweeper.params (hparams_search=...)")
        storage_string = self.storage_string()
        storage = make_storage(storage_string, self.heartbeat_interval, self.grace_period)
        study = optuna.create_study(storage=storage, study_name=self.study_name, direction=self.direction,
                                    sampler=self._sampler_for(0), load_if_exists=True)
        log.info("Optuna study %r in %s: %d trials wanted, %d already in the study", self.study_name,
                 redact(storage_string), self.n_trials, len(study.get_trials(deepcopy=False)))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        self.heartbeat = Heartbeat(storage, self.heartbeat_interval)
        self.heartbeat.start()
        retry = RetryStaleTrial()
        mine: set[int] = set()
        try:
            while True:
                fail_stale_trials(study, self.grace_period, exclude=mine, retry=retry)
                trials = study.get_trials(deepcopy=False)
                using = [t for t in trials if self._uses_budget(t)]
                finished = [t for t in using if t.state != TrialState.RUNNING]
                if len(finished) >= self.n_trials:
                    break
                free = self.n_trials - len(using)
                if free <= 0:  # the remaining trials are running in other workers: wait for them (or their death)
                    time.sleep(POLL_SECONDS)
                    continue
                batch = []
                for _ in range(min(self.n_jobs, free)):
                    asked = self._ask(study, searched, fixed)
                    if asked is not None:
                        batch.append(asked)
                        mine.add(asked[0].number)
                if not batch:
                    time.sleep(POLL_SECONDS)
                    continue
                self.validate_batch_is_legal([overrides for _, overrides in batch])
                returns = self.launcher.launch([overrides for _, overrides in batch], initial_job_idx=self.job_idx)
                self.job_idx += len(batch)
                for (trial, _), job_return in zip(batch, returns, strict=True):
                    self._tell(study, trial, job_return)
                    self.heartbeat.discard(trial._trial_id)
        finally:
            self.heartbeat.stop()
        self._report(study, storage_string, sweep_dir)

    def validate_batch_is_legal(self, batch: list[list[str]]) -> None:
        for overrides in batch:
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    # ---------------------------------------------------------------- results
    def _report(self, study: Any, storage_string: str, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name: sum(t.state == s and SURPLUS_ATTR not in t.user_attrs for t in trials) for s in TrialState}
        log.info("Study %r: %s", self.study_name, ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            log.warning("No completed trial: no best experiment written")
            return
        best = study.best_trial
        path = Path(self.best_experiment_path) if self.best_experiment_path else (
            self.root_dir / "conf" / "experiment" / f"best_{self.study_name}.yaml")
        text = best_experiment_yaml(best, self.study_name, self.direction,
                                    OmegaConf.select(self.config, "optimized_metric", default="objective"),
                                    storage_string, self._groups(), path.stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        (sweep_dir / "best_experiment.yaml").write_text(text)
        log.info("Best trial %d (%s=%s): %s; run it with: python -m agnews.train experiment=%s", best.number,
                 OmegaConf.select(self.config, "optimized_metric", default="objective"), best.value, path, path.stem)

    def _groups(self) -> set[str]:
        try:
            return set(self.hydra_context.config_loader.list_groups(""))
        except Exception:  # noqa: BLE001
            return set()


def best_experiment_yaml(best: Any, study_name: str, direction: str, metric: str, storage: str,
                         groups: set[str], name: str) -> str:
    """The best trial's overrides (the fixed ones of its command line and the searched values) as an experiment."""
    overrides = best.user_attrs.get(OVERRIDES_ATTR) or [f"{k}={format_value(v)}" for k, v in best.params.items()]
    parser = OverridesParser.create()
    defaults: list[str] = []
    body: dict = {}
    skipped: list[str] = []
    for override in parser.parse_overrides(list(overrides)):
        key = override.key_or_group
        if key == "hparams_search" or key.startswith(("optuna.", "callbacks.optuna_pruning", "hydra.")):
            continue
        if override.is_delete():
            skipped.append(override.input_line)
            continue
        if key in groups and "." not in key:
            value = override.value()
            if key == "experiment":
                defaults.append(f"  - {value}")  # another experiment under this one (same package: _global_)
            else:
                defaults.append(f"  - override /{key}: {value}")
            continue
        node = body
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = override.value()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = storage if not is_url(storage) else storage.split("@")[-1]  # never write a password into the file
    lines = [
        "# @package _global_",
        f"# Best trial of Optuna study '{study_name}': trial {best.number}, {metric} = {best.value} ({direction}).",
        f"# Written by the agnews_optuna sweeper on {stamp}; study storage: {where}",
        f"# Run it (file in conf/experiment/): python -m agnews.train experiment={name}",
    ]
    if skipped:
        lines.append(f"# Not representable here (add them to the command line): {' '.join(skipped)}")
    lines += ["defaults:", *defaults, "  - _self_", ""]
    text = "\n".join(lines) + "\n"
    if body:
        text += OmegaConf.to_yaml(OmegaConf.create(body))
    return text
