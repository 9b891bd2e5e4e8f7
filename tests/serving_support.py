"""Start ``python -m agnews.serve`` for real on free loopback ports and talk to it (the serving tests share this)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300  # two processes import torch and load the model on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    process: subprocess.Popen
    http: str  # base URL
    grpc_target: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)


def _grpc_serving(target: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def launched(run: Path, log_path: Path, *overrides: str, env: dict | None = None, grpc_on: bool = True):
    """``python -m agnews.serve run=<run> port=<free> grpc_port=<free> *overrides``, ready on both protocols; stopped
    with SIGTERM (and reaped) on exit. Its output goes to ``log_path``."""
    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "agnews.serve", f"run={run}", f"port={port}",
        f"grpc_port={grpc_port if grpc_on else 'null'}", *overrides,
    ]
    full_env = {**os.environ, **(env or {})}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT)
    served = Served(process, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"agnews.serve exited with {process.returncode}:\n{served.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agnews.serve not ready after {START_TIMEOUT_S} s:\n{served.log()[-4000:]}")
            try:
                ready = httpx.get(f"{served.http}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and (not grpc_on or _grpc_serving(served.grpc_target)):
                break
            time.sleep(0.5)
        yield served
    finally:
        stop(process)


def stop(process: subprocess.Popen, timeout: float = 90) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
