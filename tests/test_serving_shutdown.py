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

# The slow requests are sized from a timed probe on this machine, so they are still in flight when the refusals are
# checked however fast the machine is (a fixed size finished too early on a faster CI machine).
MAX_CHARS = 6000
SLOW_TEXT = ("shares market profit striker election chip " * 200)[:MAX_CHARS]
PROBE_TEXTS = 200
MIN_TEXTS, MAX_TEXTS = 1000, 8000
TARGET_S = 20.0  # wanted length of one slow request


def _slow_request_size(served) -> int:
    """Texts per slow request for about ``TARGET_S`` seconds: the slower protocol's probe, scaled."""
    probe = [SLOW_TEXT] * PROBE_TEXTS
    started = time.monotonic()
    assert httpx.post(f"{served.http}/classify_batch", json={"texts": probe}, timeout=300).status_code == 200
    http_s = time.monotonic() - started
    started = time.monotonic()
    with served.channel() as channel:
        pb_grpc.ClassifierStub(channel).ClassifyBatch(pb.ClassifyBatchRequest(texts=probe), timeout=300)
    grpc_s = time.monotonic() - started
    per_text = max(http_s, grpc_s) / PROBE_TEXTS
    return max(MIN_TEXTS, min(MAX_TEXTS, int(TARGET_S / per_text)))


def _wait_for_log(served, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while line not in served.log():
        assert time.monotonic() < deadline, f"{line!r} never logged:\n{served.log()[-3000:]}"
        time.sleep(0.05)


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
        f"limits.max_texts={MAX_TEXTS}", f"limits.max_chars={MAX_CHARS}", "shutdown_grace_s=240",
        # one request is one batch, and BentoML's queue deadline is far away: the request is slow, not shed
        f"batching.max_batch_size={MAX_TEXTS}", "batching.max_latency_ms=240000",
    ) as served:
        descendants = _children(served.process.pid)
        assert descendants, "the BentoML server runs in child processes"
        n_texts = _slow_request_size(served)
        slow_texts = [SLOW_TEXT] * n_texts

        def http_call():
            reply = httpx.post(f"{served.http}/classify_batch", json={"texts": slow_texts}, timeout=300)
            results["http"] = (reply.status_code, len(reply.json()) if reply.status_code == 200 else reply.text)

        def grpc_call():
            with served.channel() as channel:
                reply = pb_grpc.ClassifierStub(channel).ClassifyBatch(pb.ClassifyBatchRequest(texts=slow_texts), timeout=300)
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
        _wait_for_log(served, "SIGTERM: refusing new connections")
        # new requests while draining: refused at once (connection refused / UNAVAILABLE), never served, never hanging
        asked = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            reply = httpx.post(f"{served.http}/classify", json={"text": "news"}, timeout=15)
            pytest.fail(f"a new HTTP request was served during shutdown: {reply.status_code}")
        with served.channel() as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(text="news"), timeout=15)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - asked < 5, "refusing new requests took too long"
        assert not {"http", "grpc"} <= set(results), f"the slow requests ({n_texts} texts) ended before the refusals were checked"

        for thread in threads:
            thread.join(300)
        assert results == {"http": (200, n_texts), "grpc": ("OK", n_texts)}
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
