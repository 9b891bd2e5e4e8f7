"""A real small Optuna sweep on the shared AG News, its summary table, and what the sweep machinery costs per trial.

Three steps, all through the real CLI (``python -m agnews.train``):

0. warm-up (not timed): one short run fills the tokenization cache, so neither arm pays for tokenizing;
1. the sweep: ``-m hparams_search=minilm_lr`` with ``--trials`` trials (pruning off, so every trial does the same
   work as its one-by-one twin), timed from the command's start to its exit;
2. one by one: each trial's exact overrides (stored in the study) run again as separate single runs, each timed.

Reported per trial (seconds): the wall time in each arm, the time inside the job (the run manifest's timings: build, data,
fit, evaluate), and the rest = overhead: in the sweep, everything outside the jobs (interpreter start, Hydra,
optuna ask/tell and storage writes, per-job config composition, the summary callback) divided by the trials; one by
one, each command's wall time minus its job time (interpreter start, imports, Hydra).

    .venv/bin/python experiments/sweeps/measure_sweep_overhead.py                # the measurement (quiet machine)
    .venv/bin/python experiments/sweeps/measure_sweep_overhead.py --smoke        # seconds: checks the script only

The measurement writes experiments/sweeps/RESULTS.md, results.json and summary.md; --smoke writes into its work dir.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent

INTERNAL = ("hparams_search=",)


def cli(args: list[str], env: dict, log: Path) -> float:
    """Wall seconds of ``python -m agnews.train <args>``; its output goes to ``log``."""
    child = common.run_python(["-m", "agnews.train", *args], env=env, log=log)
    if not child.ok:
        raise SystemExit(f"command failed ({log}):\n" + child.tail(4000))
    return child.seconds


def job_seconds(run_dir: Path) -> float:
    """Seconds inside the job (build, data, fit, evaluate...): the run manifest's phase timings."""
    return float(sum(common.run_summary(run_dir)["timings_s"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA))
    parser.add_argument("--workdir", default=None, help="run dirs, study, caches (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, few rows, 2 trials: checks the script")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (after --)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agnews-sweep-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = common.offline_env(workdir / "cache")
    shared = ["experiment=quickstart", f"data.data_dir={args.data_dir}", "data.train_size=300", "data.val_size=200",
              "data.max_length=64", "trainer.max_epochs=1", "scoring.splits=[val]", "scoring.export_model=false",
              "callbacks.progress_bar=null"]
    trials = args.trials
    if args.smoke:
        shared += ["model=minilm", "model.tiny=true", "trainer.precision=32-true", "data.train_size=48",
                   "data.val_size=24", "data.max_length=24"]
        trials = 2
    shared += args.overrides
    out_dir = workdir if args.smoke else HERE
    study_name = "overhead_" + dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    storage = workdir / "study" / "journal.log"

    print(f"work dir {workdir}", flush=True)
    cli([*shared, "trainer.limit_train_batches=1", f"hydra.run.dir={workdir / 'warmup'}"], env, workdir / "warmup.log")

    sweep_dir = workdir / "sweep"
    sweep_wall = cli(["-m", "hparams_search=minilm_lr", *shared, f"hydra.sweeper.storage={storage}",
                      f"hydra.sweeper.study_name={study_name}", f"hydra.sweeper.n_trials={trials}",
                      "hydra.sweeper.pruner=null", f"hydra.sweeper.best_experiment_path={workdir / 'best.yaml'}",
                      f"hydra.sweep.dir={sweep_dir}"], env, workdir / "sweep.log")
    print(f"sweep: {trials} trials in {sweep_wall:.1f} s", flush=True)

    import optuna

    from agnews.sweeps.storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=make_storage(str(storage)))
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    if len(complete) != trials:
        raise SystemExit(f"expected {trials} completed trials, got {[t.state.name for t in study.get_trials()]}")

    rows = []
    for trial in complete:
        sweep_job_dir = sweep_dir / f"trial_{trial.number:04d}"
        overrides = [o for o in trial.user_attrs["agnews_overrides"] if not o.startswith(INTERNAL)]
        single_dir = workdir / "single" / f"trial_{trial.number:04d}"
        wall = cli([*overrides, f"hydra.run.dir={single_dir}"], env, workdir / f"single_{trial.number}.log")
        single_metrics = common.run_summary(single_dir)["metrics"]
        rows.append({
            "trial": trial.number,
            "params": trial.params,
            "val_accuracy_sweep": trial.value,
            "val_accuracy_single": single_metrics["val"]["accuracy"],
            "sweep_trial_span_s": (trial.datetime_complete - trial.datetime_start).total_seconds(),
            "sweep_job_s": job_seconds(sweep_job_dir),
            "single_wall_s": wall,
            "single_job_s": job_seconds(single_dir),
        })
        print(f"trial {trial.number}: one by one {wall:.1f} s", flush=True)

    n = len(rows)
    sweep_jobs = sum(r["sweep_job_s"] for r in rows)
    single_wall = sum(r["single_wall_s"] for r in rows)
    single_jobs = sum(r["single_job_s"] for r in rows)
    hardware = common.hardware()  # includes the 1-minute load average at the end
    result = {
        "date": common.now(),
        "command": common.command_line(),
        "host": {"platform": platform.platform(), "cpus": hardware["cores"], "python": hardware["python"]},
        "hardware": hardware,
        "smoke": args.smoke,
        "overrides": shared,
        "trials": n,
        "sweep_wall_s": round(sweep_wall, 2),
        "sweep_per_trial_s": round(sweep_wall / n, 2),
        "sweep_overhead_per_trial_s": round((sweep_wall - sweep_jobs) / n, 2),
        "sweep_overhead_in_trial_span_s": round(statistics.fmean(r["sweep_trial_span_s"] - r["sweep_job_s"] for r in rows), 3),
        "single_wall_total_s": round(single_wall, 2),
        "single_per_trial_s": round(single_wall / n, 2),
        "single_overhead_per_trial_s": round((single_wall - single_jobs) / n, 2),
        "sweep_minus_single_per_trial_s": round((sweep_wall - single_wall) / n, 2),
        "rows": rows,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(sweep_dir / "summary.md", out_dir / "summary.md")

    lines = [
        "# Sweep machinery overhead (measured by `experiments/sweeps/measure_sweep_overhead.py`)", "",
        f"{result['date']}, {result['host']['platform']}, {result['host']['cpus']} CPUs ({hardware['cpu']}); "
        f"1-min load average at the end: {hardware['load_avg_1min']}"
        + (" — SMOKE RUN (tiny random model), numbers mean nothing" if args.smoke else ""), "",
        f"Command: `{result['command']}`", "",
        f"Overrides of every run: `{' '.join(shared)}`; search: `hparams_search=minilm_lr` (pruning off), "
        f"{n} trials; the tokenization cache was warm for both arms.", "",
        "| | per trial (s) | of which outside the job (s) |", "|---|---|---|",
        f"| one `-m` sweep ({result['sweep_wall_s']} s in all) | {result['sweep_per_trial_s']} | "
        f"{result['sweep_overhead_per_trial_s']} |",
        f"| the same trials one by one ({result['single_wall_total_s']} s in all) | {result['single_per_trial_s']} | "
        f"{result['single_overhead_per_trial_s']} |", "",
        f"Sweep minus one-by-one, per trial: {result['sweep_minus_single_per_trial_s']} s. Inside the sweep, optuna's "
        f"trial span (ask to tell) exceeds the job's own time by {result['sweep_overhead_in_trial_span_s']} s per trial "
        "(config composition for the job, storage writes, the summary callback).", "",
    ]

    def params(r: dict) -> str:
        return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                         for k, v in r["params"].items())

    lines.append(common.markdown_table(
        ["trial", "params", "val acc (sweep)", "val acc (single)", "sweep job s", "single wall s", "single job s"],
        [[r["trial"], params(r), f"{r['val_accuracy_sweep']:.4f}", f"{r['val_accuracy_single']:.4f}",
          f"{r['sweep_job_s']:.1f}", f"{r['single_wall_s']:.1f}", f"{r['single_job_s']:.1f}"] for r in rows],
        align="lllllll",
    ))
    lines += ["", "The sweep's own summary table (`summary.md`, written by the Hydra callback) is copied beside this file.", ""]
    (out_dir / "RESULTS.md").write_text("\n".join(lines))
    print((out_dir / "RESULTS.md").read_text())
    if not args.keep and not args.smoke:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
