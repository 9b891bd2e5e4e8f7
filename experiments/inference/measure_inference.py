"""Inference speed and accuracy of one model under four backends: PyTorch fp32, PyTorch bf16 (autocast), ONNX Runtime
fp32 (ORT-optimized graph) and ONNX Runtime INT8 (dynamic quantisation), on the run's full test split.

The model is exported through the public entry point (``python -m agnews.export run=<run> quantize=int8``, in a
subprocess) and every backend predicts through :class:`agnews.inference.Predictor` (tokenization and length-sorted
batching included in the timings). Per backend: examples/s at batch 64 over the whole split (which also gives its
accuracy), examples/s and p50/p99 latency at batch 1 (one ``predict_proba([text])`` call per text, over the first
``--batch1-rows`` texts), and INT8's prediction agreement with fp32. Threads: ``--threads`` (default 2) for torch
and ONNX Runtime alike.

Targets (issue): ORT INT8 >= 2x PyTorch bf16 and >= 5x PyTorch fp32 at batch 64, with <= 0.3 pt accuracy loss.

    .venv/bin/python experiments/inference/measure_inference.py --run experiments/ensemble/runs/minilm_q42
    .venv/bin/python experiments/inference/measure_inference.py --run <run> --smoke     # 256 rows, nothing recorded
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402  (imports no torch: the thread settings below still apply)

HERE = Path(__file__).resolve().parent

BACKENDS = {
    "pytorch_fp32": {"backend": "torch", "precision": "fp32"},
    "pytorch_bf16": {"backend": "torch", "precision": "bf16"},
    "ort_fp32_optimized": {"backend": "onnx", "variant": "optimized"},
    "ort_int8": {"backend": "onnx", "variant": "int8"},
}
TARGETS = {"int8_vs_bf16": 2.0, "int8_vs_fp32": 5.0, "max_accuracy_loss_pt": 0.3}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a finished run with model/ (e.g. the quickstart MiniLM)")
    parser.add_argument("--export-dir", type=Path, help="where to export (default: a temporary folder)")
    parser.add_argument("--reuse-export", action="store_true", help="use --export-dir as it is if it holds an export")
    parser.add_argument("--rows", type=int, help="limit the test rows (default: all)")
    parser.add_argument("--batch1-rows", type=int, default=1000, help="texts timed one at a time per backend")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--smoke", action="store_true", help="256 rows, 32 batch-1 texts, nothing recorded")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to results.json")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.batch1_rows, args.no_record = args.rows or 256, min(args.batch1_rows, 32), True
    return args


def export(run: Path, target: Path, reuse: bool) -> tuple[Path, float | None]:
    """Export through the CLI (what a user runs); returns the folder and the wall time of the command."""
    from agnews.runs import EXPORT_INFO_FILE

    if reuse and (target / EXPORT_INFO_FILE).is_file():
        return target, None
    child = common.run_python(["-m", "agnews.export", f"run={run}", "quantize=int8", f"output_dir={target}",
                               f"hydra.run.dir={target.parent / '.export_logs'}"], log=target.parent / ".export.log")
    if not child.ok:
        raise SystemExit(f"export failed:\n{child.tail(4000)}")
    return target, round(child.seconds, 1)


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def measure(name: str, path: Path, options: dict, texts: list[str], labels, batch1_rows: int) -> dict:
    import numpy as np

    from agnews.inference import Predictor

    batched = Predictor.from_path(path, batch_size=64, **options)
    batched.predict_proba(texts[:64])  # warm-up: allocations, ORT's first-run planning, autocast caches
    start = time.perf_counter()
    probs = batched.predict_proba(texts)
    seconds = time.perf_counter() - start
    preds = probs.argmax(axis=1)
    single = Predictor.from_path(path, batch_size=1, **options)
    for text in texts[:8]:
        single.predict_proba([text])
    latencies = []
    for text in texts[:batch1_rows]:
        t0 = time.perf_counter()
        single.predict_proba([text])
        latencies.append(time.perf_counter() - t0)
    result = {
        "backend": name,
        "describe": {k: v for k, v in batched.describe().items() if k in ("backend", "precision", "file", "providers")},
        "batch64_examples_per_s": round(len(texts) / seconds, 1),
        "batch64_seconds": round(seconds, 2),
        "batch1_examples_per_s": round(len(latencies) / sum(latencies), 1),
        "batch1_p50_ms": round(1000 * percentile(latencies, 50), 2),
        "batch1_p99_ms": round(1000 * percentile(latencies, 99), 2),
        "batch1_rows": len(latencies),
        "accuracy": round(float((preds == np.asarray(labels)).mean()), 4),
    }
    print(f"{name}: {result}", flush=True)
    return {**result, "_preds": preds}


def main() -> None:
    args = parse_args()
    # Thread counts must be fixed before torch / onnxruntime start their pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["AGNEWS_ORT_THREADS"] = str(args.threads)
    import torch

    from agnews.data.run_splits import load_run_split
    from agnews.runs import EXPORT_DIR, EXPORT_INFO_FILE, load_run

    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    test = load_run_split(run, "test")
    texts, labels = test.texts[: args.rows], test.labels[: args.rows]
    with tempfile.TemporaryDirectory(prefix="agnews-inference-") as tmp:
        target = args.export_dir or Path(tmp) / EXPORT_DIR
        export_dir, export_seconds = export(run.path, target.absolute(), args.reuse_export)
        export_info = json.loads((export_dir / EXPORT_INFO_FILE).read_text())
        results = {}
        for name in args.backends:
            options = BACKENDS[name]
            path = run.path if options["backend"] == "torch" else export_dir
            results[name] = measure(name, path, options, texts, labels, args.batch1_rows)

    summary = {}
    if {"ort_int8", "pytorch_fp32"} <= set(results):
        int8, fp32 = results["ort_int8"], results["pytorch_fp32"]
        summary["int8_speedup_vs_pytorch_fp32_b64"] = round(int8["batch64_examples_per_s"] / fp32["batch64_examples_per_s"], 2)
        summary["int8_accuracy_change_pt_vs_pytorch_fp32"] = round(100 * (int8["accuracy"] - fp32["accuracy"]), 2)
        summary["int8_agreement_with_pytorch_fp32"] = round(float((int8["_preds"] == fp32["_preds"]).mean()), 4)
    if {"ort_int8", "pytorch_bf16"} <= set(results):
        summary["int8_speedup_vs_pytorch_bf16_b64"] = round(
            results["ort_int8"]["batch64_examples_per_s"] / results["pytorch_bf16"]["batch64_examples_per_s"], 2
        )
    if {"ort_int8", "ort_fp32_optimized"} <= set(results):
        summary["int8_agreement_with_ort_fp32"] = round(
            float((results["ort_int8"]["_preds"] == results["ort_fp32_optimized"]["_preds"]).mean()), 4
        )
        summary["int8_accuracy_change_pt_vs_ort_fp32"] = round(
            100 * (results["ort_int8"]["accuracy"] - results["ort_fp32_optimized"]["accuracy"]), 2
        )
    checks = {
        "int8_ge_2x_bf16": summary.get("int8_speedup_vs_pytorch_bf16_b64", 0) >= TARGETS["int8_vs_bf16"],
        "int8_ge_5x_fp32": summary.get("int8_speedup_vs_pytorch_fp32_b64", 0) >= TARGETS["int8_vs_fp32"],
        "int8_accuracy_loss_le_0.3pt": -summary.get("int8_accuracy_change_pt_vs_pytorch_fp32", -99)
        <= TARGETS["max_accuracy_loss_pt"],
    }
    rows = [
        [r["backend"], r["batch64_examples_per_s"], r["batch1_examples_per_s"], r["batch1_p50_ms"], r["batch1_p99_ms"],
         f"{100 * r['accuracy']:.2f}"]
        for r in results.values()
    ]
    table = common.markdown_table(
        ["backend", "ex/s @ batch 64", "ex/s @ batch 1", "p50 ms @ 1", "p99 ms @ 1", "accuracy %"], rows
    )
    body = (
        f"Run `{run.path}` ({run.model_info.get('family')}, max_length {run.model_info.get('max_length')}); "
        f"{len(texts)} test rows at batch 64, {min(len(texts), args.batch1_rows)} at batch 1; {args.threads} threads. "
        f"Export: {export_seconds} s; default variant `{export_info['default']}`; fused "
        f"{export_info.get('optimizer', {}).get('fused_ops')}.\n\n{table}\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in summary.items())
        + "\n- targets met: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in checks.items())
    )
    print("\n" + body)
    if args.no_record:
        return
    payload = {
        "run": str(run.path),
        "rows": len(texts),
        "batch1_rows": min(len(texts), args.batch1_rows),
        "threads": args.threads,
        "export_seconds": export_seconds,
        "export": {k: export_info.get(k) for k in ("default", "optimizer", "quantization", "parity", "versions")},
        "results": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()},
        "summary": summary,
        "targets": TARGETS,
        "targets_met": checks,
    }
    common.record(HERE, payload, body, "Inference: PyTorch vs ONNX Runtime (fp32, INT8)")


if __name__ == "__main__":
    main()
