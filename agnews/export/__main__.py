"""``python -m agnews.export run=<run dir> [format=onnx|tensorrt] [quantize=none|int8] [output_dir=...]``.

Only Hydra and OmegaConf load before the config is composed (``--help`` and ``--cfg job`` stay fast); torch, onnx and
onnxruntime load inside :func:`main`. Options: ``conf/export.yaml``; docs: ``docs/export.md``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)

log = logging.getLogger("agnews.export")

# Config keys that are Hydra/bookkeeping, not export options.
NOT_OPTIONS = ("task_name", "paths")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
def main(cfg: DictConfig) -> str:
    from agnews.errors import AGNewsError
    from agnews.export.pipeline import export_run

    options = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_OPTIONS:
        options.pop(key, None)
    try:
        target = export_run(**options)
    except AGNewsError as error:
        # A problem the user can fix: the message, not a traceback.
        log.error("%s", error)
        print(f"agnews.export: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(target)
    return str(target)


if __name__ == "__main__":
    main()
