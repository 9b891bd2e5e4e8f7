"""OmegaConf resolvers used by the configs; importing this module registers them (no heavy imports)."""

from pathlib import Path

from omegaconf import OmegaConf

_REPO_ROOT = Path(__file__).resolve().parent.parent

# ${agnews.repo_root:}: the checkout holding conf/ (shared data and caches are found relative to it).
OmegaConf.register_new_resolver("agnews.repo_root", lambda: str(_REPO_ROOT), replace=True)
