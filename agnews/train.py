"""``python -m agnews.train [overrides]``: compose the Hydra config and run one training job.

Only Hydra and OmegaConf are imported at module level, so ``--help`` and ``--cfg job`` stay fast: torch and
transformers load inside :func:`main`, when a job actually runs.

In a multirun (``-m``) a failing job must not end the sweep: Hydra's launcher re-raises a job's exception, so here the
exception is logged with its traceback, written to ``<job dir>/error.txt`` and the job returns NaN; the sweep summary
(:mod:`agnews.sweeps.summary`) lists it. A trial stopped by Optuna's pruner writes ``pruned.txt`` instead (it is not a
failure). A single run raises as before and exits non-zero; a multirun in which every job failed exits 1
(:mod:`agnews.callbacks.sweep_status`). A finished run prints its directory, headline metrics and next commands.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
PRUNED_FILE = "pruned.txt"


def _objective(cfg: DictConfig) -> float | None:
    if cfg.get("stages"):
        from agnews.stages import run_stages as train  # stages=[...]: several runs, the last one writes this run
    else:
        from agnews.pipeline import train

    metrics = train(cfg)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:  # one summary per run, not one per DDP rank
        print(_summary(Path(cfg.paths.output_dir).resolve(), metrics), flush=True)
    # The return value is what sweepers optimise (the Optuna sweeper reads it in -m runs).
    split, key = cfg.optimized_metric.split("/")
    return metrics.get(split, {}).get(key)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return _run_job(cfg, _objective)


def _run_job(cfg: DictConfig, objective) -> float | None:
    """``objective(cfg)``; in a multirun, a failure is recorded in the job's directory and the sweep goes on."""
    if not _is_multirun():
        return objective(cfg)

    from hydra.core.hydra_config import HydraConfig

    job_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return objective(cfg)
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


def _summary(run_dir: Path, metrics: dict) -> str:
    """What a finished run prints last: where it is, its headline metrics, and the commands that use it next."""
    from agnews.runs import MODEL_DIR

    lines = [f"Run directory: {run_dir}"]
    for split in ("val", "test"):
        if split in metrics:
            report = metrics[split]
            lines.append(f"  {split:<4} accuracy {report['accuracy']:.4f}  macro-F1 {report['f1_macro']:.4f}")
    if (run_dir / MODEL_DIR).is_dir():
        lines += [
            "Next:",
            f"  python -m agnews.export run={run_dir} quantize=int8",
            f"  python -m agnews.serve run={run_dir}",
            f"  python -m agnews.evaluation.robustness --run {run_dir}",
        ]
    return "\n".join(lines)


def _cli(entry=None) -> None:
    (entry or main)()
    from agnews.callbacks.sweep_status import FAILED_SWEEPS

    if FAILED_SWEEPS:
        print(f"Every job failed in: {', '.join(FAILED_SWEEPS)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _cli()
