"""Measure the evaluation report (issue 10): its wall time for the quickstart model on this machine (full test split,
attribution sample 32), the quickstart model's calibration before/after temperature scaling, and the significance test
between the standard and FreeLB runs of the strategy experiment.

    python -m agnews.train experiment=quickstart hydra.run.dir=experiments/evaluation/runs/quickstart
    python experiments/evaluation/measure_report.py [--wait] [--deadline 14:50]

Runs the real CLI (``python -m agnews.evaluate``) as a child process, timed end to end (interpreter start-up, model
load and every section), then the significance section in-process on the stored predictions of
``runs/standard`` and ``runs/freelb`` (trained by measure_attack.py's recipe). Records into results.json / RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

from agnews.runs import MANIFEST_FILE  # noqa: E402

RUNS = HERE / "runs"



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quickstart", default=str(RUNS / "quickstart"))
    parser.add_argument("--standard", default=str(RUNS / "standard"))
    parser.add_argument("--freelb", default=str(RUNS / "freelb"))
    parser.add_argument("--attribution-sample", type=int, default=32)
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--wait", action="store_true", help="wait for the runs' run.json")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: stop waiting / kill the report then")
    parser.add_argument("--skip-report", action="store_true", help="only the significance test")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    deadline = common.deadline_at(args.deadline)
    payload: dict = {"note": args.note}
    lines: list[str] = ["**Evaluation report: time, calibration, significance** (measure_report.py)", ""]

    quickstart = Path(args.quickstart)
    if not args.skip_report:
        if args.wait and not common.wait_for_run(quickstart, deadline):
            raise SystemExit(f"{quickstart}: no {MANIFEST_FILE} before the deadline")
        out = quickstart / "evaluation"  # the default place; inside the git-ignored runs/ folder
        cli = ["-m", "agnews.evaluate", f"run={quickstart}",
               f"attribution.sample_size={args.attribution_sample}", f"hydra.run.dir={quickstart / 'evaluate_hydra'}"]
        child = common.run_python(cli, env=common.offline_env(), log=quickstart / "evaluate.log", deadline=deadline)
        if not child.ok:
            raise SystemExit(f"agnews.evaluate failed (rc {child.rc}):\n{child.tail()}")
        evaluation = json.loads((out / "evaluation.json").read_text())
        cal = evaluation["calibration"]
        payload["report"] = {
            "run": common.rel(quickstart), "command": "python -m agnews.evaluate " + " ".join(cli[2:]),
            **child.record(), "load_avg_1min": child.load_avg_1min,
            "section_seconds": evaluation["meta"]["section_seconds"],
            "test_examples": evaluation["metrics"]["num_examples"], "accuracy": evaluation["metrics"]["accuracy"],
            "skipped": {k: v.get("reason") for k, v in evaluation.items() if isinstance(v, dict) and v.get("skipped") is True},
        }
        payload["calibration"] = {"temperature": cal["temperature"], "before": cal["before"], "after": cal["after"],
                                  "num_val": cal["num_val"], "num_test": cal["num_test"]}
        rows = [(k, f"{cal['before'][k]:.4f}", f"{cal['after'][k]:.4f}") for k in ("ece", "mce", "nll", "brier")]
        lines += [
            f"Report for `{common.rel(quickstart)}` ({evaluation['metrics']['num_examples']} test rows, attribution "
            f"sample {args.attribution_sample}): **{child.seconds:.0f} s** wall end to end, peak RSS "
            f"{child.peak_rss_mib} MiB, load {child.load_avg_1min}.", "",
            "Seconds per section: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                 evaluation["meta"]["section_seconds"].items()), "",
            f"Calibration, test split, temperature T = {cal['temperature']:.3f} fitted on {cal['num_val']} val rows:", "",
            common.markdown_table(["metric", "before", "after"], rows), "",
        ]

    standard, freelb = Path(args.standard), Path(args.freelb)
    ready = all((r / MANIFEST_FILE).is_file() for r in (standard, freelb)) or (
        args.wait and common.wait_for_run(standard, deadline) and common.wait_for_run(freelb, deadline))
    if ready:
        from agnews.evaluation.source import EvaluationSource
        from agnews.evaluation.significance import significance_section

        s = significance_section(EvaluationSource.open(freelb), EvaluationSource.open(standard),
                                 n_resamples=args.n_resamples, seed=0).summary
        payload["significance"] = {"this": common.rel(freelb), "compare": common.rel(standard), **{
            k: s[k] for k in ("num_examples", "accuracy", "f1_macro", "mcnemar", "bootstrap", "significant")}}
        acc, f1 = s["bootstrap"]["accuracy"], s["bootstrap"]["f1_macro"]
        lines += [
            f"FreeLB vs standard on the same {s['num_examples']} test rows: accuracy {s['accuracy']['this']:.4f} vs "
            f"{s['accuracy']['compare']:.4f}, difference {acc['difference']:+.4f} (95 % CI [{acc['ci_low']:+.4f}, "
            f"{acc['ci_high']:+.4f}]); macro-F1 difference {f1['difference']:+.4f} (95 % CI [{f1['ci_low']:+.4f}, "
            f"{f1['ci_high']:+.4f}]); McNemar exact p = {s['mcnemar']['p_value']:.4g} "
            f"(discordant: {s['mcnemar']['a_only_correct']} only FreeLB right, {s['mcnemar']['b_only_correct']} only "
            f"standard right); bootstrap {args.n_resamples} resamples, seed 0.", "",
        ]
    else:
        payload["significance"] = {"missing": [common.rel(r) for r in (standard, freelb)
                                               if not (r / MANIFEST_FILE).is_file()]}
        lines.append(f"Significance: not measured, runs missing: {payload['significance']['missing']}")
    if args.note:
        lines += ["", args.note]
    common.record(HERE, payload, "\n".join(lines), "Evaluation report: time, calibration, significance")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
