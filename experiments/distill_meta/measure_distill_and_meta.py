"""Distillation and meta-learning on AG News, measured on 2 CPU cores (one seed).

(1) Distillation. Teacher: a finished quickstart run (all-MiniLM-L6-v2, 6 layers, 12,000 rows). Students: the same
    pretrained MiniLM cut to 3 of its 6 layers (strategy.student_layers=3 keeps layers 0, 2, 4), trained for one epoch
    on ``--train-rows`` rows (max length 64, bf16-mixed, quickstart optimiser)
      * ``distill``: strategy=distill on the teacher (kd_weight 0.5, ce_weight 0.5, T=2, the YAML defaults);
      * ``no-teacher``: the same command with kd_weight=0, ce_weight=1 (pure cross-entropy on the gold labels: plain
        fine-tuning, the same layer cut, the same rows, batches and steps; the teacher's cached outputs are unused).
    Test accuracy: the runs' own metrics.json (full 7,600-row test split). Inference speed: this process scores the
    full test split with teacher and distilled student, same batch size (256, length-sorted batches), bf16 autocast,
    torch.inference_mode, 2 threads; examples/s excludes tokenisation, includes collation.
(2) Meta-learning. A first-order MAML run (and Reptile when the time budget allows) meta-trains the pretrained
    MiniLM for ``--meta-steps`` outer steps on 4-way K-shot episodes from the training split. Baseline: plain
    fine-tuning from the same starting point (pretrained encoder + the same seeded random head as the meta runs start
    from, built with seed 42 exactly as the pipeline builds it). Every arm is evaluated with
    agnews.strategies.meta.meta_evaluate on the SAME episodes (same seed) drawn from the held-out test split: per
    episode SGD for ``--inner-steps`` steps at ``--inner-lr`` on the K-shot support set, then query accuracy;
    mean ± 95% CI (1.96 s/sqrt(episodes)). The "0 steps" column scores the query set without adapting.

    .venv/bin/python experiments/distill_meta/measure_distill_and_meta.py [--deadline 09:18] [--smoke]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_TEACHER = REPO / "outputs/quickstart/runs/2026-12-01_06-52-48"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Budget:
    def __init__(self, deadline: str | None):
        self.deadline = None
        if deadline:
            hh, mm = (int(x) for x in deadline.split(":"))
            self.deadline = now_utc().replace(hour=hh, minute=mm, second=0, microsecond=0)

    def left(self) -> float:
        return float("inf") if self.deadline is None else (self.deadline - now_utc()).total_seconds()


def run_cli(name: str, overrides: list[str], workdir: Path, budget: Budget, results: dict) -> dict:
    run_dir = workdir / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(workdir / "cache")}
    command = [sys.executable, "-m", "agnews.train", "experiment=quickstart", f"hydra.run.dir={run_dir}", *overrides]
    shown = " ".join(["python -m agnews.train experiment=quickstart", *overrides])
    entry = {"name": name, "command": shown, "run_dir": str(run_dir.relative_to(REPO))}
    timeout = None if budget.deadline is None else max(5.0, budget.left() - 5)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    print(f"[{now_utc():%H:%M:%S}] {name}: {shown}", flush=True)
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, proc.stderr[-3000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = "timeout", (exc.stderr or b"")[-3000:].decode(errors="replace") if exc.stderr else ""
    entry["wall_s"] = round(time.perf_counter() - start, 1)
    entry["load_avg_1min"] = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    entry["returncode"] = rc
    if rc != 0:
        entry["error_tail"] = tail
        print(f"  FAILED ({rc}) after {entry['wall_s']} s\n{tail}", flush=True)
    else:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        manifest = json.loads((run_dir / "run.json").read_text())
        entry["metrics"] = {
            split: {k: round(metrics[split][k], 4) for k in ("accuracy", "f1_macro")} | {
                "num_examples": metrics[split].get("num_examples")}
            for split in ("val", "test") if split in metrics
        }
        entry["global_step"] = manifest["global_step"]
        entry["train_rows"] = manifest["data"]["sizes"]["train"]
        entry["num_parameters"] = manifest["model"]["num_parameters"]
        entry["phases_s"] = manifest["timings_s"]
        print(f"  done in {entry['wall_s']} s: {entry['metrics']}", flush=True)
    results["runs"][name] = entry
    return entry


# ---- inference speed --------------------------------------------------------------------------------------------------
def score_split(model_dir: Path, texts: list[str], labels: list[int], batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from agnews.data.batching import DynamicPaddingCollator, SortedEvalBatchSampler, TokenizedDataset
    from agnews.data.tokenization import tokenize_texts
    from agnews.strategies.base import ClassificationModule

    info = json.loads((model_dir / "agnews_model.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = TokenizedDataset(tokenize_texts(tokenizer, texts, int(info["max_length"])), labels)
    collate = DynamicPaddingCollator(tokenizer.pad_token_id, info.get("padding_side", tokenizer.padding_side))
    batches = list(SortedEvalBatchSampler(dataset.lengths, batch_size))
    preds = torch.full((len(texts),), -1, dtype=torch.long)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        warm = collate([dataset[i] for i in batches[len(batches) // 2]])  # one warm-up batch, not timed
        model(**ClassificationModule.model_inputs(warm))
        start = time.perf_counter()
        for rows in batches:
            batch = collate([dataset[i] for i in rows])
            logits = model(**ClassificationModule.model_inputs(batch)).logits.float()
            preds[batch["index"]] = logits.argmax(dim=-1)
        elapsed = time.perf_counter() - start
    accuracy = float((preds == torch.tensor(labels)).float().mean())
    return {
        "model_dir": str(model_dir.relative_to(REPO)) if model_dir.is_relative_to(REPO) else str(model_dir),
        "layers": model.config.num_hidden_layers,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "examples": len(texts),
        "seconds": round(elapsed, 2),
        "examples_per_s": round(len(texts) / elapsed, 1),
        "accuracy": round(accuracy, 4),
    }


def measure_speed(teacher: Path, student: Path, batch_size: int, max_rows: int | None, results: dict) -> None:
    import torch

    from agnews.evaluation.robustness import load_split

    torch.set_num_threads(2)
    test = load_split(teacher, "test")
    texts, labels = list(test.texts), list(test.labels)
    if max_rows:
        texts, labels = texts[:max_rows], labels[:max_rows]
    load_before = os.getloadavg()[0]
    out = {"batch_size": batch_size, "precision": "bf16 autocast", "threads": torch.get_num_threads()}
    for name, model_dir in (("teacher", teacher / "model"), ("student", student / "model")):
        print(f"[{now_utc():%H:%M:%S}] speed: {name}", flush=True)
        out[name] = score_split(model_dir, texts, labels, batch_size)
        print(f"  {out[name]}", flush=True)
    out["speedup"] = round(out["student"]["examples_per_s"] / out["teacher"]["examples_per_s"], 2)
    out["load_avg_1min"] = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    results["speed"] = out


# ---- meta-evaluation ---------------------------------------------------------------------------------------------------
class MetaEval:
    """The held-out pool (test split, tokenised once with the MiniLM tokenizer) and the seed-42 starting model."""

    def __init__(self, teacher: Path, max_length: int, max_rows: int | None):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        import agnews.resolvers  # noqa: F401

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            self.cfg = compose("train", overrides=["experiment=quickstart"])
        GlobalHydra.instance().clear()

        from agnews.data.batching import DynamicPaddingCollator, TokenizedDataset
        from agnews.data.tokenization import tokenize_texts
        from agnews.evaluation.robustness import load_split

        bundle = self.baseline_bundle()
        test = load_split(teacher, "test")  # the same 7,600 rows the teacher and students are scored on
        texts, labels = list(test.texts), list(test.labels)
        if max_rows:
            texts, labels = texts[:max_rows], labels[:max_rows]
        self.dataset = TokenizedDataset(tokenize_texts(bundle.tokenizer, texts, max_length), labels)
        self.collate = DynamicPaddingCollator(bundle.tokenizer.pad_token_id, bundle.padding_side)

    def baseline_bundle(self):
        """Exactly what pipeline.train builds before fitting (seed_everything(seed), then the model)."""
        import lightning as L
        from hydra.utils import instantiate

        L.seed_everything(int(self.cfg.seed), workers=True)
        return instantiate(self.cfg.model, label_names=list(self.cfg.data.label_names))

    def evaluate_k(self, model, k, episodes, query, inner_lr, inner_steps, seed) -> dict:
        """One K: adapted (inner_steps) and unadapted (0 steps) query accuracy on the same seeded episodes."""
        import torch

        from agnews.strategies.meta import meta_evaluate

        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            adapted = meta_evaluate(model, self.dataset, self.collate, 4, k, query, episodes, inner_lr, inner_steps, seed)
            zero = meta_evaluate(model, self.dataset, self.collate, 4, k, query, episodes, inner_lr, 0, seed)
        out = {
            "accuracy": round(adapted["accuracy"], 4), "ci95": round(adapted["ci95"], 4),
            "accuracy_0_steps": round(zero["accuracy"], 4), "ci95_0_steps": round(zero["ci95"], 4),
            "episodes": episodes, "query_per_class": query, "inner_lr": inner_lr, "inner_steps": inner_steps,
            "episode_accuracies": [round(a, 4) for a in adapted["episode_accuracies"]],
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"  K={k}: {out['accuracy']:.3f} ± {out['ci95']:.3f} (0 steps {out['accuracy_0_steps']:.3f}) "
              f"in {out['seconds']} s", flush=True)
        return out


def load_exported(run_dir: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(run_dir / "model")


# ---- report -------------------------------------------------------------------------------------------------------------
def write(results: dict, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(render(results))


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def render(r: dict) -> str:
    a = r["args"]
    lines = [
        "# Distillation and meta-learning: measurements",
        "",
        f"- Date (UTC): {r['started_at']} -> {r.get('finished_at', 'unfinished')}; total wall {r.get('wall_s', 'n/a')} s",
        f"- Command: `{r['command']}`",
        f"- CPU: {r['cpu']}, {r['cpu_count']} cores, no GPU; torch {r['torch']}; load average (1/5/15 min) at start "
        f"{r['load_avg_start']}, at end {r.get('load_avg_end', 'n/a')}",
        f"- Budget: one seed (42), {a['train_rows']} training rows for the students (1 epoch), "
        f"{a['meta_steps']} meta-steps per meta-learner (meta-batch 2 tasks of 4-way {a['meta_k']}-shot, "
        f"{a['meta_k']} query/class), {a['episodes']} evaluation episodes per K. "
        "Single-seed numbers: differences within the CIs (and, for test accuracy, within about ±0.5 pp, "
        "the seed-to-seed spread of the quickstart) are noise.",
        "",
        "## 1. Distillation (test split, 7,600 rows unless stated)",
        "",
        "| model | layers | params | train rows | steps | test acc % | test macro-F1 % | train wall s | command |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    t = r.get("teacher", {})
    lines.append(f"| teacher (quickstart run) | 6 | {t.get('num_parameters', 'n/a')} | {t.get('train_rows', 'n/a')} | "
                 f"{t.get('global_step', 'n/a')} | {pct(t.get('test_accuracy'))} | {pct(t.get('test_f1_macro'))} | "
                 f"{t.get('fit_s', 'n/a')} (fit, that run) | `{t.get('run_dir', '')}` |")
    for name, label in (("distill", "student, distilled"), ("no_teacher", "student, no teacher (CE only)")):
        e = r["runs"].get(name)
        if not e:
            lines.append(f"| {label} | 3 | | | | not run | | | |")
            continue
        if e.get("returncode") != 0:
            lines.append(f"| {label} | 3 | | | | FAILED ({e['returncode']}) | | {e['wall_s']} | `{e['command']}` |")
            continue
        m = e["metrics"].get("test", {})
        lines.append(f"| {label} | 3 | {e['num_parameters']} | {e['train_rows']} | {e['global_step']} | "
                     f"{pct(m.get('accuracy'))} | {pct(m.get('f1_macro'))} | {e['wall_s']} | `{e['command']}` |")
    s = r.get("speed")
    if s:
        lines += [
            "",
            f"Inference speed, this process, {s['teacher']['examples']} test rows, batch {s['batch_size']}, "
            f"{s['precision']}, {s['threads']} threads (load average {s['load_avg_1min']}):",
            "",
            "| model | layers | params | seconds | examples/s | accuracy % (recomputed) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in ("teacher", "student"):
            x = s[name]
            lines.append(f"| {name} | {x['layers']} | {x['num_parameters']} | {x['seconds']} | {x['examples_per_s']} | "
                         f"{pct(x['accuracy'])} |")
        lines.append(f"\nStudent/teacher speed ratio: {s['speedup']}x.")
    meta = r.get("meta", {})
    if meta:
        shots = a["shots"]
        lines += [
            "",
            f"## 2. Meta-learning: 4-way K-shot episodes from the held-out test split",
            "",
            f"Adaptation (every arm): {a['inner_steps']} SGD steps at lr {a['inner_lr']} on the K-shot support set "
            f"(all parameters), then accuracy on {a['query']} query examples per class; {a['episodes']} episodes per K, "
            "the same episodes for every arm; mean % ± 95% CI half-width. bf16 autocast. "
            "'0 steps' = the starting weights, not adapted (same episodes).",
            "",
            "| arm | " + " | ".join(f"K={k}" for k in shots) + " | " + " | ".join(f"K={k}, 0 steps" for k in shots)
            + " | meta-train wall s |",
            "|---|" + "---:|" * (2 * len(shots) + 1),
        ]
        for arm, info in meta.items():
            ev = info.get("eval") or {}
            cells = [f"{100 * ev[str(k)]['accuracy']:.1f} ± {100 * ev[str(k)]['ci95']:.1f}" if str(k) in ev else "n/a"
                     for k in shots]
            zero = [f"{100 * ev[str(k)]['accuracy_0_steps']:.1f} ± {100 * ev[str(k)]['ci95_0_steps']:.1f}"
                    if str(k) in ev else "n/a" for k in shots]
            lines.append(f"| {arm} | " + " | ".join(cells) + " | " + " | ".join(zero) + f" | {info.get('train_wall_s', '-')} |")
        lines.append("")
        for arm, info in meta.items():
            if info.get("command"):
                lines.append(f"- {arm}: `{info['command']}` (4-way val accuracy of the exported model, 200 rows: "
                             f"{pct(info.get('val_accuracy_4way'))} %)")
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER)
    parser.add_argument("--train-rows", type=int, default=3000)
    parser.add_argument("--meta-steps", type=int, default=30)
    parser.add_argument("--meta-k", type=int, default=4, help="K (support and query per class) of meta-training tasks")
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--query", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=1e-2)
    parser.add_argument("--reptile", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: optional phases are skipped to end before it")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, distill + MAML only (checks the plumbing)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()

    import torch

    budget = Budget(args.deadline)
    stamp = now_utc().strftime("%Y%m%d-%H%M%S")
    workdir = HERE / "runs" / (stamp + ("-smoke" if args.smoke else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = workdir if args.smoke else args.out_dir
    teacher = args.teacher.resolve()
    if not (teacher / "model" / "config.json").is_file():
        raise SystemExit(f"teacher {teacher} has no model/")
    t0 = time.perf_counter()
    results: dict = {
        "started_at": now_utc().isoformat(timespec="seconds"),
        "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO)), *sys.argv[1:]]),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_avg_start": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workdir": str(workdir.relative_to(REPO)), "runs": {}, "meta": {},
        "notes": [
            "No-teacher student = strategy=distill with kd_weight=0, ce_weight=1: pure gold-label cross-entropy with the "
            "same layer cut (0, 2, 4), rows, batch order and steps as the distilled student. strategy=standard has no "
            "layer-cut option (model.config_overrides.num_hidden_layers=3 would keep layers 0, 1, 2 instead).",
            "The teacher's fit time is that run's own record (it shared the CPU; a quiet quickstart fit is ~225 s, "
            "experiments/quickstart/RESULTS.md).",
            "Plain fine-tuning and the meta-learners start from the same weights: pretrained all-MiniLM-L6-v2 plus the "
            "classifier head initialised under seed 42, exactly as pipeline.train builds the model before fitting.",
            "Meta-training draws episodes from the training split; evaluation episodes come from the test split "
            "(held out from all training here). With n_way=4 every episode contains all 4 AG News classes, so "
            "meta-training also teaches the head the fixed 4-way task ('0 steps' column shows how much).",
        ],
    }
    tm = json.loads((teacher / "metrics.json").read_text())
    tr = json.loads((teacher / "run.json").read_text())
    results["teacher"] = {
        "run_dir": str(teacher.relative_to(REPO)), "test_accuracy": tm["test"]["accuracy"],
        "test_f1_macro": tm["test"]["f1_macro"], "train_rows": tr["data"]["sizes"]["train"],
        "global_step": tr["global_step"], "num_parameters": tr["model"]["num_parameters"],
        "fit_s": tr["timings_s"]["fit"],
    }

    rows = 128 if args.smoke else args.train_rows
    common = [f"data.train_size={rows}", "trainer.max_epochs=1"]
    if args.smoke:
        common += ["data.val_size=64", "evaluate.splits=[val]"]
    student = ["strategy=distill", f"strategy.teacher={teacher.relative_to(REPO)}", "strategy.student_layers=3"]
    # 1. distillation ----------------------------------------------------------------------------------------------
    distill = run_cli("distill", [*student, *common], workdir, budget, results)
    write(results, out_dir)
    if not args.smoke:
        run_cli("no_teacher", [*student, "strategy.kd_weight=0", "strategy.ce_weight=1", *common], workdir, budget, results)
        write(results, out_dir)
    if distill.get("returncode") == 0:
        measure_speed(teacher, workdir / "distill", 256, 512 if args.smoke else None, results)
        write(results, out_dir)

    # 2. meta-learning -----------------------------------------------------------------------------------------------
    steps = 2 if args.smoke else args.meta_steps
    shots = [4] if args.smoke else args.shots
    episodes = 1 if args.smoke else args.episodes
    meta_common = [
        f"data.train_size={rows}", "data.val_size=" + ("64" if args.smoke else "200"), "evaluate.splits=[val]",
        "trainer.max_epochs=1", f"strategy.k_shot={args.meta_k}", f"strategy.query_per_class={args.meta_k}",
        "strategy.n_way=4", "strategy.meta_batch_size=2", f"strategy.inner_steps={args.inner_steps}",
        f"strategy.inner_lr={args.inner_lr}", f"strategy.episodes_per_epoch={steps}",
    ]
    evaluator = MetaEval(teacher, 64, 1024 if args.smoke else None)
    models = {"plain fine-tuning": evaluator.baseline_bundle().model}
    results["meta"]["plain fine-tuning"] = {"command": None, "train_wall_s": 0, "eval": {}}
    write(results, out_dir)

    def meta_train(name: str, extra: list[str]) -> None:
        entry = run_cli(name, [f"strategy={name}", *extra, *meta_common], workdir, budget, results)
        results["meta"][name] = {"command": entry["command"], "train_wall_s": entry["wall_s"], "eval": {},
                                 "val_accuracy_4way": entry.get("metrics", {}).get("val", {}).get("accuracy")}
        if entry.get("returncode") == 0:
            models[name] = load_exported(workdir / name)
        write(results, out_dir)

    def meta_eval(arms: list[str]) -> None:
        """K by K, arm by arm; a call that would not end before the deadline (estimated from the calls so far,
        cost ~ proportional to K) is skipped and noted."""
        cost: dict[int, float] = {}
        for k in shots:
            for arm in arms:
                if arm not in models:
                    continue
                estimate = cost.get(k) or (max((t * k / kk for kk, t in cost.items()), default=0.0))
                if budget.left() < 1.1 * estimate + 5:
                    results["notes"].append(f"{arm} K={k} not evaluated: {budget.left():.0f} s left, "
                                            f"estimated {estimate:.0f} s.")
                    continue
                print(f"[{now_utc():%H:%M:%S}] meta-eval {arm}", flush=True)
                start = time.perf_counter()
                results["meta"][arm]["eval"][str(k)] = evaluator.evaluate_k(
                    models[arm], k, episodes, args.query, args.inner_lr, args.inner_steps, seed=0)
                cost[k] = time.perf_counter() - start
                write(results, out_dir)

    meta_train("maml", [])
    meta_eval(["plain fine-tuning", "maml"])
    if not args.smoke:
        maml_s = results["runs"]["maml"]["wall_s"] + sum(v["seconds"] for v in results["meta"]["maml"]["eval"].values())
        if args.reptile == "yes" or (args.reptile == "auto" and budget.left() > 1.15 * maml_s + 10):
            # quickstart's AdamW lr 1e-4 and warmup schedule would replace Reptile's meta step: restore its YAML values.
            meta_train("reptile", ["strategy.optimizer.lr=0.5", "strategy.scheduler=null"])
            meta_eval(["reptile"])
        else:
            results["notes"].append(
                f"Reptile skipped: {budget.left():.0f} s left before the deadline; MAML (train + eval) took {maml_s:.0f} s.")

    results["finished_at"] = now_utc().isoformat(timespec="seconds")
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["load_avg_end"] = "/".join(f"{x:.2f}" for x in os.getloadavg())
    write(results, out_dir)
    print(f"done in {results['wall_s']} s; results in {out_dir}", flush=True)


if __name__ == "__main__":
    main()
