"""Adversarial robustness of standard vs FGM / PGD / FreeLB training, side by side.

Attacks the same seeded, stratified sample of the AG News test split of each run with the report's black-box attack
(agnews.evaluation.attack: greedy leave-one-out word importance + DeepWordBug character edits; docs/evaluation.md) and
records attack success rate, accuracy under attack and queries per example into experiments/evaluation/.

The runs are trained with the strategy experiment's recipe (experiments/strategies/RESULTS.md), one per strategy::

    python -m agnews.train experiment=quickstart strategy=<s> peft=none seed=42 data.train_size=6400 \\
        data.val_size=500 data.max_length=64 data.batch_size=32 trainer.max_epochs=1 \\
        hydra.run.dir=experiments/evaluation/runs/<s>

then::

    python experiments/evaluation/measure_attack.py --sample-size 100 --wait

``--wait`` attacks each run as soon as its run.json appears (the runs may still be training).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
from agnews.runs import MANIFEST_FILE  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = ("standard", "fgm", "pgd", "freelb")
COLUMNS = ("clean_accuracy", "attack_success_rate", "accuracy_under_attack", "queries_mean", "queries_median",
           "queries_mean_succeeded", "words_perturbed_fraction_mean")



def attack_run(run_dir: Path, args) -> dict:
    from agnews.evaluation.attack import attack_section
    from agnews.evaluation.source import EvaluationSource

    source = EvaluationSource.open(run_dir)
    # fp32 like the robustness suite: the attack measures the model, not bf16 rounding on a CPU.
    source.predictor_options = {"precision": "fp32", "batch_size": 64}
    started = time.perf_counter()
    section = attack_section(source, sample_size=args.sample_size, seed=args.seed, max_queries=args.max_queries,
                             max_words_fraction=args.max_words_fraction)
    summary = {k: v for k, v in section.summary.items() if k != "examples"}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["example"] = (section.summary["examples"] or [None])[0]
    summary["test_accuracy_full_split"] = common.run_summary(run_dir)["metrics"].get("test", {}).get("accuracy")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=str(HERE / "runs"), help="folder holding one run per arm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--sample-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-queries", type=int, default=300)
    parser.add_argument("--max-words-fraction", type=float, default=0.25)
    parser.add_argument("--wait", action="store_true", help="wait for each run's run.json (runs still training)")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: stop waiting for runs after this")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()
    deadline = common.deadline_at(args.deadline)

    results: dict[str, dict] = {}
    for arm in args.arms:
        run_dir = Path(args.runs) / arm
        if not (run_dir / MANIFEST_FILE).is_file() and not (args.wait and common.wait_for_run(run_dir, deadline)):
            print(f"{arm}: no finished run at {run_dir}; skipped", flush=True)
            continue
        print(f"{arm}: attacking {args.sample_size} test examples ...", flush=True)
        results[arm] = attack_run(run_dir, args)
        r = results[arm]
        print(f"{arm}: success rate {r['attack_success_rate']:.3f}, accuracy {r['clean_accuracy']:.3f} -> "
              f"{r['accuracy_under_attack']:.3f} under attack, {r['queries_mean']:.1f} queries/example, "
              f"{r['wall_s']} s", flush=True)
    if not results:
        raise SystemExit("no run was attacked")

    rows = [
        (arm, common.pct(r["test_accuracy_full_split"]), common.pct(r["clean_accuracy"]),
         common.pct(r["attack_success_rate"]), common.pct(r["accuracy_under_attack"]), f"{r['queries_mean']:.1f}",
         f"{r['queries_median']:.0f}", f"{r['queries_mean_succeeded']:.1f}",
         common.pct(r["words_perturbed_fraction_mean"], 1), r["wall_s"])
        for arm, r in results.items()
    ]
    any_run = next(iter(results.values()))
    body = "\n".join([
        f"- Runs: `{common.rel(args.runs)}/<arm>` (strategy experiment recipe: quickstart MiniLM, 6,400 train rows, "
        "1 epoch, max_length 64, seed 42; see the module docstring)",
        f"- Attack: {any_run['algorithm']}; the same seeded stratified sample of {args.sample_size} test rows (seed "
        f"{args.seed}) for every run; at most {args.max_queries} queries and {args.max_words_fraction:.0%} of the "
        "words per example; fp32 scoring; only examples a model gets right are attacked.",
        "- Success rate = succeeded / attacked; accuracy under attack = examples still right after the attack / "
        "sample; queries = texts scored per attacked example; words edited = mean fraction in successful attacks.",
        *[f"- {note}" for note in args.note],
        "",
        common.markdown_table(
            ["arm", "test acc (7,600)", "clean acc (sample)", "attack success %", "acc under attack %",
             "queries mean", "queries median", "queries mean (succeeded)", "words edited %", "wall s"],
            rows,
        ),
    ])
    common.record(HERE, {"kind": "attack", "settings": vars(args), "results": results}, body,
                  "Adversarial attack: standard vs FGM / PGD / FreeLB")
    print(body)


if __name__ == "__main__":
    main()
