"""Ensembles of the finished member runs, measured through the public entry point.

Members: the runs under ``--runs-dir`` (default ``experiments/ensemble/runs/``: minilm_q42, minilm_full, minilm_q7,
student3, tfidf — whichever finished; at least ``--min-members``), trained by ``train_members.py`` on one validation
split (data.seed=42, 1,000 rows) and scored on the full 7,600-row test split. For every method this script runs

    python -m agnews.ensemble members=[...] method=<method> hydra.run.dir=<runs-dir>/ens_<method>

in a subprocess and reports: val and test accuracy / macro-F1 (val of stacking, weighted and bma is out-of-fold:
k-fold cross-fitting; of the two votes in-sample, nothing is fitted), a paired bootstrap 95 % CI (``--bootstrap`` resamples of the test rows, seeded) of the ensemble's test
accuracy minus the best member's (best by test accuracy: the strictest comparison), and the bundle's cold load: a fresh
interpreter timing ``import agnews.inference``, ``Predictor.from_path(<run>/bundle)`` (checksums included) and a first
``predict_proba`` on ``--load-texts`` test texts, with its peak RSS; those texts' bundle probabilities are compared with
the run's stored ones (transformers members load at ``--precision``; the members scored their stored predictions under
bf16 autocast, so fp32 agrees closely, not exactly). Per member: val/test accuracy and the training wall time recorded
in ``members.json`` by train_members.py.

Targets (issue): best ensemble >= best member + 0.5 pt test accuracy; >= 93.5 % test accuracy. The "chosen" ensemble is
the method with the best *validation* accuracy (choosing by test would be optimistic); the best-by-test is shown too.

    .venv/bin/python experiments/ensemble/measure_ensembles.py [--methods ...] [--members ...] [--min-members 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from agnews.runs import RunFormatError, load_run  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = common.REPO_ROOT
MEMBERS = ["minilm_q42", "minilm_full", "minilm_q7", "student3", "tfidf"]
METHODS = ["hard_vote", "soft_vote", "weighted", "bma", "stacking_logreg", "stacking_xgboost", "stacking_catboost"]
TARGET_GAIN_PT, TARGET_ACCURACY = 0.5, 0.935

COLD_LOAD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from agnews.inference import Predictor
t1 = time.perf_counter()
predictor = Predictor.from_path(sys.argv[1], precision=sys.argv[2])
t2 = time.perf_counter()
texts = json.loads(open(sys.argv[3], encoding="utf-8").read())
probs = predictor.predict_proba(texts)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "from_path_s": t2 - t1, "first_predict_s": t3 - t2,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "probs": probs.tolist(),
                  "members": [(m["name"], m.get("backend")) for m in predictor.describe()["members"]]}))
"""


def find_members(runs_dir: Path, names: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    found, skipped = {}, {}
    for name in names:
        try:
            run = load_run(runs_dir / name)
            missing = [s for s in ("val", "test") if not run.predictions_path(s).is_file()]
            if missing:
                raise RunFormatError(f"no stored predictions for {missing}")
            found[name] = run.path
        except RunFormatError as exc:
            skipped[name] = str(exc).splitlines()[0]
    return found, skipped


def run_method(method: str, members: dict[str, Path], runs_dir: Path, overrides: list[str]) -> dict:
    out = runs_dir / f"ens_{method}"
    listed = ",".join(f"'{common.rel(p)}'" for p in members.values())
    args = [f"members=[{listed}]", f"method={method}", f"hydra.run.dir={common.rel(out)}", *overrides]
    print(f"[{common.now()}] python -m agnews.ensemble {' '.join(args)}", flush=True)
    child = common.run_python(["-m", "agnews.ensemble", *args], log=runs_dir / f".ens_{method}.log")
    entry = {"method": method, "command": "python -m agnews.ensemble " + " ".join(args), "run_dir": str(out),
             "cli_wall_s": round(child.seconds, 1), "returncode": child.rc}
    if not child.ok:
        entry["error_tail"] = child.tail()
        print(f"  FAILED ({child.rc})\n{entry['error_tail']}", flush=True)
    return entry


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int, seed: int) -> dict:
    """Mean and 95 % percentile CI of accuracy(a) - accuracy(b) over resamples of the same test rows (paired)."""
    rng = np.random.default_rng(seed)
    diff = correct_a.astype(np.float64) - correct_b.astype(np.float64)
    stats = np.empty(resamples)
    for start in range(0, resamples, 200):  # chunks keep the index matrix small
        count = min(200, resamples - start)
        rows = rng.integers(0, len(diff), size=(count, len(diff)))
        stats[start : start + count] = diff[rows].mean(axis=1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return {
        "diff_pt": round(100 * float(diff.mean()), 2),
        "ci95_pt": [round(100 * float(low), 2), round(100 * float(high), 2)],
        "resamples": resamples,
        "seed": seed,
    }


def texts_of(run_dir: Path, ids: list[str]) -> list[str]:
    """The texts of test ``ids``, from the data folder the member run read (its resolved config)."""
    split = common.read_test_split(load_run(run_dir).config["data"]["data_dir"])
    by_id = dict(zip(split.ids, split.texts))
    return [by_id[i] for i in ids]


def cold_load(bundle: Path, texts_file: Path, precision: str, stored: np.ndarray) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", COLD_LOAD, str(bundle), precision, str(texts_file)], cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    probs = np.asarray(result.pop("probs"))
    return {
        "process_wall_s": round(wall, 2),
        **{k: round(v, 3) for k, v in result.items() if k.endswith("_s")},
        "peak_rss_mib": round(result["peak_rss_mib"], 1),
        "member_backends": result["members"],
        "texts": len(probs),
        "max_abs_diff_vs_stored": float(np.abs(probs - stored).max()),
        "argmax_agreement_vs_stored": float((probs.argmax(axis=1) == stored.argmax(axis=1)).mean()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=HERE / "runs")
    parser.add_argument("--members", nargs="+", default=MEMBERS)
    parser.add_argument("--min-members", type=int, default=4)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-texts", type=int, default=32, help="test texts for the cold-load first prediction")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="transformers members' precision")
    parser.add_argument("--members-json", type=Path, default=HERE / "members.json")
    parser.add_argument("--results-dir", type=Path, default=HERE, help="where results.json / RESULTS.md go")
    parser.add_argument("--no-record", action="store_true", help="print, do not write results.json / RESULTS.md")
    parser.add_argument("overrides", nargs="*", help="extra agnews.ensemble overrides for every method (after --)")
    args = parser.parse_args()

    members, skipped = find_members(args.runs_dir, args.members)
    for name, reason in skipped.items():
        print(f"member {name} skipped: {reason}", flush=True)
    if len(members) < args.min_members:
        raise SystemExit(f"{len(members)} finished member runs ({sorted(members)}); at least {args.min_members} needed")
    trained = json.loads(args.members_json.read_text()) if args.members_json.is_file() else {}

    runs = {name: load_run(path) for name, path in members.items()}
    test = {name: run.predictions("test") for name, run in runs.items()}
    ids = test[next(iter(test))].ids
    member_rows = {}
    for name, run in runs.items():
        metrics = run.metrics
        member_rows[name] = {
            "run_dir": common.rel(run.path),
            "task": run.task,
            "val_accuracy": metrics["val"]["accuracy"], "val_f1_macro": metrics["val"]["f1_macro"],
            "test_accuracy": metrics["test"]["accuracy"], "test_f1_macro": metrics["test"]["f1_macro"],
            "train_wall_s": (trained.get(name) or {}).get("wall_s"),
        }
    best_name = max(member_rows, key=lambda n: member_rows[n]["test_accuracy"])
    best_correct = test[best_name].select(ids).preds == test[best_name].select(ids).labels

    load_ids = ids[: args.load_texts]
    texts_file = args.runs_dir / ".cold_load_texts.json"
    texts_file.write_text(json.dumps(texts_of(next(iter(runs.values())).path, load_ids)), encoding="utf-8")

    results = []
    try:
        for method in args.methods:
            entry = run_method(method, members, args.runs_dir, args.overrides)
            results.append(entry)
            if entry["returncode"] != 0:
                continue
            run = load_run(entry["run_dir"])
            entry["run_dir"] = common.rel(run.path)
            metrics, manifest = run.metrics, run.manifest
            stored = run.predictions("test").select(ids)
            entry.update(
                val_accuracy=metrics["val"]["accuracy"], val_f1_macro=metrics["val"]["f1_macro"],
                test_accuracy=metrics["test"]["accuracy"], test_f1_macro=metrics["test"]["f1_macro"],
                val_predictions=manifest["combiner"]["val_predictions"],
                params={k: v for k, v in manifest["combiner"]["params"].items()
                        if k in ("weights", "folds", "features")},
                timings_s=manifest["timings_s"],
                vs_best_member=paired_bootstrap(stored.preds == stored.labels, best_correct, args.bootstrap, args.seed),
                bundle_members=manifest["bundle"]["members"] if manifest.get("bundle") else None,
            )
            if run.has_bundle:
                entry["cold_load"] = cold_load(run.bundle_dir, texts_file, args.precision,
                                               run.predictions("test").select(load_ids).probs)
            print(f"  val {common.pct(entry['val_accuracy'])}  test {common.pct(entry['test_accuracy'])}  "
                  f"vs {best_name}: {entry['vs_best_member']}  load: {entry.get('cold_load')}", flush=True)
    finally:
        texts_file.unlink(missing_ok=True)

    done = [r for r in results if r["returncode"] == 0]
    chosen = max(done, key=lambda r: r["val_accuracy"]) if done else None
    best_test = max(done, key=lambda r: r["test_accuracy"]) if done else None
    best_member_acc = member_rows[best_name]["test_accuracy"]
    targets = {}
    if chosen:
        gain = 100 * (chosen["test_accuracy"] - best_member_acc)
        targets = {
            "chosen_by_val": chosen["method"],
            "gain_pt_vs_best_member": round(gain, 2),
            "gain_target_pt": TARGET_GAIN_PT, "gain_met": gain >= TARGET_GAIN_PT,
            "accuracy_target": TARGET_ACCURACY, "accuracy_met": chosen["test_accuracy"] >= TARGET_ACCURACY,
            "best_by_test": best_test["method"], "best_by_test_accuracy": best_test["test_accuracy"],
        }

    member_table = common.markdown_table(
        ["member", "val acc %", "test acc %", "test macro-F1 %", "training wall s", "in the bundle as"],
        [[name, common.pct(r["val_accuracy"]), common.pct(r["test_accuracy"]), common.pct(r["test_f1_macro"]),
          r["train_wall_s"] or "?",
          ((done[0].get("bundle_members") or {}).get(name) or {}).get("format", "-") if done else "-"]
         for name, r in member_rows.items()],
        align="lrrrrl",
    )
    method_rows = []
    for r in results:
        if r["returncode"] != 0:
            method_rows.append([r["method"], "failed", "", "", "", "", "", "", ""])
            continue
        load = r.get("cold_load") or {}
        boot = r["vs_best_member"]
        method_rows.append([
            r["method"], common.pct(r["val_accuracy"]), common.pct(r["val_f1_macro"]),
            common.pct(r["test_accuracy"]), common.pct(r["test_f1_macro"]),
            f"{boot['diff_pt']:+.2f} [{boot['ci95_pt'][0]:+.2f}, {boot['ci95_pt'][1]:+.2f}]",
            load.get("process_wall_s", load.get("error", "-")), load.get("peak_rss_mib", "-"), r["cli_wall_s"],
        ])
    method_table = common.markdown_table(
        ["method", "val acc %", "val F1 %", "test acc %", "test F1 %", f"Δ test acc vs {best_name} (pt) [95 % CI]",
         "bundle cold load s", "peak RSS MiB", "CLI wall s"],
        method_rows,
    )
    summary = "no method finished"
    if targets:
        summary = (
            f"Chosen by validation accuracy: **{targets['chosen_by_val']}**, "
            f"test accuracy {common.pct(chosen['test_accuracy'])} % "
            f"({targets['gain_pt_vs_best_member']:+.2f} pt vs the best member {best_name}, "
            f"{common.pct(best_member_acc)} %). "
            f"Targets: gain >= {TARGET_GAIN_PT} pt {'met' if targets['gain_met'] else 'NOT met'}; "
            f">= {100 * TARGET_ACCURACY:.1f} % {'met' if targets['accuracy_met'] else 'NOT met'}. "
            f"Best by test: {targets['best_by_test']} ({common.pct(targets['best_by_test_accuracy'])} %)."
        )
    body = (
        f"Members ({len(members)}; test split {len(ids)} rows"
        + (f"; skipped: {', '.join(f'{k} ({v})' for k, v in skipped.items())}" if skipped else "") + "):\n\n"
        + member_table + "\n\n" + method_table + "\n\n" + summary + "\n\n"
        + f"Δ: paired bootstrap over the test rows ({args.bootstrap} resamples, seed {args.seed}). Val of stacking_*: "
        "out-of-fold (k-fold cross-fitting, weights refitted per fold for weighted/bma); of voting: in-sample (nothing fitted). Cold load: a fresh interpreter, import + "
        f"Predictor.from_path(bundle) (SHA-256 of every file) + predict_proba on {len(load_ids)} test texts, "
        f"transformers members at {args.precision}.\n"
    )
    payload = {"members": member_rows, "skipped_members": skipped, "best_member": best_name, "methods": results,
               "targets": targets, "precision": args.precision, "overrides": args.overrides}
    print(body, flush=True)
    if not args.no_record:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        common.record(args.results_dir, payload, body, title="Ensembles of finished runs")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
