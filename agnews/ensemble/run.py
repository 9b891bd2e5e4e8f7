"""One ensemble run: load and join the members, fit the combiner on val, score val and test, write the run directory
and the bundle. ``run.json`` is written last: its presence means the run (bundle included) finished."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from agnews.ensemble.combiners import check_method, fit_combiner
from agnews.ensemble.members import load_members
from agnews.ensemble.write import environment, member_source, write_config, write_metrics, write_split
from agnews.inference.ensemble import LOG_EPS
from agnews.runs import BUNDLE_DIR, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, write_json
from agnews.runs.bundle import SCHEMA_VERSION, write_bundle
from agnews.runs.metrics import classification_report, log_loss

log = logging.getLogger(__name__)


def _split_summary(probs, labels, label_names) -> dict:
    report = classification_report(probs, labels, label_names)
    return {
        "accuracy": report["accuracy"],
        "f1_macro": report["f1_macro"],
        "log_loss": log_loss(probs, labels, LOG_EPS),
    }


def run_ensemble(config: dict) -> dict:
    """``config``: the composed ``conf/ensemble.yaml`` as plain data, ``paths.output_dir`` set. Returns metrics."""
    started_at = datetime.now(timezone.utc).isoformat()
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    method = check_method(str(config.get("method")))
    splits = list(config.get("splits") or ["val", "test"])
    output_dir = Path(config["paths"]["output_dir"])
    members = load_members(config.get("members"), splits)  # every input check runs before anything is written
    names, label_names = members.names, members.label_names
    log.info("ensemble %s of %d members: %s", method, len(names), ", ".join(names))
    lap("load_members")

    output_dir.mkdir(parents=True, exist_ok=True)
    # A rerun into the same folder: unfinished until it ends, and an earlier bundle would not match this run.
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)
    if (output_dir / BUNDLE_DIR).exists():
        shutil.rmtree(output_dir / BUNDLE_DIR)
    write_config(output_dir, config)
    bundle_cfg = config.get("bundle") or {}
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".ensemble-work-") as work:
        workdir = Path(work)
        val = members.splits["val"]
        fitted = fit_combiner(method, val.probs, val.labels, names, label_names, config, workdir)
        lap("fit")

        metrics, artifacts = {}, {}
        for split in splits:
            joined = members.splits[split]
            probs = fitted.val_probs if split == "val" else fitted.combination(joined.probs)
            metrics[split] = classification_report(probs, joined.labels, label_names)
            artifacts[split] = write_split(output_dir, split, joined.ids, joined.labels, probs, label_names)
            log.info("%s accuracy %.4f, macro-F1 %.4f", split, metrics[split]["accuracy"], metrics[split]["f1_macro"])
        write_metrics(output_dir, metrics)
        lap("score")

        bundle_info = None
        if bundle_cfg.get("enabled", True):
            sources = [
                member_source(m, label_names, workdir, str(bundle_cfg.get("member_format", "auto")),
                              bundle_cfg.get("onnx_variant"))
                for m in members.members
            ]
            manifest = write_bundle(
                output_dir / BUNDLE_DIR,
                label_names,
                sources,
                {"method": method, "params": fitted.combination.params, "val_predictions": fitted.val_source},
                fitted.files,
                extra={"ensemble_run": str(output_dir.resolve()),
                       "metrics": {s: {k: metrics[s][k] for k in ("accuracy", "f1_macro")} for s in splits}},
            )
            bundle_info = {
                "path": BUNDLE_DIR,
                "schema_version": SCHEMA_VERSION,
                "bytes": sum(f["bytes"] for m in manifest["members"] for f in m["files"]),
                "members": {m["name"]: {"format": m["format"], "reason": m["reason"]} for m in manifest["members"]},
            }
        lap("bundle")

    member_rows = []
    for index, member in enumerate(members.members):
        row = {"name": member.name, "path": str(member.run.path.resolve()), "task": member.run.task}
        for split in splits:
            p = members.member_predictions(split, index)
            row[split] = _split_summary(p.probs, p.labels, label_names)
        member_rows.append(row)
    write_json(
        output_dir / MANIFEST_FILE,
        {
            "task": config.get("task_name", "ensemble"),
            "method": method,
            "label_names": label_names,
            "members": member_rows,
            "combiner": {
                "method": method,
                "params": fitted.combination.params,
                "val_predictions": fitted.val_source,
                "fit": fitted.summary,
            },
            "data": {"sizes": {split: len(members.splits[split].ids) for split in splits}},
            "artifacts": {
                "config": CONFIG_FILE,
                "metrics": METRICS_FILE,
                "model": None,
                "predictions": artifacts,
                "bundle": BUNDLE_DIR if bundle_info else None,
            },
            "bundle": bundle_info,
            "timings_s": timings,
            "started_at": started_at,
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "environment": environment(),
        },
    )
    return metrics
