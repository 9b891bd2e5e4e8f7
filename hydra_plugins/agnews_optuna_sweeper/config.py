"""Structured config of the sweeper, registered as ``hydra/sweeper: agnews_optuna`` (see docs/sweeps.md)."""


from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class AgnewsOptunaSweeperConf:
    _target_: str = "hydra_plugins.agnews_optuna_sweeper.optuna_sweeper.AgnewsOptunaSweeper"
    # sampler/pruner stay configs: the sweeper builds them (re-seeded per trial; the pruner also inside each job).
    _recursive_: bool = False
    # maximize | minimize: the objective is what the task function returns (cfg.optimized_metric).
    direction: str = "maximize"
    study_name: str = "agnews"
    # null: an Optuna JournalStorage file at <repo>/sweeps/<study_name>/journal.log (no server, resumable).
    # A path (no "://"): a journal file there. A URL (sqlite:///..., postgresql://user:pw@host/db, mysql+pymysql://...):
    # Optuna's RDBStorage, which workers on several machines can share. Workers send heartbeats: a killed worker's
    # trial is marked FAIL and queued again with the same params (at most twice; docs/sweeps.md).
    storage: Optional[str] = None
    # Total trials of the study (over every run and every worker): COMPLETE + PRUNED + FAIL (job errors).
    n_trials: int = 20
    # Trials asked and launched together (parallel with a parallel launcher; one after the other with the basic one).
    n_jobs: int = 1
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 42, "n_startup_trials": 10}
    )
    # null = no pruning; else e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 5}.
    pruner: Any = None
    # The metric logged during training that the pruning callback reports once per validation (null: no callback).
    pruning_monitor: Optional[str] = "val/accuracy"
    # Search space: key -> interval(a,b) | tag(log, interval(a,b)) | choice(a,b,..) | range(a,b[,step]) | fixed value,
    # or an explicit mapping {type: float|int|categorical, low, high, log, step, choices}.
    params: Any = field(default_factory=dict)
    # A worker's running trials carry a heartbeat (a user attribute) refreshed every heartbeat_interval seconds; a
    # RUNNING trial whose heartbeat is older than grace_period (its worker was killed) is marked FAIL and replaced.
    heartbeat_interval: float = 10.0
    grace_period: float = 60.0
    # Where the best trial is written as an experiment; null: <repo>/conf/experiment/best_<study_name>.yaml.
    best_experiment_path: Optional[str] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="agnews_optuna", node=AgnewsOptunaSweeperConf, provider="agnews_optuna_sweeper"
)
