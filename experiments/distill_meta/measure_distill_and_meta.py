"""Distillation and meta-learning on AG News, measured on 2 CPU cores (one seed). Two parts, run together or apart
(``--parts distill meta``); a part not run keeps its previous results from ``<out-dir>/results.json``.

(1) Distillation. Teacher: a finished quickstart run (all-MiniLM-L6-v2, 6 layers, 12,000 rows); when the default
    teacher directory is missing it is built first with ``python -m agnews.train experiment=quickstart
    hydra.run.dir=<workdir>/teacher`` (~5 min on 2 cores). Students: the same pretrained MiniLM cut to 3 of its 6 layers
    (strategy.student_layers=3 keeps layers 0, 2, 4), trained for one epoch on ``--distill-train-rows`` rows (default
    12,000, the teacher's own; max length 64, bf16-mixed, quickstart optimiser)
      * ``distill``: strategy=distill on the teacher (kd_weight 0.5, ce_weight 0.5, T=2, the YAML defaults);
      * ``no-teacher``: the same command with kd_weight=0, ce_weight=1 (pure cross-entropy on the gold labels: plain
        fine-tuning, the same layer cut, the same rows, batches and steps; the teacher's cached outputs are unused).
    Test accuracy: the runs' own metrics (full 7,600-row test split). Inference speed: this process scores the
    full test split with teacher and distilled student through agnews.inference.Predictor (torch backend), same batch
    size (256, length-sorted batches), bf16 autocast, torch.inference_mode, 2 threads; examples/s includes
    tokenisation and padding (the Predictor's whole call); the speed results recorded in RESULTS.md before the
    scoring moved to the Predictor excluded tokenisation.
(2) Meta-learning, label-permuted 4-way K-shot episodes (each episode reads its classes at the head's slots in a
    seeded random order, so no arm can score above chance without adapting). First-order MAML and Reptile meta-train
    the pretrained MiniLM for ``--meta-steps`` outer steps on ``--meta-train-rows`` training rows with
    strategy.permute_labels=true. Baseline: plain fine-tuning from the same starting point (pretrained encoder + the
    same seeded random head the meta runs start from, built with seed 42 exactly as the pipeline builds it).
    Per arm, the adaptation (all parameters at each lr of ``--lr-grid``, head only at each lr of ``--head-lr-grid``;
    ``--eval-steps`` SGD steps for every candidate) is chosen by mean query accuracy on ``--tune-episodes`` K=``--tune-k``
    episodes from the validation split the meta runs held out. Every arm is then evaluated with its chosen adaptation
    on the SAME ``--episodes`` episodes (same seed, same class->slot assignments) per K drawn from the held-out test
    split, with the same number of steps; mean ± 95% CI (1.96 s/sqrt(episodes)). The "0 steps" column scores the same
    query sets without adapting (chance, 25%, is the sanity check that no fixed label mapping is memorised).

    .venv/bin/python experiments/distill_meta/measure_distill_and_meta.py [--parts distill meta] [--deadline 09:18] [--smoke]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

from agnews.runs import RunFormatError, load_run  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = common.REPO_ROOT
DEFAULT_TEACHER = REPO / "outputs/quickstart/runs/2026-12-01_06-52-48"
PLAIN = "plain fine-tuning"


class Budget:
    """Seconds left before ``--deadline`` (HH:MM UTC); infinite without one."""

    def __init__(self, deadline: str | None):
        self.deadline = common.deadline_at(deadline)

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()


def run_cli(name: str, overrides: list[str], workdir: Path, budget: Budget, results: dict) -> dict:
    """``python -m agnews.train experiment=quickstart hydra.run.dir=<workdir>/<name> <overrides>`` in a subprocess
    (offline hub, the work directory's cache, output in ``<workdir>/<name>.log``), killed 5 s before the deadline; the
    command is recorded exactly as run."""
    run_dir = workdir / name
    args = ["experiment=quickstart", f"hydra.run.dir={common.rel(run_dir)}", *overrides]
    shown = " ".join(["python -m agnews.train", *args])
    entry = {"name": name, "command": shown, "run_dir": common.rel(run_dir)}
    deadline = None if budget.deadline is None else time.time() + max(5.0, budget.left() - 5)
    print(f"[{common.now()}] {name}: {shown}", flush=True)
    child = common.run_python(["-m", "agnews.train", *args], env=common.offline_env(workdir / "cache"),
                              log=workdir / f"{name}.log", deadline=deadline)
    entry["wall_s"] = round(child.seconds, 1)
    entry["load_avg_1min"] = child.load_avg_1min
    entry["returncode"] = "timeout" if child.killed_at_deadline else child.rc
    if entry["returncode"] != 0:
        entry["error_tail"] = child.tail()
        print(f"  FAILED ({entry['returncode']}) after {entry['wall_s']} s\n{entry['error_tail']}", flush=True)
    else:
        run = common.run_summary(run_dir)
        entry["metrics"] = {
            split: {k: round(run["metrics"][split][k], 4) for k in ("accuracy", "f1_macro")}
            | {"num_examples": run["metrics"][split]["num_examples"]}
            for split in ("val", "test") if split in run["metrics"]
        }
        entry["global_step"] = run["global_step"]
        entry["train_rows"] = run["sizes"]["train"]
        entry["num_parameters"] = run["num_parameters"]
        entry["phases_s"] = run["timings_s"]
        print(f"  done in {entry['wall_s']} s: {entry['metrics']}", flush=True)
    results["runs"][name] = entry
    return entry


# ---- inference speed --------------------------------------------------------------------------------------------------
def score_split(model_dir: Path, texts: list[str], labels: list[int], batch_size: int) -> dict:
    """Accuracy and examples/s of one exported model through the project's inference loop (bf16 autocast)."""
    import numpy as np

    from agnews.inference import Predictor

    predictor = Predictor.from_path(model_dir, backend="torch", precision="bf16", batch_size=batch_size)
    predictor.predict_proba(texts[:batch_size])  # one warm-up batch, not timed
    start = time.perf_counter()
    preds = predictor.predict_proba(texts).argmax(axis=1)
    elapsed = time.perf_counter() - start
    accuracy = float((preds == np.asarray(labels)).mean())
    model = predictor.model.backend.model  # the torch module, for its size
    return {
        "model_dir": common.rel(model_dir),
        "layers": model.config.num_hidden_layers,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "examples": len(texts),
        "seconds": round(elapsed, 2),
        "examples_per_s": round(len(texts) / elapsed, 1),
        "accuracy": round(accuracy, 4),
    }


def measure_speed(teacher: Path, student: Path, batch_size: int, max_rows: int | None, results: dict) -> None:
    import torch

    from agnews.data.run_splits import load_run_split

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))  # 2 cores; fewer when the caller says so
    test = load_run_split(teacher, "test")
    texts, labels = list(test.texts), list(test.labels)
    if max_rows:
        texts, labels = texts[:max_rows], labels[:max_rows]
    load_before = os.getloadavg()[0]
    out = {"batch_size": batch_size, "precision": "bf16 autocast", "threads": torch.get_num_threads()}
    for name, model_dir in (("teacher", load_run(teacher).require_model()), ("student", load_run(student).require_model())):
        print(f"[{common.now()}] speed: {name}", flush=True)
        out[name] = score_split(model_dir, texts, labels, batch_size)
        print(f"  {out[name]}", flush=True)
    out["speedup"] = round(out["student"]["examples_per_s"] / out["teacher"]["examples_per_s"], 2)
    out["load_avg_1min"] = f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}"
    results["speed"] = out


# ---- part 1: distillation -----------------------------------------------------------------------------------------------
SMOKE_EVAL = ["data.val_size=64", "scoring.splits=[val]"]  # smoke runs: a small val split, no test scoring


def ensure_teacher(args, workdir: Path, budget: Budget, results: dict) -> Path | None:
    """The teacher run: ``--teacher`` when it has an exported model; the default one missing -> build it with the
    quickstart recipe in ``<workdir>/teacher`` (in smoke mode on the smoke sizes)."""
    teacher = args.teacher.resolve()
    try:
        if load_run(teacher).has_model:
            return teacher
        problem = "exported no model"
    except RunFormatError as exc:
        problem = str(exc)
    if args.teacher != DEFAULT_TEACHER:
        raise SystemExit(f"teacher {teacher}: {problem}")
    print(f"default teacher {common.rel(teacher)} is missing: building it (quickstart recipe)", flush=True)
    entry = run_cli("teacher", ["data.train_size=128", *SMOKE_EVAL] if args.smoke else [], workdir, budget, results)
    return workdir / "teacher" if entry.get("returncode") == 0 else None


def run_distill(args, workdir: Path, budget: Budget, results: dict, save) -> None:
    teacher = ensure_teacher(args, workdir, budget, results)
    save()
    if teacher is None:
        return
    t = common.run_summary(teacher)
    results["teacher"] = {
        "run_dir": common.rel(teacher), "test_accuracy": t["metrics"].get("test", {}).get("accuracy"),
        "test_f1_macro": t["metrics"].get("test", {}).get("f1_macro"), "train_rows": t["sizes"]["train"],
        "global_step": t["global_step"], "num_parameters": t["num_parameters"], "fit_s": t["timings_s"]["fit"],
    }
    rows = 128 if args.smoke else args.distill_train_rows
    same = [f"data.train_size={rows}", "trainer.max_epochs=1", *(SMOKE_EVAL if args.smoke else [])]
    student = ["strategy=distill", f"strategy.teacher={common.rel(teacher)}", "strategy.student_layers=3"]
    distill = run_cli("distill", [*student, *same], workdir, budget, results)
    save()
    if not args.smoke:
        run_cli("no_teacher", [*student, "strategy.kd_weight=0", "strategy.ce_weight=1", *same], workdir, budget, results)
        save()
    if distill.get("returncode") == 0:
        measure_speed(teacher, workdir / "distill", 256, 512 if args.smoke else None, results)
        save()


# ---- part 2: meta-learning ----------------------------------------------------------------------------------------------
class MetaEval:
    """Episode pools, tokenised once with the MiniLM tokenizer: the held-out test split and the validation split the
    meta-training runs hold out (the same overrides, so the same rows); and the seed-42 starting model."""

    def __init__(self, data_overrides: list[str], max_test_rows: int | None):
        # The config the meta runs compose (run paths unused here).
        self.cfg = common.compose_train_cfg(["experiment=quickstart", *data_overrides], Path(tempfile.gettempdir()))

        from agnews.data.batching import DynamicPaddingCollator, TokenizedDataset
        from agnews.data.sources import load_source
        from agnews.data.splits import make_splits
        from agnews.data.tokenization import tokenize_texts

        d = self.cfg.data
        raw = load_source(d.source, d.data_dir, list(d.label_names), d.get("on_bad_rows", "fail"),
                          d.get("hub_dataset", "fancyzhx/ag_news"), d.get("hub_revision"))
        splits = {"test": raw["test"],  # the same 7,600 rows the teacher and students are scored on
                  "val": make_splits(raw["train"], raw["test"], d.val_size, d.train_size, d.seed)["val"]}
        bundle = self.baseline_bundle()
        self.pools = {}
        for name, split in splits.items():
            texts, labels = list(split.texts), list(split.labels)
            if name == "test" and max_test_rows:
                texts, labels = texts[:max_test_rows], labels[:max_test_rows]
            self.pools[name] = TokenizedDataset(tokenize_texts(bundle.tokenizer, texts, int(d.max_length)), labels)
        self.collate = DynamicPaddingCollator(bundle.tokenizer.pad_token_id, bundle.padding_side)

    def baseline_bundle(self):
        """Exactly what pipeline.train builds before fitting (seed_everything(seed), then the model)."""
        import lightning as L
        from hydra.utils import instantiate

        L.seed_everything(int(self.cfg.seed), workers=True)
        return instantiate(self.cfg.model, label_names=list(self.cfg.data.label_names))

    def episodes(self, model, split, k, episodes, query, candidate, steps, head_init, seed) -> dict:
        """meta_evaluate on ``split`` with one adaptation candidate ({"adapt": "all"|"head", "lr"}), bf16 autocast."""
        import torch

        from agnews.strategies.meta import meta_evaluate, output_layer_names

        names = None
        if candidate["adapt"] == "head":
            names = output_layer_names(model, model.config.num_labels, [n for n, _ in model.named_parameters()])
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            report = meta_evaluate(model, self.pools[split], self.collate, 4, k, query, episodes, candidate["lr"], steps,
                                   seed, names, permute_labels=True, head_init=head_init)
        report["seconds"] = round(time.perf_counter() - start, 2)
        return report

    def tune(self, model, candidates, k, episodes, query, steps, head_init) -> dict:
        """Every candidate on the same validation episodes (seed 1); the best mean accuracy wins (ties: the first)."""
        grid = []
        for candidate in candidates:
            r = self.episodes(model, "val", k, episodes, query, candidate, steps, head_init, seed=1)
            grid.append({**candidate, "accuracy": round(r["accuracy"], 4), "ci95": round(r["ci95"], 4),
                         "seconds": r["seconds"]})
            print(f"  val K={k} {candidate['adapt']} lr {candidate['lr']}: {r['accuracy']:.3f} ± {r['ci95']:.3f} "
                  f"in {r['seconds']} s", flush=True)
        best = max(grid, key=lambda g: g["accuracy"])
        return {"k": k, "episodes": episodes, "grid": grid, "chosen": {"adapt": best["adapt"], "lr": best["lr"]},
                "seconds": round(sum(g["seconds"] for g in grid), 1)}

    def evaluate_k(self, model, k, episodes, query, candidate, steps, head_init) -> dict:
        """One K on the test split (seed 0: the same episodes and slot assignments for every arm): adapted with the
        arm's chosen candidate, and unadapted (0 steps)."""
        adapted = self.episodes(model, "test", k, episodes, query, candidate, steps, head_init, seed=0)
        zero = self.episodes(model, "test", k, episodes, query, candidate, 0, head_init, seed=0)
        out = {
            "accuracy": round(adapted["accuracy"], 4), "ci95": round(adapted["ci95"], 4),
            "accuracy_0_steps": round(zero["accuracy"], 4), "ci95_0_steps": round(zero["ci95"], 4),
            "episodes": episodes, "query_per_class": query, **candidate, "inner_steps": steps,
            "episode_accuracies": [round(a, 4) for a in adapted["episode_accuracies"]],
            "s_per_episode_adapted": round(adapted["seconds"] / episodes, 2),
            "s_per_episode_0_steps": round(zero["seconds"] / episodes, 2),
            "seconds": round(adapted["seconds"] + zero["seconds"], 1),
        }
        print(f"  test K={k}: {out['accuracy']:.3f} ± {out['ci95']:.3f} (0 steps {out['accuracy_0_steps']:.3f}) "
              f"in {out['seconds']} s", flush=True)
        return out


def load_exported(run_dir: Path):
    """The run's exported torch module: meta-evaluation adapts its weights per episode, so no Predictor here."""
    from agnews.models.exported import load_classifier

    return load_classifier(load_run(run_dir).require_model()).model


def run_meta(args, workdir: Path, budget: Budget, results: dict, save) -> None:
    part = results["parts"]["meta"]
    rows = 128 if args.smoke else args.meta_train_rows
    val_rows = 64 if args.smoke else args.meta_val_rows
    steps = 2 if args.smoke else args.meta_steps
    shots = [4] if args.smoke else args.shots
    episodes = 1 if args.smoke else args.episodes
    tune_episodes = 1 if args.smoke else args.tune_episodes
    tune_k = 4 if args.smoke else args.tune_k
    eval_steps = args.eval_steps if args.eval_steps is not None else args.inner_steps
    candidates = [{"adapt": "all", "lr": lr} for lr in args.lr_grid]
    candidates += [{"adapt": "head", "lr": lr} for lr in args.head_lr_grid]
    data = [f"data.train_size={rows}", f"data.val_size={val_rows}"]
    meta_common = [
        *data, "scoring.splits=[val]", "trainer.max_epochs=1", "strategy.n_way=4", f"strategy.k_shot={args.meta_k}",
        f"strategy.query_per_class={args.meta_k}", "strategy.meta_batch_size=2",
        f"strategy.inner_steps={args.inner_steps}", f"strategy.inner_lr={args.inner_lr}",
        f"strategy.episodes_per_epoch={steps}", "strategy.permute_labels=true", f"strategy.head_init={args.head_init}",
    ]
    part["setup"] = {
        "meta_train_rows": rows, "meta_val_rows": val_rows, "meta_steps": steps, "meta_k": args.meta_k,
        "meta_inner_steps": args.inner_steps, "meta_inner_lr": args.inner_lr, "head_init": args.head_init,
        "shots": shots, "episodes": episodes, "query": args.query, "eval_steps": eval_steps,
        "tune_k": tune_k, "tune_episodes": tune_episodes, "candidates": candidates,
    }
    evaluator = MetaEval(data, 1024 if args.smoke else None)
    part["setup"]["test_rows"] = len(evaluator.pools["test"])
    part["setup"]["val_rows_used"] = len(evaluator.pools["val"])
    models = {PLAIN: evaluator.baseline_bundle().model}
    arms = results["meta"] = {PLAIN: {"command": None, "train_wall_s": 0, "tuning": None, "eval": {}}}
    save()

    def meta_train(name: str, extra: list[str]) -> None:
        entry = run_cli(name, [f"strategy={name}", *extra, *meta_common], workdir, budget, results)
        arms[name] = {"command": entry["command"], "train_wall_s": entry["wall_s"], "tuning": None, "eval": {},
                      "val_accuracy_4way": entry.get("metrics", {}).get("val", {}).get("accuracy")}
        if entry.get("returncode") == 0:
            arms[name]["s_per_meta_step"] = round(entry["phases_s"]["fit"] / max(1, entry["global_step"]), 2)
            models[name] = load_exported(workdir / name)
        save()

    cost: dict = {}  # seconds of the calls so far: "tune", and per K

    def fits(estimate: float, what: str) -> bool:
        if budget.left() >= 1.1 * estimate + 5:
            return True
        part["notes"].append(
            f"{what} skipped: {budget.left():.0f} s left before the deadline, estimated {estimate:.0f} s.")
        return False

    def tune_and_evaluate(arm: str) -> None:
        """The arm's adaptation chosen on val episodes, then every K on the test episodes; a call that would not end
        before the deadline (estimated from the calls so far, cost ~ proportional to K) is skipped and noted."""
        if arm not in models:
            return
        if not fits(cost.get("tune", 0.0), f"{arm}: tuning"):
            return
        print(f"[{common.now()}] tune {arm}", flush=True)
        arms[arm]["tuning"] = tuning = evaluator.tune(models[arm], candidates, tune_k, tune_episodes, args.query,
                                                      eval_steps, args.head_init)
        cost["tune"] = tuning["seconds"]
        save()
        for k in shots:
            estimate = cost.get(k) or max((t * k / kk for kk, t in cost.items() if kk != "tune"), default=0.0)
            if not fits(estimate, f"{arm} K={k}"):
                continue
            print(f"[{common.now()}] test {arm} K={k} ({tuning['chosen']})", flush=True)
            arms[arm]["eval"][str(k)] = result = evaluator.evaluate_k(
                models[arm], k, episodes, args.query, tuning["chosen"], eval_steps, args.head_init)
            cost[k] = result["seconds"]
            save()

    start = time.perf_counter()
    meta_train("maml", [])
    tune_and_evaluate(PLAIN)
    tune_and_evaluate("maml")
    maml_s = time.perf_counter() - start - (arms[PLAIN]["tuning"] or {}).get("seconds", 0) - sum(
        v["seconds"] for v in arms[PLAIN]["eval"].values())
    if args.reptile == "yes" or (args.reptile == "auto" and budget.left() > 1.15 * maml_s + 10):
        # quickstart's AdamW lr 1e-4 and warmup schedule would replace Reptile's meta step: restore its YAML values.
        meta_train("reptile", ["strategy.optimizer.lr=0.5", "strategy.scheduler=null"])
        tune_and_evaluate("reptile")
    elif args.reptile == "no":
        part["notes"].append("Reptile not run (--reptile no).")
    else:
        part["notes"].append(f"Reptile skipped: {budget.left():.0f} s left before the deadline; MAML (train, tuning "
                             f"and test episodes) took {maml_s:.0f} s.")


# ---- report -------------------------------------------------------------------------------------------------------------
DISTILL_NOTES = [
    "No-teacher student = strategy=distill with kd_weight=0, ce_weight=1: pure gold-label cross-entropy with the same "
    "layer cut (0, 2, 4), rows, batch order and steps as the distilled student. strategy=standard has no layer-cut "
    "option (model.config_overrides.num_hidden_layers=3 would keep layers 0, 1, 2 instead).",
    "The teacher's fit time is that run's own record (a quiet quickstart fit is ~225 s on 2 cores, "
    "experiments/quickstart/RESULTS.md).",
]
META_NOTES = [
    "Label-permuted episodes (strategy.permute_labels=true in meta-training; permute_labels=True in meta_evaluate): "
    "each episode reads its 4 classes at the head's 4 slots in a seeded random order, so a fixed class->slot mapping "
    "learnt by any arm is useless on an episode and the '0 steps' columns should sit at chance (25%); only adaptation "
    "on the K-shot support set can lift an arm above it. The test episodes (seed 0) and their slot assignments are the "
    "same for every arm; the tuning episodes (seed 1) come from the validation split the meta-training runs hold out "
    "(never trained on), the test episodes from the test split (held out from all training here).",
    "Plain fine-tuning and the meta-learners start from the same weights: pretrained all-MiniLM-L6-v2 plus the "
    "classifier head initialised under seed 42, exactly as pipeline.train builds the model before fitting. Every arm "
    "gets the same number of SGD steps per episode; only its adaptation (all parameters or head only, and the inner "
    "learning rate) is chosen, per arm, on the validation episodes, from the same candidate grid.",
    "'4-way val accuracy' of a meta-trained run is the ordinary fixed-mapping accuracy of its exported model (class c at "
    "slot c, no adaptation); with permuted episodes the head is not trained to that mapping, so it says nothing about "
    "few-shot adaptation.",
    "Tuning picks the best of several candidates on few episodes: its own val accuracy is optimistic; the test "
    "columns are the unbiased estimate.",
]


def write(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(render(results))


def carry_over(previous: dict, results: dict, parts: list[str]) -> None:
    """Keep the results of the parts this invocation does not run from the previous results.json (and its command).
    The meta-learning results of the old fixed-label-mapping protocol (files without "parts") are not carried."""
    if "distill" not in parts and ("parts" in previous and "distill" in previous["parts"] or "teacher" in previous):
        results["parts"]["distill"] = previous.get("parts", {}).get("distill") or {
            "command": previous["command"], "started_at": previous["started_at"],
            "finished_at": previous.get("finished_at"), "train_rows": previous["args"]["train_rows"], "notes": [],
        }
        for key in ("teacher", "speed"):
            if key in previous:
                results[key] = previous[key]
        for name in ("teacher", "distill", "no_teacher"):
            if name in previous.get("runs", {}):
                results["runs"][name] = previous["runs"][name]
    if "meta" not in parts and "meta" in previous.get("parts", {}):
        results["parts"]["meta"] = previous["parts"]["meta"]
        results["meta"] = previous["meta"]
        for name in ("maml", "reptile"):
            if name in previous.get("runs", {}):
                results["runs"][name] = previous["runs"][name]


def cell(acc, ci) -> str:
    return f"{100 * acc:.1f} ± {100 * ci:.1f}"


def produced_by(part: dict) -> str:
    return (f"Produced by `{part['command']}` ({part['started_at']} -> {part.get('finished_at') or 'unfinished'}"
            + (f", {part['wall_s']} s" if part.get("wall_s") is not None else "") + ").")


def render(r: dict) -> str:
    lines = [
        "# Distillation and meta-learning: measurements",
        "",
        f"- Date (UTC): {r['started_at']} -> {r.get('finished_at', 'unfinished')}; total wall {r.get('wall_s', 'n/a')} s",
        f"- Command: `{r['command']}`",
        f"- CPU: {r['cpu']}, {r['cpu_count']} cores, no GPU; torch {r['torch']}; load average (1/5/15 min) at start "
        f"{r['load_avg_start']}, at end {r.get('load_avg_end', 'n/a')}",
        "- One seed (42). Single-seed numbers: differences within the CIs (and, for test accuracy, within about "
        "±0.5 pp, the seed-to-seed spread of the quickstart) are noise.",
    ]
    if "distill" in r["parts"]:
        lines += render_distill(r)
    if "meta" in r["parts"]:
        lines += render_meta(r)
    notes = [*(DISTILL_NOTES if "distill" in r["parts"] else []), *(META_NOTES if "meta" in r["parts"] else [])]
    notes += [n for part in r["parts"].values() for n in part.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def render_distill(r: dict) -> list[str]:
    part = r["parts"]["distill"]
    lines = [
        "",
        "## 1. Distillation (test split, 7,600 rows unless stated)",
        "",
        f"{produced_by(part)} Students: {part.get('train_rows', 'n/a')} training rows, 1 epoch.",
        "",
        "| model | layers | params | train rows | steps | test acc % | test macro-F1 % | train wall s | command |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    t = r.get("teacher", {})
    built = r["runs"].get("teacher")
    source = f"`{built['command']}`" if built else f"`{t.get('run_dir', '')}`"
    lines.append(f"| teacher (quickstart run) | 6 | {t.get('num_parameters', 'n/a')} | {t.get('train_rows', 'n/a')} | "
                 f"{t.get('global_step', 'n/a')} | {common.pct(t.get('test_accuracy'))} | "
                 f"{common.pct(t.get('test_f1_macro'))} | "
                 f"{t.get('fit_s', 'n/a')} (fit, that run) | {source} |")
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
                     f"{common.pct(m.get('accuracy'))} | {common.pct(m.get('f1_macro'))} | {e['wall_s']} | "
                     f"`{e['command']}` |")
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
                         f"{common.pct(x['accuracy'])} |")
        lines.append(f"\nStudent/teacher speed ratio: {s['speedup']}x.")
    return lines


def candidate_name(c: dict) -> str:
    return f"{c['adapt']} lr {c['lr']:g}"


def render_meta(r: dict) -> list[str]:
    part, meta = r["parts"]["meta"], r.get("meta", {})
    s = part.get("setup")
    if not s:
        return ["", "## 2. Meta-learning", "", f"{produced_by(part)} No results."]
    shots = s["shots"]
    lines = [
        "",
        "## 2. Meta-learning: label-permuted 4-way K-shot episodes",
        "",
        f"{produced_by(part)} Meta-training: {s['meta_steps']} outer steps per meta-learner, meta-batch 2 tasks of "
        f"4-way {s['meta_k']}-shot ({s['meta_k']} query/class), inner loop {s['meta_inner_steps']} SGD steps at lr "
        f"{s['meta_inner_lr']:g}, strategy.permute_labels=true, head_init={s['head_init']}, {s['meta_train_rows']} "
        f"training rows.",
        "",
        f"Adaptation at evaluation: {s['eval_steps']} SGD steps on the K-shot support set for every arm and K "
        f"(head_init={s['head_init']}), then accuracy on {s['query']} query examples per class; bf16 autocast. "
        f"Candidates: {'; '.join(candidate_name(c) for c in s['candidates'])} ('all': every parameter, 'head': the "
        f"output layer only). Each arm's candidate is chosen on {s['tune_episodes']} validation episodes at "
        f"K={s['tune_k']} (val split of {s['val_rows_used']} rows held out from meta-training), then used on "
        f"{s['episodes']} test episodes per K ({s['test_rows']} test rows; the same episodes and class->slot "
        "assignments for every arm). Mean % ± 95% CI half-width.",
        "",
        f"### Adaptation chosen on validation episodes (K={s['tune_k']}, mean query accuracy %)",
        "",
        "| arm | " + " | ".join(candidate_name(c) for c in s["candidates"]) + " | chosen |",
        "|---|" + "---:|" * len(s["candidates"]) + "---|",
    ]
    for arm, info in meta.items():
        t = info.get("tuning")
        if t:
            lines.append(f"| {arm} | " + " | ".join(cell(g["accuracy"], g["ci95"]) for g in t["grid"])
                         + f" | {candidate_name(t['chosen'])} |")
        else:
            lines.append(f"| {arm} | " + " | ".join("n/a" for _ in s["candidates"]) + " | not tuned |")
    lines += [
        "",
        "### Test episodes (held-out test split)",
        "",
        "| arm | adaptation | " + " | ".join(f"K={k}" for k in shots) + " | "
        + " | ".join(f"K={k}, 0 steps" for k in shots) + " | meta-train wall s | fit s / meta-step |",
        "|---|---|" + "---:|" * (2 * len(shots) + 2),
    ]
    for arm, info in meta.items():
        ev = info.get("eval") or {}
        adapted = [cell(ev[str(k)]["accuracy"], ev[str(k)]["ci95"]) if str(k) in ev else "n/a" for k in shots]
        zero = [cell(ev[str(k)]["accuracy_0_steps"], ev[str(k)]["ci95_0_steps"]) if str(k) in ev else "n/a"
                for k in shots]
        chosen = candidate_name(info["tuning"]["chosen"]) if info.get("tuning") else "n/a"
        lines.append(f"| {arm} | {chosen} | " + " | ".join(adapted) + " | " + " | ".join(zero)
                     + f" | {info.get('train_wall_s', '-')} | {info.get('s_per_meta_step', '-')} |")
    lines.append("")
    for arm, info in meta.items():
        if info.get("command"):
            lines.append(f"- {arm}: `{info['command']}` (4-way val accuracy of the exported model, fixed class->slot "
                         f"mapping, {s['meta_val_rows']} rows: {common.pct(info.get('val_accuracy_4way'))} %)")
    timing = {}
    for info in meta.values():
        for k, e in (info.get("eval") or {}).items():
            timing.setdefault(int(k), []).append((e["s_per_episode_adapted"], e["s_per_episode_0_steps"]))
    if timing:
        lines += ["", "Seconds per test episode (mean over arms; for sizing runs): " + "; ".join(
            f"K={k}: {sum(a for a, _ in v) / len(v):.2f} adapted, {sum(z for _, z in v) / len(v):.2f} unadapted"
            for k, v in sorted(timing.items())) + "."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["distill", "meta"], default=["distill", "meta"],
                        help="what to run; a part not run keeps its results from <out-dir>/results.json")
    parser.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER,
                        help="teacher run directory; the default one is built (quickstart recipe) when missing")
    parser.add_argument("--distill-train-rows", type=int, default=12000, help="training rows of the students")
    parser.add_argument("--meta-train-rows", "--train-rows", dest="meta_train_rows", type=int, default=3000,
                        help="training rows the meta-learners draw episodes from (--train-rows: the old name)")
    parser.add_argument("--meta-val-rows", type=int, default=200,
                        help="validation split of the meta runs (held out from meta-training; the tuning episodes)")
    parser.add_argument("--meta-steps", type=int, default=30)
    parser.add_argument("--meta-k", type=int, default=4, help="K (support and query per class) of meta-training tasks")
    parser.add_argument("--inner-steps", type=int, default=3, help="inner SGD steps of meta-training")
    parser.add_argument("--inner-lr", type=float, default=1e-2, help="inner learning rate of meta-training")
    parser.add_argument("--head-init", choices=["keep", "zero"], default="keep",
                        help="strategy.head_init of the meta runs, and the evaluation of every arm")
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--episodes", type=int, default=10, help="test episodes per K")
    parser.add_argument("--query", type=int, default=8, help="query examples per class of evaluation episodes")
    parser.add_argument("--eval-steps", type=int, default=None,
                        help="SGD steps per evaluation episode, the same for every arm (default: --inner-steps)")
    # Plain SGD for a few steps: 1e-3 barely moves a pretrained encoder; a short probe (K=16, 3 steps) had the best
    # all-parameter lr at 0.2 and the best head-only lr at 1 of {1, 10}, hence grids that bracket those.
    parser.add_argument("--lr-grid", type=float, nargs="*", default=[1e-2, 5e-2, 2e-1, 5e-1],
                        help="adaptation learning rates for all parameters, tuned per arm on val episodes")
    parser.add_argument("--head-lr-grid", type=float, nargs="*", default=[0.3, 1.0, 3.0],
                        help="adaptation learning rates for the output layer only (empty: no head-only candidate)")
    parser.add_argument("--tune-k", type=int, default=8, help="K of the validation (tuning) episodes")
    parser.add_argument("--tune-episodes", type=int, default=6, help="validation episodes per candidate")
    parser.add_argument("--reptile", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: optional phases are skipped to end before it")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks the plumbing)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where results.json and RESULTS.md go (default: this folder; --smoke: the work dir)")
    parser.add_argument("--work-dir", type=Path, default=None, help="run directories (default: runs/<UTC stamp>)")
    args = parser.parse_args()
    if not args.lr_grid and not args.head_lr_grid:
        parser.error("--lr-grid and --head-lr-grid are both empty: no adaptation candidate")

    import torch

    budget = Budget(args.deadline)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    workdir = (args.work_dir or HERE / "runs" / (stamp + ("-smoke" if args.smoke else ""))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = (args.out_dir or (workdir if args.smoke else HERE)).resolve()
    command = common.command_line()
    t0 = time.perf_counter()
    results: dict = {
        "started_at": common.now(), "command": command,
        "cpu": common.cpu_name(), "cpu_count": common.hardware()["cores"], "torch": torch.__version__,
        "load_avg_start": "/".join(f"{x:.2f}" for x in os.getloadavg()),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workdir": common.rel(workdir), "parts": {}, "runs": {}, "meta": {},
    }
    if (out_dir / "results.json").is_file():
        carry_over(json.loads((out_dir / "results.json").read_text()), results, args.parts)

    def save() -> None:
        write(results, out_dir)

    for name, run in (("distill", run_distill), ("meta", run_meta)):
        if name not in args.parts:
            continue
        part = results["parts"][name] = {"command": command, "started_at": common.now(),
                                         "notes": []}
        if name == "distill":
            part["train_rows"] = 128 if args.smoke else args.distill_train_rows
        start = time.perf_counter()
        run(args, workdir, budget, results, save)
        part["finished_at"] = common.now()
        part["wall_s"] = round(time.perf_counter() - start, 1)
        save()

    results["finished_at"] = common.now()
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["load_avg_end"] = "/".join(f"{x:.2f}" for x in os.getloadavg())
    save()
    print(f"done in {results['wall_s']} s; results in {out_dir}", flush=True)


if __name__ == "__main__":
    main()
