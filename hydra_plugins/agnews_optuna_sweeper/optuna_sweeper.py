"""The Sweeper class Hydra instantiates; the work is done in :mod:`agnews.sweeps.optuna_sweeper` (imported lazily)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class AgnewsOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        try:
            import optuna  # noqa: F401
        except ImportError as error:
            raise ImportError("hydra/sweeper=agnews_optuna needs optuna: pip install -e '.[sweeps]'") from error
        from agnews.sweeps.optuna_sweeper import OptunaSweeperImpl

        self.impl = OptunaSweeperImpl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.impl.sweep(arguments)
