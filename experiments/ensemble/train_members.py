"""Train the ensemble's members on the shared AG News copy, one CLI command each, and record each member's wall time.

Every member uses the same validation split (data.seed=42, data.val_size=1000) and scores the full test split, so the
ensemble can join them by example id. Budget: all members <= 60 min wall on 2 CPU cores.

    python experiments/ensemble/train_members.py                 # all members, in order
    python experiments/ensemble/train_members.py --only minilm_q42 tfidf
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
SAME_SPLIT = ["data.seed=42", "data.val_size=1000"]
# Each member trains on ONE dedicated core (the run is pinned with taskset by the caller; see RESULTS.md): a budget
# stated per core, not one that depends on what else the machine was doing.
ONE_CORE = ["torch_threads=1"]
MEMBERS = {
    # the quickstart recipe: 12,000 rows, 1 epoch, max length 64, bf16 autocast
    "minilm_q42": ["-m", "agnews.train", "experiment=quickstart", "seed=42", *SAME_SPLIT, *ONE_CORE],
    # the same recipe on all 62,840 remaining shared train rows
    "minilm_full": ["-m", "agnews.train", "experiment=quickstart", "data.train_size=null", "seed=42", *SAME_SPLIT, *ONE_CORE],
    "minilm_q7": ["-m", "agnews.train", "experiment=quickstart", "seed=7", *SAME_SPLIT, *ONE_CORE],
    # a 3-layer student distilled from minilm_full on the quickstart rows
    "student3": [
        "-m", "agnews.train", "experiment=quickstart", "strategy=distill", f"strategy.teacher={RUNS / 'minilm_full'}",
        "strategy.student_layers=3", "seed=42", *SAME_SPLIT, *ONE_CORE,
    ],
    # TF-IDF word + char n-grams, calibrated linear classifier, all train rows
    "tfidf": ["-m", "agnews.baseline", "data.train_size=null", "seed=42", *SAME_SPLIT],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(MEMBERS), default=list(MEMBERS))
    args = parser.parse_args()
    record_path = HERE / "members.json"
    for name in args.only:
        command = [*MEMBERS[name], f"hydra.run.dir={RUNS / name}"]
        print("+", " ".join(command), flush=True)
        cores = sorted(os.sched_getaffinity(0))
        child = common.run_python(command)  # output on this terminal
        if not child.ok:
            raise SystemExit(f"member {name} failed (exit {child.rc})")
        # Re-read before writing: two invocations may train members side by side (one per core).
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        record[name] = {
            "command": "python " + " ".join(command).replace(str(common.REPO_ROOT) + "/", ""),
            "wall_s": round(child.seconds, 1),
            "cpu_affinity": cores,
            "load_avg_1min_before_after": [round(x, 2) for x in child.load],
            "finished_at": common.now(),
        }
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: {record[name]['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
