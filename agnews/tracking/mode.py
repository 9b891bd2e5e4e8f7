"""W&B mode resolution without Lightning: used by the training logger, the evaluation report and the sweep summary."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from agnews.errors import ConfigError

MODES = ("online", "offline", "disabled")
_ENV_MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def has_api_key(environ: Mapping[str, str] | None = None) -> bool:
    """True when W&B has credentials: ``WANDB_API_KEY`` or a netrc entry for the W&B host (``WANDB_BASE_URL``)."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(env.get("NETRC") or Path(env.get("HOME") or Path.home()) / ".netrc")
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def resolve_mode(mode: str | None = "auto", environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if mode in MODES:
        return mode
    if mode not in (None, "auto"):
        raise ConfigError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if env.get("WANDB_MODE"):
        chosen = _ENV_MODE_ALIASES.get(env["WANDB_MODE"], env["WANDB_MODE"])
        if chosen not in MODES:
            raise ConfigError(f"WANDB_MODE={env['WANDB_MODE']!r} is not one of {MODES}")
        return chosen
    if str(env.get("WANDB_DISABLED", "")).lower() in ("1", "true", "yes"):
        return "disabled"
    return "online" if has_api_key(env) else "offline"
