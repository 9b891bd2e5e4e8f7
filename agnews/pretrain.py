"""``python -m agnews.pretrain [overrides]``: domain-adaptive pre-training (continued masked-LM training) as a run.

Composes ``conf/pretrain.yaml`` (the training config's groups plus a ``pretrain`` section) and runs
:func:`agnews.pretraining.run.pretrain`: masked-LM training on the training split's texts (never the test split),
``train/mlm_loss`` and ``val/mlm_loss`` logged, a run directory whose ``model/`` a classifier fine-tunes from with
``python -m agnews.train model.pretrained=<run>``. Only Hydra and OmegaConf load before a job runs (``--help`` stays
fast). A multirun job that fails is recorded like ``agnews.train``'s (``error.txt``, the sweep goes on).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)

log = logging.getLogger("agnews.pretrain")


def _objective(cfg: DictConfig) -> float | None:
    from agnews.pretraining.run import pretrain

    metrics = pretrain(cfg)
    val = metrics["val"]
    print(
        f"Run directory: {Path(cfg.paths.output_dir).resolve()}\n"
        f"  val/mlm_loss {val['mlm_loss_before']:.4f} -> {val['mlm_loss']:.4f}\n"
        f"Next:\n  python -m agnews.train model.pretrained={Path(cfg.paths.output_dir).resolve()} ...",
        flush=True,
    )
    split, key = cfg.optimized_metric.split("/")
    return metrics.get(split, {}).get(key)


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> float | None:
    from agnews.errors import AGNewsError
    from agnews.train import _run_job

    try:
        return _run_job(cfg, _objective)
    except AGNewsError as error:  # a single run (a multirun job records its failure and the sweep goes on)
        # A problem the user can fix (bad config, data, model): the message, not a traceback.
        log.error("%s", error)
        print(f"agnews.pretrain: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    from agnews.train import _cli

    _cli(main)
