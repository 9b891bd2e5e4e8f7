"""Who may call, how often, and the record of each call: API keys, a per-key token bucket, request ids, JSON logs.

Keys come from an environment variable and/or a file (``name:key`` or ``key`` per entry); they are compared in constant
time and never logged: a caller is logged by the key's name, or by ``key-<first 8 hex of its SHA-256>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from agnews.errors import ConfigError
from agnews.serving.settings import Auth, RateLimit

access_log = logging.getLogger("agnews.serving.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_ID_HEADER = "x-request-id"
API_KEY_HEADER = "x-api-key"


def request_id(offered: str | None = None) -> str:
    """The caller's own id when it is a short safe token (so it can be traced end to end), else a new one."""
    if offered and _REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def log_event(**fields) -> None:
    """One JSON line per request on the ``agnews.serving.access`` logger."""
    access_log.info(json.dumps({"ts": round(time.time(), 3), **fields}, ensure_ascii=False, default=str))


def setup_logging(level: str = "INFO") -> None:
    """Plain message lines on stderr for agnews.serving (the access lines are JSON already); idempotent."""
    logger = logging.getLogger("agnews.serving")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_agnews_serving", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._agnews_serving = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


# ---- API keys ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Key:
    name: str
    digest: bytes  # SHA-256 of the key: what is kept and compared


class ApiKeys:
    """The configured keys. ``enabled`` is False when none is configured (then every caller is let in)."""

    def __init__(self, entries: list[tuple[str | None, str]]):
        keys = []
        for name, key in entries:
            digest = hashlib.sha256(key.encode("utf-8")).digest()
            keys.append(_Key(name or f"key-{digest.hex()[:8]}", digest))
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, auth: Auth, environ: dict | None = None) -> "ApiKeys":
        environ = os.environ if environ is None else environ
        entries: list[tuple[str | None, str]] = []
        raw_env = environ.get(auth.keys_env, "") if auth.keys_env else ""
        entries += [_entry(item, f"${auth.keys_env}") for item in raw_env.split(",") if item.strip()]
        if auth.keys_file:
            path = Path(auth.keys_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"auth.keys_file={path}: no such file (one key a line, `name:key` or `key`)")
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    entries.append(_entry(line, str(path)))
        return cls(entries)

    def identify(self, presented: str | None) -> str | None:
        """The name of the key ``presented`` matches, else None. Every key is compared (no early exit)."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key.name
        return found


def _entry(item: str, where: str) -> tuple[str | None, str]:
    item = item.strip()
    name, sep, key = item.partition(":")
    if not sep:
        name, key = None, item
    name, key = (name.strip() if name else None), key.strip()
    if len(key) < 8:
        # a typo'd or empty entry must not become a guessable key; the message names the source, never the key
        raise ConfigError(f"an API key from {where} has fewer than 8 characters; use long random keys")
    return name, key


def bearer_or_header(authorization: str | None, api_key: str | None) -> str | None:
    """The key a caller sent: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    if api_key:
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


# ---- rate limiting ------------------------------------------------------------------------------------------------------
class RateLimiter:
    """A token bucket per caller: ``rate`` requests a second on average, bursts of up to ``burst``."""

    def __init__(self, settings: RateLimit, clock=time.monotonic):
        self.rate = float(settings.requests_per_second)
        self.burst = float(settings.burst if settings.burst is not None else max(1.0, 2.0 * self.rate))
        self.per_key = {name: float(rate) for name, rate in settings.per_key.items()}
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill time)
        self._lock = threading.Lock()

    def limit(self, caller: str) -> tuple[float, float]:
        """(requests per second, burst) for ``caller``; a rate of 0 means unlimited."""
        if caller in self.per_key:
            rate = self.per_key[caller]
            return rate, max(1.0, 2.0 * rate)
        return self.rate, self.burst

    def acquire(self, caller: str) -> float:
        """0.0 when the request may go ahead (a token is taken), else the seconds until the next token."""
        rate, burst = self.limit(caller)
        if rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(caller, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow without bound
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            return (1.0 - tokens) / rate


@dataclass
class Decision:
    """The outcome of the access check of one request."""

    status: str  # "ok", "unauthenticated", "rate_limited"
    caller: str
    message: str = ""
    retry_after: float = 0.0


class AccessControl:
    """Authentication then rate limiting, shared by the HTTP middleware and the gRPC interceptor."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter):
        self.keys = keys
        self.limiter = limiter

    @classmethod
    def from_settings(cls, auth: Auth, rate_limit: RateLimit) -> "AccessControl":
        return cls(ApiKeys.load(auth), RateLimiter(rate_limit))

    def check(self, presented_key: str | None, client: str) -> Decision:
        if self.keys.enabled:
            if not presented_key:
                return Decision("unauthenticated", "anonymous", "an API key is required: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`")
            name = self.keys.identify(presented_key)
            if name is None:
                return Decision("unauthenticated", "unknown-key", "the API key is not valid; check the key you were given")
            caller = name
        else:
            caller = f"client:{client}"
        wait = self.limiter.acquire(caller)
        if wait > 0:
            rate, burst = self.limiter.limit(caller)
            return Decision(
                "rate_limited", caller,
                f"rate limit of {rate:g} requests/s (burst {burst:g}) for {caller} exceeded; retry in {wait:.2f} s",
                retry_after=wait,
            )
        return Decision("ok", caller)
