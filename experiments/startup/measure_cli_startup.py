"""CLI start-up time: `python -m agnews.train --help` and `--cfg job` against the cost of importing torch.

Target (issue 2): both commands in <= 2 s, and neither imports torch or transformers. Each command runs in a fresh
interpreter, several times; the median is reported. The baseline arms (bare interpreter, `import torch`,
`import torch, transformers, lightning`) are measured in the same run, on the same machine.

    .venv/bin/python experiments/startup/measure_cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = common.REPO_ROOT

PROBE = (
    "import runpy, sys, atexit\n"
    "atexit.register(lambda: print('HEAVY=' + ','.join(m for m in ('torch', 'transformers', 'lightning') "
    "if m in sys.modules), file=sys.stderr))\n"
    "sys.argv = ['agnews.train', *{args!r}]\n"
    "runpy.run_module('agnews.train', run_name='__main__')\n"
)

ARMS = {
    "python -c pass (interpreter baseline)": [sys.executable, "-c", "pass"],
    "python -c 'import torch' (baseline)": [sys.executable, "-c", "import torch"],
    "python -c 'import torch, transformers, lightning' (baseline)": [
        sys.executable, "-c", "import torch, transformers, lightning"
    ],
    "python -m agnews.train --help": [sys.executable, "-m", "agnews.train", "--help"],
    "python -m agnews.train --cfg job": [sys.executable, "-m", "agnews.train", "--cfg", "job"],
    "python -m agnews.train experiment=quickstart --cfg job": [
        sys.executable, "-m", "agnews.train", "experiment=quickstart", "--cfg", "job"
    ],
}


def heavy_modules(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return result.stderr.strip().rsplit("HEAVY=", 1)[-1] or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()

    rows = []
    for name, command in ARMS.items():
        subprocess.run(command, cwd=REPO, capture_output=True, check=True)  # warm the page cache
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(command, cwd=REPO, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        row = {"command": name, "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
               "max_s": round(max(times), 3)}
        if "agnews.train" in name:
            row["heavy_modules_imported"] = heavy_modules(command[3:])
        rows.append(row)
        print(row, flush=True)

    hardware = common.hardware()  # includes the 1-minute load average at the end
    meta = {
        "date": common.now(),
        "command": common.command_line(),
        "cpu": hardware["cpu"],
        "cores": hardware["cores"],
        "python": hardware["python"],
        "hardware": hardware,
        "repeats": args.repeats,
        "target": "--help and --cfg job <= 2 s, no torch/transformers import",
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    table = common.markdown_table(
        ["command", "median s", "min s", "max s", "torch/transformers/lightning imported"],
        [[f"`{r['command']}`", r["median_s"], r["min_s"], r["max_s"], r.get("heavy_modules_imported", "-")] for r in rows],
        align="lrrrl",
    )
    lines = [
        "# CLI start-up time", "",
        f"- Date: {meta['date']}", f"- Command: `{meta['command']}`",
        f"- Hardware: {meta['cpu']}, {meta['cores']} cores; Python {meta['python']}; 1-min load average at the end: "
        f"{hardware['load_avg_1min']}",
        f"- Repeats: {args.repeats} (median shown)",
        f"- Target: {meta['target']}", "", "## Results", "", table,
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
