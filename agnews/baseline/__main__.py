"""``python -m agnews.baseline [overrides]``: fit the TF-IDF baseline and write its run directory (docs/baseline.md).

Only Hydra and OmegaConf load before the config is composed (``--help`` and ``--cfg job`` stay fast); scikit-learn,
skl2onnx and onnxruntime load when a job runs. Options: ``conf/baseline.yaml``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)

log = logging.getLogger("agnews.baseline")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="baseline")
def main(cfg: DictConfig) -> float | None:
    from agnews.baseline.run import run_baseline
    from agnews.errors import AGNewsError

    try:
        metrics = run_baseline(cfg)
    except AGNewsError as error:
        # A problem the user can fix: the message, not a traceback.
        log.error("%s", error)
        print(f"agnews.baseline: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    split, key = str(cfg.optimized_metric).split("/")
    return metrics.get(split, {}).get(key)


if __name__ == "__main__":
    main()
