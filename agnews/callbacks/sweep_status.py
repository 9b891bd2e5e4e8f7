"""A multirun in which no job succeeded must exit non-zero.

:mod:`agnews.train` records a failed job and lets the sweep go on (the job returns NaN), so Hydra itself always exits
0. This Hydra callback (``hydra.callbacks.sweep_status`` in conf/hydra/default.yaml) reads each job's status from its
directory when the multirun ends, as the sweep summary does (works for any launcher), and the ``agnews.train`` entry
point exits 1 when no job finished. Hydra swallows exceptions raised in callbacks, hence the module-level record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Statuses of a job that did its work: finished, or stopped on purpose by a pruner.
SUCCEEDED = ("ok", "pruned")
# Sweep directories of this process's multiruns in which no job succeeded.
FAILED_SWEEPS: list[str] = []


class SweepStatusCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from agnews.sweeps.summary import collect_jobs

        sweep_dir = str(config.hydra.sweep.dir)
        statuses = [row["status"] for row in collect_jobs(Path(sweep_dir))]
        if statuses and not any(status in SUCCEEDED for status in statuses):
            log.error("All %d jobs of the multirun failed; see the error.txt of each job in %s", len(statuses), sweep_dir)
            FAILED_SWEEPS.append(sweep_dir)
