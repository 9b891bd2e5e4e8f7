"""``python -m agnews.serve run=<run dir or bundle> port=3000 grpc_port=50051``: HTTP (BentoML), GraphQL and gRPC over
one run, until SIGINT/SIGTERM. Settings: ``conf/serve.yaml`` (every key can be overridden, e.g.
``batching.enabled=false auth.keys_file=keys.txt rate_limit.requests_per_second=20``); docs/serving.md.

This thin entry point is the only serving module that imports Hydra; :mod:`agnews.serving` itself does not.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from agnews import resolvers  # noqa: F401  (registers ${agnews.*} config resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from agnews.errors import AGNewsError
    from agnews.serving.launcher import serve
    from agnews.serving.settings import ServeSettings

    try:
        settings = ServeSettings.from_dict(OmegaConf.to_container(cfg, resolve=True))
        status = serve(settings)
    except AGNewsError as error:  # a bad path or setting: one line that says what to fix, no traceback
        print(f"agnews.serve: {error}", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
