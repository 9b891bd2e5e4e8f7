"""The sweep summary: ``summary.csv``, ``summary_by_config.csv`` and ``summary.md`` in a multirun's sweep directory.

:class:`SweepSummaryCallback` (registered under ``hydra.callbacks`` in conf/hydra/default.yaml) rebuilds the summary
from the job directories after every job (a killed sweep still leaves an up-to-date table) and at the end of the
multirun. Everything is read back from files each job writes (names from :mod:`agnews.runs`): Hydra's overrides, the
metrics file, the error / pruned notes written by :mod:`agnews.train`, so it works for any launcher and sweeper, and
``python -m agnews.sweeps.summary <sweep_dir>`` rebuilds it by hand. A job need not have finished: its status comes
from which of those files exist.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agnews.runs import ERROR_FILE, HYDRA_DIR, METRICS_FILE, OVERRIDES_FILE, PRUNED_FILE, RunFormatError, read_json

log = logging.getLogger(__name__)

# Same names as everywhere else (<split>/<metric>, as in metrics.json and the training logs).
METRIC_COLUMNS = ["val/accuracy", "val/f1_macro", "test/accuracy", "test/f1_macro"]
# Overrides the sweep machinery adds to each job; they are not part of a configuration's identity.
INTERNAL_PREFIXES = ("optuna.", "callbacks.optuna_pruning", "hydra.")
GROUP_EXCLUDED_KEYS = ("seed",)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_internal(override: str) -> bool:
    return _key(override).startswith(INTERNAL_PREFIXES)


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / HYDRA_DIR / OVERRIDES_FILE
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def _job_sort_key(path: Path):
    digits = "".join(ch for ch in path.name if ch.isdigit())
    return (int(digits) if digits else math.inf, path.name)


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    sweep_dir = Path(sweep_dir)
    # Job dirs are <sweep dir>/<hydra.sweep.subdir>; the subdir may be nested (e.g. an override_dirname with '/').
    job_dirs = {p.parent.parent for p in sweep_dir.rglob(OVERRIDES_FILE) if p.parent.name == HYDRA_DIR}
    for job_dir in sorted(job_dirs - {sweep_dir}, key=_job_sort_key):
        overrides = [o for o in _read_overrides(job_dir) if not _is_internal(o)]
        name = job_dir.relative_to(sweep_dir).as_posix()
        row: dict[str, Any] = {"job": name, "overrides": overrides, "error": "", "run_dir": str(job_dir)}
        metrics_file, error_file, pruned_file = job_dir / METRICS_FILE, job_dir / ERROR_FILE, job_dir / PRUNED_FILE
        if error_file.is_file():
            row["status"] = "failed"
            row["error"] = error_file.read_text().split("\n", 1)[0].strip()
        elif pruned_file.is_file():
            row["status"] = "pruned"
            row["error"] = pruned_file.read_text().strip()
        elif metrics_file.is_file():
            row["status"] = "ok"
        else:
            row["status"] = "running/killed"
        try:
            metrics = read_json(metrics_file) if metrics_file.is_file() else {}
        except RunFormatError as exc:  # a metrics file cut short (a job killed while writing it): show, don't crash
            metrics, row["status"], row["error"] = {}, "failed", str(exc)
        for split in ("val", "test"):
            for metric in ("accuracy", "f1_macro"):
                value = metrics.get(split, {}).get(metric)
                row[f"{split}/{metric}"] = float(value) if value is not None else None
        rows.append(row)
    # Show what varies: overrides shared by every job go to the header, not each row.
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if rows else set()
    for row in rows:
        row["varying"] = [o for o in row["overrides"] if o not in common]
        row["config"] = " ".join(o for o in row["varying"] if _key(o) not in GROUP_EXCLUDED_KEYS) or "(all jobs)"
    return rows


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n-1) per configuration = overrides minus ``seed``, over finished jobs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["config"], []).append(row)
    out = []
    for config, members in groups.items():
        done = [m for m in members if m["status"] == "ok"]
        entry: dict[str, Any] = {"config": config, "jobs": len(members), "ok": len(done),
                                 "seeds": " ".join(o.split("=", 1)[1] for m in members for o in m["overrides"]
                                                   if _key(o) == "seed")}
        for column in METRIC_COLUMNS:
            mean, std = _mean_std([m[column] for m in done if m[column] is not None])
            entry[f"{column}_mean"], entry[f"{column}_std"] = mean, std
        out.append(entry)
    return out


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    rows = collect_jobs(sweep_dir)
    groups = group_rows(rows)

    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job", "overrides", "status", *METRIC_COLUMNS, "error", "run_dir"])
    for row in rows:
        writer.writerow([row["job"], " ".join(row["overrides"]), row["status"],
                         *[_fmt(row[c]) for c in METRIC_COLUMNS], row["error"], row["run_dir"]])
    _atomic_write(sweep_dir / "summary.csv", buffer.getvalue())

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["config", "jobs", "ok", "seeds", *[f"{c}_{s}" for c in METRIC_COLUMNS for s in ("mean", "std")]])
    for entry in groups:
        writer.writerow([entry["config"], entry["jobs"], entry["ok"], entry["seeds"],
                         *[_fmt(entry[f"{c}_{s}"]) for c in METRIC_COLUMNS for s in ("mean", "std")]])
    _atomic_write(sweep_dir / "summary_by_config.csv", buffer.getvalue())

    common = sorted(set(rows[0]["overrides"]) - set(rows[0]["varying"])) if rows else []
    lines = [f"# Sweep summary: {sweep_dir}", ""]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "pruned", "running/killed")}
    lines.append(f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if common:
        lines += ["", "Overrides common to every job: `" + " ".join(common) + "`"]
    lines += ["", "## Jobs", "", "| job | overrides | status | val acc | val macro-F1 | test acc | test macro-F1 | error | run dir |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        error = row["error"].replace("|", "\\|")
        lines.append(f"| {row['job']} | `{' '.join(row['varying'])}` | {row['status']} | "
                     + " | ".join(_fmt(row[c]) for c in METRIC_COLUMNS) + f" | {error} | {row['run_dir']} |")

    def pm(entry, column):
        mean, std = entry[f"{column}_mean"], entry[f"{column}_std"]
        if mean is None:
            return ""
        return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f} (n=1)"

    lines += ["", "## Mean ± std over seeds per configuration (sample std, finished jobs only)", "",
              "| configuration | jobs | ok | seeds | val acc | val macro-F1 | test acc | test macro-F1 |",
              "|---|---|---|---|---|---|---|---|"]
    for entry in groups:
        lines.append(f"| `{entry['config']}` | {entry['jobs']} | {entry['ok']} | {entry['seeds']} | "
                     + " | ".join(pm(entry, c) for c in METRIC_COLUMNS) + " |")
    _atomic_write(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


class SweepSummaryCallback(Callback):
    """Hydra callback: (re)writes the sweep summary after each job and when the multirun ends."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            if HydraConfig.get().mode == RunMode.MULTIRUN:
                write_summary(HydraConfig.get().sweep.dir)
        except Exception:  # noqa: BLE001  (a summary problem must never fail a job)
            log.exception("Could not update the sweep summary")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            rows = write_summary(config.hydra.sweep.dir)
            if rows:
                log.info("Sweep summary: %s", Path(config.hydra.sweep.dir) / "summary.md")
        except Exception:  # noqa: BLE001
            log.exception("Could not write the sweep summary")
            return
        loggers = config.get("logger")
        wandb_cfg = loggers.get("wandb") if isinstance(loggers, DictConfig) else None
        if rows and wandb_cfg is not None:
            # logger=wandb sweeps: the summary table goes into the jobs' W&B group (agnews.tracking.evaluation).
            try:
                from agnews.tracking.evaluation import log_sweep_summary

                keys = ("mode", "project", "entity", "group", "tags")
                log_sweep_summary(config.hydra.sweep.dir, {k: wandb_cfg.get(k) for k in keys if k in wandb_cfg})
            except Exception:  # noqa: BLE001  (W&B trouble must not fail a finished sweep)
                log.exception("Could not log the sweep summary to W&B")


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        write_summary(folder)
        print(Path(folder) / "summary.md")
