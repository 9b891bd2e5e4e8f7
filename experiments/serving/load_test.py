"""Load test of `python -m agnews.serve` on loopback: requests/s and latency percentiles per protocol, concurrency and
batching mode, plus cold start (serve command -> /readyz answering 200).

For each batching mode (on, off) the server is started fresh (that start is the cold start measured), then each
concurrency level runs for a fixed time with closed-loop asyncio clients, each sending single-text requests back to
back (HTTP: POST /classify_batch {"texts": [one text]}, the adaptively batched endpoint; gRPC: Classify). Texts are the
real AG News test split, cycled. Any non-200 / non-OK answer or transport error counts as an error.

Targets (issue): batching >= 2x the requests/s of no batching at 32 clients; p99 <= 500 ms at 8 clients; 0 errors.
The client shares the machine's cores with the server: on 2 cores, run it when nothing else runs (the recorded load
average shows whether that held).

    # the quickstart run, exported to ONNX INT8 first (python -m agnews.export run=<run> quantize=int8)
    .venv/bin/python experiments/serving/load_test.py --run outputs/train/runs/<run> -- backend=onnx variant=int8
    # a few seconds, nothing recorded (a smoke test of the script itself)
    .venv/bin/python experiments/serving/load_test.py --run <run> --duration 3 --levels 1 4 --grpc-clients 4 --no-record
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = common.REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: str, batching: bool, overrides: list[str], log_path: Path) -> tuple[subprocess.Popen, str, str, float]:
    """Start the serve command; return (process, http base, grpc target, cold start seconds until /readyz is 200)."""
    import httpx

    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "agnews.serve", f"run={run}", f"port={port}", f"grpc_port={grpc_port}",
        f"batching.enabled={str(batching).lower()}", *overrides,
    ]
    env = {**os.environ, "AGNEWS_API_KEYS": ""}  # measure the model path, not authentication
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}); see {log_path}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base, f"127.0.0.1:{grpc_port}", time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if time.perf_counter() - started > 600:
            process.kill()
            raise SystemExit(f"the server was not ready within 600 s; see {log_path}")
        time.sleep(0.05)


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def summarize(latencies: list[float], errors: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


async def http_level(base: str, clients: int, seconds: float, texts: list[str]) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    reply = await client.post("/classify_batch", json={"texts": [texts[i % len(texts)]]})
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return summarize(latencies, errors, time.perf_counter() - began)


async def grpc_level(target: str, clients: int, seconds: float, texts: list[str]) -> dict:
    import grpc

    from agnews.serving._proto import classifier_pb2 as pb
    from agnews.serving._proto import classifier_pb2_grpc as pb_grpc

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await stub.Classify(pb.ClassifyRequest(text=texts[i % len(texts)]), timeout=60)
                    latencies.append(time.perf_counter() - started)
                except grpc.RpcError:
                    errors += 1
                i += clients

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return summarize(latencies, errors, time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory (or bundle/export folder) to serve")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level (fixed)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the first level (not recorded)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent HTTP clients")
    parser.add_argument("--grpc-clients", type=int, default=32)
    parser.add_argument("--no-record", action="store_true", help="print only; do not write results.json / RESULTS.md")
    parser.add_argument("overrides", nargs="*", help="serve settings after --, e.g. backend=onnx variant=int8")
    args = parser.parse_args()

    texts = common.read_test_split().texts[:2000]  # real AG News test texts, as the model sees them
    rows, cold_starts = [], {}
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    for batching in (True, False):
        mode = "on" if batching else "off"
        process, base, target, cold = start_server(args.run, batching, args.overrides, logs / f"agnews-load-{mode}.log")
        cold_starts[mode] = round(cold, 2)
        print(f"batching {mode}: ready in {cold:.1f} s", flush=True)
        try:
            asyncio.run(http_level(base, max(args.levels), args.warmup, texts))  # warm-up, includes BentoML's batch tuning
            for clients in args.levels:
                result = asyncio.run(http_level(base, clients, args.duration, texts))
                rows.append({"protocol": "http", "batching": mode, "clients": clients, **result})
                print(rows[-1], flush=True)
            if batching:
                result = asyncio.run(grpc_level(target, args.grpc_clients, args.duration, texts))
                rows.append({"protocol": "grpc", "batching": "n/a", "clients": args.grpc_clients, **result})
                print(rows[-1], flush=True)
        finally:
            stop_server(process)

    def rps(mode: str, clients: int) -> float:
        return next((r["rps"] for r in rows if r["protocol"] == "http" and r["batching"] == mode and r["clients"] == clients), 0.0)

    top = max(args.levels)
    speedup = round(rps("on", top) / rps("off", top), 2) if rps("off", top) else None
    p99_at_8 = next((r["p99_ms"] for r in rows if r["protocol"] == "http" and r["batching"] == "on" and r["clients"] == 8), None)
    checks = {
        f"batching speedup at {top} clients (target >= 2.0)": speedup,
        "p99 ms at 8 clients, batching on (target <= 500)": p99_at_8,
        "errors (target 0)": sum(r["errors"] for r in rows),
    }
    table = common.markdown_table(
        ["protocol", "batching", "clients", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
        [[r["protocol"], r["batching"], r["clients"], r["requests"], r["rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"]]
         for r in rows],
        align="lllrrrrrr",
    )
    body = (
        f"- Served: `{args.run}` with `{' '.join(args.overrides) or '(defaults)'}`; {args.duration:g} s per level, "
        f"single-text requests, closed-loop asyncio clients on the same machine\n"
        f"- Cold start (serve command -> /readyz 200): batching on {cold_starts['on']} s, off {cold_starts['off']} s\n\n"
        f"{table}\n\n" + "\n".join(f"- {name}: {value}" for name, value in checks.items())
    )
    print(body)
    if not args.no_record:
        common.record(HERE, {"run": args.run, "overrides": args.overrides, "duration_s": args.duration,
                             "cold_start_s": cold_starts, "rows": rows, "checks": checks}, body, "Serving load test")


if __name__ == "__main__":
    main()
