"""One command, three protocols: the BentoML HTTP server (REST + GraphQL at /graphql, in its own process group) and the
gRPC server (in this process), over the same run; SIGINT/SIGTERM stops all of it gracefully.

Shutdown: gRPC refuses new RPCs at once (health turns NOT_SERVING) and lets those in flight finish; the BentoML server
gets SIGTERM, stops accepting connections and lets its requests in flight finish. Whatever is still running after
``shutdown_grace_s`` (plus a margin) is killed. If either server dies, the other is stopped too and the exit status is
non-zero.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from agnews.errors import ConfigError
from agnews.inference import resolve_model_path
from agnews.serving.access import setup_logging
from agnews.serving.core import choose_backend
from agnews.serving.settings import SETTINGS_ENV, ServeSettings

log = logging.getLogger("agnews.serving")

SERVICE_IMPORT = "agnews.serving.service:AGNewsClassifier"
KILL_MARGIN_S = 10.0


def bentoml_command(settings: ServeSettings) -> list[str]:
    return [
        sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT,
        "--host", settings.host, "--port", str(settings.port),
        # the folder that holds the agnews package, so the import works from any current directory
        "--working-dir", str(Path(__file__).resolve().parents[2]),
    ]


def bentoml_env(settings: ServeSettings, environ: dict | None = None) -> dict:
    env = dict(os.environ if environ is None else environ)
    env[SETTINGS_ENV] = settings.to_json()
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage reporting from a research server
    return env


def wait_ready(url: str, timeout: float, alive=lambda: True) -> bool:
    """Poll ``url`` (``/readyz``) until it answers 200, the deadline passes, or ``alive()`` turns False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    return False


def serve(settings: ServeSettings, ready_timeout: float = 600.0) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until a server fails (non-zero)."""
    started = time.perf_counter()
    setup_logging(settings.log_level)
    if not settings.run:
        raise ConfigError("nothing to serve: set run=<run dir, bundle, model/ or export/ folder>")
    # A wrong path fails here, with one message, before any process starts.
    resolve_model_path(settings.run, choose_backend(settings.run, settings.backend))

    stopping = threading.Event()
    received: list[str] = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = subprocess.Popen(bentoml_command(settings), env=bentoml_env(settings), start_new_session=True)
    grpc_server = None
    status = 0
    try:
        if settings.grpc_port is not None:
            from agnews.serving.core import ClassifierCore
            from agnews.serving.grpc_server import GrpcServer

            grpc_server = GrpcServer(ClassifierCore.load(settings), settings)
        base = f"http://{settings.host}:{settings.port}"
        if wait_ready(f"{base}/readyz", ready_timeout, alive=lambda: http.poll() is None and not stopping.is_set()):
            log.info(
                "serving %s: HTTP %s (OpenAPI %s/docs.json, GraphQL %s/graphql)%s; ready in %.1f s",
                settings.run, base, base, base,
                f", gRPC {settings.host}:{grpc_server.port}" if grpc_server else "", time.perf_counter() - started,
            )
        elif http.poll() is None and not stopping.is_set():
            log.warning("%s/readyz did not answer 200 within %.0f s; still waiting for the HTTP server", base, ready_timeout)
        while not stopping.is_set() and http.poll() is None:
            stopping.wait(0.5)
        if http.poll() is not None and not stopping.is_set():
            log.error("the HTTP server exited with status %s; stopping", http.returncode)
            status = http.returncode or 1
    except BaseException:
        status = 1
        raise
    finally:
        log.info("%s: stopping (requests in flight get %.0f s)", ",".join(received) or "shutdown", settings.shutdown_grace_s)
        grpc_done = grpc_server.stop(settings.shutdown_grace_s) if grpc_server else None
        _stop_process_group(http, settings.shutdown_grace_s + KILL_MARGIN_S)
        if grpc_done is not None:
            grpc_done.wait(settings.shutdown_grace_s + KILL_MARGIN_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")
    return status


def _stop_process_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the server (its arbiter stops its workers gracefully), then SIGKILL its group if it overstays."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the HTTP server did not stop within %.0f s; killing it", timeout)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftover workers of the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
