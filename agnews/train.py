"""``python -m agnews.train [overrides]``: compose the Hydra config and run one training job.

Only Hydra and OmegaConf are imported at module level, so ``--help`` and ``--cfg job`` stay fast: torch and
transformers load inside :func:`main`, when a job actually runs.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from agnews.pipeline import train

    metrics = train(cfg)
    # The return value is what sweepers optimise (Optuna reads it in -m runs).
    split, key = cfg.optimized_metric.split("/")
    return metrics.get(split, {}).get(key)


if __name__ == "__main__":
    main()
