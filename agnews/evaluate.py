"""``python -m agnews.evaluate run=<run dir or bundle> [compare=<other>] [data=<csv folder>] [output_dir=...]``.

Only Hydra and OmegaConf load before the config is composed (``--help`` and ``--cfg job`` stay fast); the work lives in
:mod:`agnews.evaluation` (``evaluate_run``). Options: ``conf/evaluate/evaluate.yaml`` (its own folder: beside train.yaml, ``data=<folder>``
would select a config of the training ``data`` group); docs: ``docs/evaluation.md``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)

log = logging.getLogger("agnews.evaluate")

# Config keys that are Hydra/bookkeeping, not evaluation options.
NOT_OPTIONS = ("task_name", "paths")


@hydra.main(version_base="1.3", config_path="../conf/evaluate", config_name="evaluate")
def main(cfg: DictConfig) -> str:
    from agnews.errors import AGNewsError
    from agnews.evaluation.sections import evaluate_run, headline

    options = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_OPTIONS:
        options.pop(key, None)
    wandb_options = options.pop("wandb", None) or {}
    try:
        result = evaluate_run(**options)
    except AGNewsError as error:
        # A problem the user can fix: the message, not a traceback.
        log.error("%s", error)
        print(f"agnews.evaluate: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    paths = result["paths"]
    print(f"Report: {paths['html']}")
    print(f"Summary: {paths['markdown']}  numbers: {paths['json']}")
    for line in headline(result):
        print(f"  {line}")
    if wandb_options.pop("enabled", False):
        from agnews.tracking.evaluation import evaluation_to_wandb  # wandb only; no Lightning

        logged = evaluation_to_wandb(paths["html"].parent, options["run"], wandb_options, config=options)
        print(f"W&B: run {logged['run_id']} ({logged['mode']}) in group {logged['group']}, {len(logged['keys'])} keys")
    return str(paths["html"])


if __name__ == "__main__":
    main()
