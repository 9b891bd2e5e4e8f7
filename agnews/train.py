"""``python -m agnews.train [overrides]``: compose the Hydra config and run one training job.

Only Hydra and OmegaConf are imported at module level, so ``--help`` and ``--cfg job`` stay fast: torch and
transformers load inside :func:`main`, when a job actually runs.

In a multirun (``-m``) a failing job must not end the sweep: Hydra's launcher re-raises a job's exception, so here the
exception is logged with its traceback, written to ``<job dir>/error.txt`` and the job returns NaN; the sweep summary
(:mod:`agnews.sweeps.summary`) lists it. A trial stopped by Optuna's pruner writes ``pruned.txt`` instead (it is not a
failure). A single run raises as before and exits non-zero.
"""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
PRUNED_FILE = "pruned.txt"


def _objective(cfg: DictConfig) -> float | None:
    from agnews.pipeline import train

    metrics = train(cfg)
    # The return value is what sweepers optimise (the Optuna sweeper reads it in -m runs).
    split, key = cfg.optimized_metric.split("/")
    return metrics.get(split, {}).get(key)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not _is_multirun():
        return _objective(cfg)

    from hydra.core.hydra_config import HydraConfig

    job_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _objective(cfg)
    except Exception as error:  # noqa: BLE001  (any job failure is recorded, the sweep goes on)
        job_dir.mkdir(parents=True, exist_ok=True)
        if type(error).__name__ == "TrialPruned":  # optuna.TrialPruned, without importing optuna here
            log.info("Job %s pruned: %s", HydraConfig.get().job.num, error)
            (job_dir / PRUNED_FILE).write_text(f"{error}\n")
            return math.nan
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        log.error("Job %s failed; the sweep continues.\n%s", HydraConfig.get().job.num, text)
        (job_dir / ERROR_FILE).write_text(f"{type(error).__name__}: {error}\n\n{text}")
        return math.nan


if __name__ == "__main__":
    main()
