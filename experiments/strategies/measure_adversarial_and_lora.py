"""Adversarial training (standard / FGM / PGD / FreeLB) and LoRA vs full fine-tuning, measured as a user runs them.

Every arm is one subprocess of the CLI, on the real shared AG News copy with the shipped pretrained MiniLM
(``experiment=quickstart``: trainer=cpu, bf16-mixed) and the SAME seed, rows, steps and schedule:

    python -m agnews.train experiment=quickstart strategy=<arm> peft=<none|lora> seed=42 data.train_size=... \
        data.val_size=... data.max_length=64 data.batch_size=32 trainer.max_epochs=1 scoring.splits=[val,test] \
        callbacks.progress_bar=null +callbacks.step_timer={_target_:experiments.strategies.step_timer.StepTimer} \
        hydra.run.dir=<workdir>/<arm>

then, for the robustness arms, ``python -m agnews.evaluation.robustness --run <workdir>/<arm> --limit N`` (the first N
rows of the test split, the same for every arm; the default suite: 7 perturbations x rates 0.1, 0.3).

Per arm: clean test accuracy (every row of the test split that the run scores), robustness clean/perturbed accuracy and
score, fit seconds / optimizer steps (the run manifest), the median wall time of one training step (step_timer callback,
first step excluded), trainable parameters (step_timer: parameters with requires_grad when training starts) and the
peak resident memory of the training process (``ru_maxrss`` of that child, from ``os.wait4``).

    .venv/bin/python experiments/strategies/measure_adversarial_and_lora.py [--train-size 1000] [--robust-limit 400] \
        [--arms standard fgm pgd freelb lora] [--deadline HH:MM] [-- extra overrides for every arm]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from agnews.runs import load_run  # noqa: E402

HERE = Path(__file__).resolve().parent

# arm -> (strategy, peft, extra overrides). LoRA arms differ only in the learning rate (LoRA usually wants a larger
# one than full fine-tuning); pick among them by validation accuracy, never by test accuracy.
ARMS = {
    "standard": ("standard", "none", []),
    "fgm": ("fgm", "none", []),
    "pgd": ("pgd", "none", []),
    "freelb": ("freelb", "none", []),
    "lora": ("standard", "lora", []),
    "lora_lr5e-4": ("standard", "lora", ["strategy.optimizer.lr=5e-4"]),
    "lora_lr2e-3": ("standard", "lora", ["strategy.optimizer.lr=2e-3"]),
}
LORA_ARMS = [arm for arm, (_, peft, _) in ARMS.items() if peft == "lora"]


def train_command(arm: str, args, run_dir: Path) -> list[str]:
    strategy, peft, extra = ARMS[arm]
    return [
        "python", "-m", "agnews.train", "experiment=quickstart", f"strategy={strategy}", f"peft={peft}",
        f"seed={args.seed}", f"data.train_size={args.train_size}", f"data.val_size={args.val_size}",
        f"data.max_length={args.max_length}", f"data.batch_size={args.batch_size}", "trainer.max_epochs=1",
        f"scoring.splits=[{','.join(args.eval_splits)}]", "callbacks.progress_bar=null",
        "+callbacks.step_timer={_target_:experiments.strategies.step_timer.StepTimer}",
        *extra, *args.overrides, f"hydra.run.dir={run_dir}",
    ]


def robustness_command(args, run_dir: Path) -> list[str]:
    return ["python", "-m", "agnews.evaluation.robustness", "--run", str(run_dir), "--sample-size",
            str(args.robust_sample), "--seed", "0"]


def measure_arm(arm: str, args, workdir: Path, env: dict, deadline: float | None) -> dict:
    run_dir = workdir / arm
    command = train_command(arm, args, run_dir)
    load_before = common.load_avg_1min()
    child = common.run_python(command[1:], env=env, log=workdir / f"{arm}.train.log", deadline=deadline)
    row: dict = {"arm": arm, "strategy": ARMS[arm][0], "peft": ARMS[arm][1], "command": shlex.join(command[:-1]),
                 "run_dir": str(run_dir), "train": child.record()}
    if not child.ok:
        row["error"] = child.tail()
        row["load_avg_1min"] = f"{load_before:.2f} -> {common.load_avg_1min():.2f}"
        return row
    run = load_run(run_dir)
    summary = common.run_summary(run_dir)
    metrics, manifest = summary["metrics"], run.manifest
    steps = json.loads((run_dir / "step_times.json").read_text()) if (run_dir / "step_times.json").is_file() else {}
    fit_s = summary["timings_s"]["fit"]
    row["lr"] = run.config["strategy"]["optimizer"]["lr"]
    row.update({
        "train_rows": summary["sizes"]["train"],
        "val_rows": summary["sizes"].get("val"),
        "global_step": summary["global_step"],
        "timings_s": summary["timings_s"],
        "fit_s_per_step": round(fit_s / max(1, summary["global_step"]), 4),
        "median_step_s": steps.get("median_step_s_excl_first"),
        "mean_step_s": steps.get("mean_step_s_excl_first"),
        "first_step_s": steps.get("first_step_s"),
        "timed_steps": steps.get("steps"),
        "trainable_parameters": steps.get("trainable_parameters"),
        "total_parameters_in_training": steps.get("total_parameters"),
        "exported_model": manifest["model"],
        "peak_rss_mib": child.peak_rss_mib,
    })
    for split in args.eval_splits:
        if split in metrics:
            row[f"{split}_accuracy"] = round(metrics[split]["accuracy"], 4)
            row[f"{split}_f1_macro"] = round(metrics[split]["f1_macro"], 4)
            row[f"{split}_rows"] = metrics[split]["num_examples"]
    if arm in args.robust_arms and args.robust_sample > 0:
        rcommand = robustness_command(args, run_dir)
        rchild = common.run_python(rcommand[1:], env=env, log=workdir / f"{arm}.robustness.log", deadline=deadline)
        row["robustness_command"] = shlex.join(rcommand)
        row["robustness_run"] = rchild.record()
        if rchild.ok:
            report = json.loads((run_dir / "robustness.json").read_text())
            if "test" in run.splits:
                # The same rows scored by the training run (bf16-mixed autocast): a cross-check of the fp32 clean pass.
                stored = run.predictions("test")
                row_of = {example_id: row for row, example_id in enumerate(stored.ids)}
                chosen = [row_of[i] for i in report["ids"] if i in row_of]
                hits = int((stored.preds[chosen] == stored.labels[chosen]).sum()) if chosen else 0
                row["test_accuracy_sample_bf16"] = round(hits / max(1, len(chosen)), 4)

            row["robust_sample_label_counts"] = report.get("label_counts")
            row["robustness"] = {
                "rows": report["num_examples"],
                "clean_accuracy": round(report["clean_accuracy"], 4),
                "mean_perturbed_accuracy": round(report["mean_perturbed_accuracy"], 4),
                "robustness_score": round(report["robustness_score"], 4),
                "worst": report["worst"],
                "per_perturbation": {f"{p['name']}@{p['rate']}": round(p["accuracy"], 4) for p in report["perturbations"]},
            }
        else:
            row["robustness_error"] = rchild.tail()
    row["load_avg_1min"] = f"{load_before:.2f} -> {common.load_avg_1min():.2f}"
    return row


def fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(record: dict) -> str:
    m, rows = record["meta"], record["results"]
    by_arm = {r["arm"]: r for r in rows}
    lines = [
        "# Adversarial training and LoRA: measurements", "",
        f"- Date: {m['date']} (finished {m.get('finished', 'in progress')})",
        f"- Command: `{m['command']}`",
        f"- Hardware: {m['cpu']}, {m['cores']} cores, no GPU; torch {m['torch']}"
        + (f"; 1-min load average at the end: {m['hardware']['load_avg_1min']}" if m.get("hardware") else ""),
        f"- Load average (1 min) at start: {m['load_avg_start']}; per arm below (before -> after)",
        f"- Budget: {m['budget']}",
        f"- Runs (logs, run directories): `{m['workdir']}`", "",
        "One seed, one small training budget: differences under about 0.5 accuracy points are noise. These are results "
        "of this budget only, not of the methods at convergence.", "",
        "Per-arm training command (plus `hydra.run.dir=<workdir>/<arm>`):", "",
    ]
    lines += [f"- {r['arm']}: `{r['command']}`" for r in rows]
    if any("robustness_command" in r for r in rows):
        counts = next((r["robust_sample_label_counts"] for r in rows if r.get("robust_sample_label_counts")), None)
        lines += ["", "Robustness: `python -m agnews.evaluation.robustness --run <workdir>/<arm> --sample-size "
                  f"{m['robust_sample']} --seed 0` (a seeded stratified sample of {m['robust_sample']} test rows, the same "
                  f"rows for every arm; class counts {counts}; 7 perturbations x rates 0.1, 0.3; "
                  "score = mean of perturbed / clean accuracy). "
                  "The robustness module scores in fp32; the training run scored the test split under bf16-mixed autocast."]
    adv = [by_arm[a] for a in ("standard", "fgm", "pgd", "freelb") if a in by_arm]
    if adv:
        lines += ["", "## (1) standard vs FGM vs PGD vs FreeLB", "",
                  "| arm | test acc | test rows | val acc | test acc, sample rows (bf16, training run) | robust clean acc (fp32) | mean perturbed acc | robustness score | worst | "
                  "steps | fit s / step | median step s | wall s (train) | load avg |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for r in adv:
            rb = r.get("robustness", {})
            if "error" in r:
                lines.append(f"| {r['arm']} | FAILED (rc {r['train']['rc']}{', killed at deadline' if r['train']['killed_at_deadline'] else ''}) "
                             "| | | | | | | | | | | | |")
                continue
            lines.append(
                f"| {r['arm']} | {fmt(r.get('test_accuracy'))} | {r.get('test_rows', 'n/a')} | {fmt(r.get('val_accuracy'))} | "
                f"{fmt(r.get('test_accuracy_sample_bf16'))} | "
                f"{fmt(rb.get('clean_accuracy'))} | {fmt(rb.get('mean_perturbed_accuracy'))} | {fmt(rb.get('robustness_score'))} | "
                f"{rb.get('worst', 'n/a')} | {r['global_step']} | {fmt(r['fit_s_per_step'], '.3f')} | {fmt(r['median_step_s'], '.3f')} | "
                f"{r['train']['wall_s']} | {r['load_avg_1min']} |")
        with_rb = [r for r in adv if "robustness" in r]
        if with_rb:
            keys = list(with_rb[0]["robustness"]["per_perturbation"])
            lines += ["", "Accuracy per perturbation (stratified sample of "
                      f"{m['robust_sample']} test rows):", "",
                      "| perturbation@rate | " + " | ".join(r["arm"] for r in with_rb) + " |",
                      "|---|" + "---:|" * len(with_rb)]
            lines += [f"| clean | " + " | ".join(fmt(r["robustness"]["clean_accuracy"]) for r in with_rb) + " |"]
            lines += [f"| {k} | " + " | ".join(fmt(r["robustness"]["per_perturbation"].get(k)) for r in with_rb) + " |" for k in keys]
    ft = [by_arm[a] for a in ("standard", *LORA_ARMS) if a in by_arm]
    if any(a in by_arm for a in LORA_ARMS):
        lines += ["", "## (2) LoRA vs full fine-tuning (strategy=standard)", "",
                  "| arm (lr) | peft | test acc | test rows | val acc | trainable params | total params | steps | fit s / step | "
                  "median step s | peak RSS MiB (training process) | wall s (train) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in ft:
            if "error" in r:
                lines.append(f"| {r['arm']} | {r['peft']} | FAILED (rc {r['train']['rc']}) | | | | | | | | | |")
                continue
            lines.append(
                f"| {'full fine-tuning' if r['arm'] == 'standard' else r['arm']} ({r['lr']}) | {r['peft']} | {fmt(r.get('test_accuracy'))} | "
                f"{r.get('test_rows', 'n/a')} | {fmt(r.get('val_accuracy'))} | {r['trainable_parameters']:,} | "
                f"{r['total_parameters_in_training']:,} | {r['global_step']} | {fmt(r['fit_s_per_step'], '.3f')} | "
                f"{fmt(r['median_step_s'], '.3f')} | {r['peak_rss_mib']} | {r['train']['wall_s']} |")
    if m.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in m["notes"]]
    failed = [r for r in rows if "error" in r or "robustness_error" in r]
    for r in failed:
        lines += ["", f"### {r['arm']} failed", "", "```", (r.get("error") or r.get("robustness_error", ""))[-1500:], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--robust-arms", nargs="+", default=["standard", "fgm", "pgd", "freelb"], choices=list(ARMS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-splits", nargs="+", default=["val", "test"])
    parser.add_argument("--robust-sample", type=int, default=1000, help="stratified test rows for robustness (0: none)")
    parser.add_argument("--deadline", default=None, help="HH:MM (local time): arms not started by then are skipped, "
                        "a running child is killed at it")
    parser.add_argument("--workdir", type=Path, default=None, help="default: /tmp/agnews-strategies-<timestamp>")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--md", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every arm (after --)")
    args = parser.parse_args()

    import torch

    deadline = common.deadline_at(args.deadline, tz=None)  # local time, as --help says
    workdir = args.workdir or Path(f"/tmp/agnews-strategies-{time.strftime('%Y%m%d-%H%M%S')}")
    workdir.mkdir(parents=True, exist_ok=True)
    # One tokenization cache for all arms (same rows, same tokenizer): only the first arm tokenizes.
    env = common.offline_env(workdir / "cache", PYTHONUNBUFFERED="1")
    steps = -(-args.train_size // args.batch_size)
    hardware = common.hardware()
    meta = {
        "date": common.now(),
        "command": common.command_line(),
        "cpu": hardware["cpu"],
        "cores": hardware["cores"],
        "torch": torch.__version__,
        "load_avg_start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "workdir": str(workdir),
        "seed": args.seed,
        "robust_sample": args.robust_sample,
        "budget": (f"experiment=quickstart (pretrained MiniLM-L6, lr 1e-4, warmup 6 %, bf16-mixed on CPU), seed {args.seed}, "
                   f"{args.train_size} training rows, 1 epoch, batch {args.batch_size} (about {steps} optimizer steps), "
                   f"max_length {args.max_length}, {args.val_size} validation rows; test accuracy on "
                   f"{'every row of the test split' if 'test' in args.eval_splits else 'no test rows'}; robustness on a "
                   f"stratified sample of {args.robust_sample} test rows; same for every arm except the LoRA learning rates"),
        "notes": args.note,
    }
    record = {"meta": meta, "results": []}

    def save() -> None:
        previous = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
        runs = [r for r in previous.get("runs", []) if r["meta"]["date"] != meta["date"]]
        args.out.write_text(json.dumps({"runs": [record] + runs[:9]}, indent=2) + "\n")
        args.md.write_text(render(record))

    for arm in args.arms:
        if deadline is not None and time.time() > deadline:
            meta["notes"].append(f"{arm}: not run (deadline {args.deadline} passed)")
            continue
        started = time.perf_counter()
        row = measure_arm(arm, args, workdir, env, deadline)
        record["results"].append(row)
        summary = {k: row.get(k) for k in ("arm", "test_accuracy", "val_accuracy", "global_step", "fit_s_per_step",
                                           "median_step_s", "trainable_parameters", "peak_rss_mib")}
        summary["robustness_score"] = row.get("robustness", {}).get("robustness_score")
        summary["arm_wall_s"] = round(time.perf_counter() - started, 1)
        summary["ok"] = "error" not in row and "robustness_error" not in row
        print(json.dumps(summary), flush=True)
        save()
    meta["finished"] = common.now()
    meta["hardware"] = common.hardware()  # the 1-minute load average at the end
    save()


if __name__ == "__main__":
    main()
