"""Graceful shutdown of ``python -m agnews.serve``: on SIGTERM the requests in flight (HTTP and gRPC) complete, new
ones are refused at once (a connection error or UNAVAILABLE, not a hang), and the command exits 0 with nothing left
running."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import httpx
import pytest
from serving_support import launched

from agnews.serving._proto import classifier_pb2 as pb
from agnews.serving._proto import classifier_pb2_grpc as pb_grpc

# Seconds of tokenizing for the tiny model (6 M characters): long enough to be in flight when SIGTERM lands.
N_TEXTS = 1000
MAX_CHARS = 6000
SLOW_TEXTS = [("shares market profit striker election chip " * 200)[:MAX_CHARS]] * N_TEXTS


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), to prove nothing outlives the command."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


@pytest.fixture(scope="module")
def run(tiny_run_factory):
    return tiny_run_factory("minilm")


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(run, tmp_path):
    results: dict[str, object] = {}
    with launched(
        run, tmp_path / "serve.log",
        f"limits.max_texts={N_TEXTS}", f"limits.max_chars={MAX_CHARS}", "shutdown_grace_s=120",
        # one request is one batch, and BentoML's queue deadline is far away: the request is slow, not shed
        f"batching.max_batch_size={N_TEXTS}", "batching.max_latency_ms=120000",
    ) as served:
        descendants = _children(served.process.pid)
        assert descendants, "the BentoML server runs in child processes"

        def http_call():
            reply = httpx.post(f"{served.http}/classify_batch", json={"texts": SLOW_TEXTS}, timeout=300)
            results["http"] = (reply.status_code, len(reply.json()) if reply.status_code == 200 else reply.text)

        def grpc_call():
            with served.channel() as channel:
                reply = pb_grpc.ClassifierStub(channel).ClassifyBatch(pb.ClassifyBatchRequest(texts=SLOW_TEXTS), timeout=300)
            results["grpc"] = ("OK", len(reply.predictions))

        threads = [threading.Thread(target=http_call), threading.Thread(target=grpc_call)]
        for thread in threads:
            thread.start()
        # wait until the HTTP request is being served (BentoML's in-progress gauge), then give gRPC a moment too
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                metrics = httpx.get(f"{served.http}/metrics", timeout=5).text
            except httpx.TimeoutException:
                # The one worker is busy tokenizing the slow batch and cannot answer /metrics: that is the request in
                # flight (nothing else was sent), so it counts as seen, provided neither call has returned yet.
                if not results:
                    break
                raise
            if any(line.startswith("bentoml_service_request_in_progress") and 'endpoint="/classify_batch"' in line
                   and float(line.rsplit(" ", 1)[1]) >= 1 for line in metrics.splitlines()):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the slow request never showed as in progress")
        time.sleep(0.5)
        assert not results, f"the requests finished before SIGTERM; make them slower: {results}"

        served.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        # new requests while draining: refused at once (connection refused / UNAVAILABLE), never served, never hanging
        asked = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            reply = httpx.post(f"{served.http}/classify", json={"text": "news"}, timeout=15)
            pytest.fail(f"a new HTTP request was served during shutdown: {reply.status_code}")
        with served.channel() as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(text="news"), timeout=15)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - asked < 5, "refusing new requests took too long"
        assert not {"http", "grpc"} <= set(results), "the slow requests ended before the refusals were checked"

        for thread in threads:
            thread.join(300)
        assert results == {"http": (200, N_TEXTS), "grpc": ("OK", N_TEXTS)}
        assert served.process.wait(150) == 0
    assert "SIGTERM: stopping" in served.log() and "stopped" in served.log().splitlines()
    assert "SIGTERM: refusing new connections (1 listening socket(s) shut)" in served.log()
    time.sleep(1)
    assert not [pid for pid in descendants if os.path.exists(f"/proc/{pid}") and _is_alive(pid)]


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
