"""``python -m agnews.ensemble members=[<run>,<run>,...] method=<name>``: combine finished runs (docs/ensembles.md).

Only Hydra and OmegaConf load before the config is composed; numpy, scikit-learn and (when the method needs them)
xgboost or catboost load when the job runs.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="ensemble")
def main(cfg: DictConfig) -> float | None:
    from agnews.ensemble.run import run_ensemble

    metrics = run_ensemble(OmegaConf.to_container(cfg, resolve=True))
    return metrics.get("val", {}).get("accuracy")


if __name__ == "__main__":
    main()
