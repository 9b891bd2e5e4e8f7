"""Is the Hugging Face hub reachable? A quick probe before anything asks the hub for a model or dataset.

Without network and without ``HF_HUB_OFFLINE=1``, huggingface_hub retries for ~24 s before failing. One short request
to the endpoint (``HF_ENDPOINT``, default https://huggingface.co; proxies from the environment as the hub libraries
use them), bounded by ``AGNEWS_HUB_PROBE_TIMEOUT`` seconds (default 3) including name resolution, answers the same
question in a moment. Any HTTP answer, even an error status, counts as reachable. The result is cached per endpoint
for the life of the process. Callers skip the probe for local paths and in offline mode.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_ENV = "AGNEWS_HUB_PROBE_TIMEOUT"
DEFAULT_TIMEOUT = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}
# endpoint -> None when reachable, else the reason it is not
_RESULTS: dict[str, str | None] = {}
_LOCK = threading.Lock()


def hub_offline(*extra: str) -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (and any ``extra`` variable), read now (huggingface_hub reads them once,
    at import)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *extra)
    return any(os.environ.get(name, "").upper() in _TRUE for name in names)


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def probe_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {raw!r}")
    return value


def _request(endpoint: str, timeout: float, result: list) -> None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/", method="HEAD"), timeout=timeout).close()
        result.append(None)
    except urllib.error.HTTPError:  # the server answered: reachable
        result.append(None)
    except Exception as exc:  # noqa: BLE001  (DNS, refused, TLS, timeout: all mean "not usable now")
        reason = getattr(exc, "reason", exc)
        result.append(f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason))


def unreachable_reason(endpoint: str | None = None) -> str | None:
    """None when the hub endpoint answers, else why not (cached per endpoint)."""
    endpoint = endpoint or hub_endpoint()
    with _LOCK:
        if endpoint in _RESULTS:
            return _RESULTS[endpoint]
        timeout = probe_timeout()
        result: list = []
        # A thread bounds the whole probe: the socket timeout does not cover a hanging DNS lookup.
        worker = threading.Thread(target=_request, args=(endpoint, timeout, result), daemon=True)
        worker.start()
        worker.join(timeout + 0.5)
        reason = result[0] if result else f"no answer within {timeout:g} s"
        _RESULTS[endpoint] = reason
        return reason


def describe_unreachable(reason: str, endpoint: str | None = None) -> str:
    return f"the Hugging Face hub ({endpoint or hub_endpoint()}) is unreachable ({reason})"


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode for the duration of a load from the cache. ``local_files_only`` alone is not
    enough: transformers still asks the hub for optional files (``adapter_config.json``), with the same retries."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
