"""The evaluation on the W&B dashboard: what a run's report shows, as W&B media and tables.

* End of a ``logger=wandb`` training run (:func:`log_split_diagnostics`, called by
  :func:`agnews.tracking.wandb_logger.log_evaluation`): per split a reliability diagram (``wandb.Image``), ECE/MCE in
  the summary, and the most confident mistakes with their texts as a table.
* ``python -m agnews.evaluate ... wandb.enabled=true`` (:func:`log_report_to_wandb`): the report's numbers in the
  summary, every figure as an image, the per-class table, the most confident mistakes, the frequent confusions, the
  attribution heat-maps (and the whole report) as ``wandb.Html``, in a run of the evaluated run's W&B group.
* The end of a multirun (:func:`log_sweep_summary`, called by the sweep summary callback): ``summary.csv`` and
  ``summary_by_config.csv`` as tables in one more run of the sweep's group, so the group page is the sweep's dashboard.

No Lightning here (only wandb, numpy, and matplotlib through :mod:`agnews.evaluation.plots` for the diagram), so the
evaluation entry point and the Hydra callback can use it without loading the training stack.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from agnews.tracking.mode import resolve_mode

log = logging.getLogger(__name__)

MISTAKE_COLUMNS = ["id", "gold", "predicted", "confidence", "p(gold)", "text"]
TEXT_CHARS = 500  # a table cell, not an article: longer texts are cut


def _image(png: bytes, caption: str):
    import wandb
    from PIL import Image

    return wandb.Image(Image.open(io.BytesIO(png)).convert("RGB"), caption=caption)


def confident_mistakes(
    labels: Sequence[int],
    probs,
    label_names: Sequence[str],
    texts: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    k: int = 20,
) -> list[list]:
    """Rows of :data:`MISTAKE_COLUMNS` for the ``k`` wrong predictions with the highest confidence, in the report's
    order (:func:`agnews.evaluation.error_analysis.mistakes_by_confidence`)."""
    import numpy as np

    from agnews.evaluation.error_analysis import mistakes_by_confidence

    order = mistakes_by_confidence(labels, probs, ids)[:k]
    probs = np.asarray(probs, dtype=np.float64)
    rows = []
    for i in order:
        gold, predicted = int(labels[i]), int(probs[i].argmax())
        rows.append([
            str(ids[i]) if ids is not None else str(i), label_names[gold], label_names[predicted],
            round(float(probs[i, predicted]), 6), round(float(probs[i, gold]), 6),
            (texts[i] if texts is not None else "")[:TEXT_CHARS],
        ])
    return rows


def log_split_diagnostics(
    run,
    split: str,
    labels: Sequence[int],
    probs,
    label_names: Sequence[str],
    texts: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    k: int = 20,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Reliability diagram, ECE/MCE and the confident-mistakes table of one split; returns what was logged.

    The diagram needs matplotlib (the ``report`` extra): without it the image is left out with a warning, the
    numbers and the table are still logged."""
    import numpy as np
    import wandb

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    payload: dict[str, Any] = {}
    if len(labels) == 0:
        return payload
    from agnews.evaluation.calibration import calibration_errors

    errors = calibration_errors(probs, labels, n_bins)
    for name, value in errors.items():
        run.summary[f"{split}/{name}"] = value
    try:
        from agnews.evaluation import plots

        png = plots.reliability_diagram(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins,
                                        f"{split} reliability (ECE {errors['ece']:.3f})")
        payload[f"{split}/reliability_diagram"] = _image(png, f"{split}: accuracy per confidence bin")
    except ImportError as exc:
        log.warning("W&B: no reliability diagram (%s); pip install -e '.[report]' adds matplotlib", exc)
    payload[f"{split}/confident_mistakes"] = wandb.Table(
        columns=MISTAKE_COLUMNS, data=confident_mistakes(labels, probs, label_names, texts, ids, k)
    )
    run.log(payload)
    return {**payload, **{f"{split}/{name}": value for name, value in errors.items()}}


# ---- the evaluation report -------------------------------------------------------------------------------------------
def _flatten(prefix: str, value: Any, out: dict[str, float], depth: int = 0) -> None:
    """Numbers of a section summary as ``prefix/a/b`` keys (lists and strings stay in the report, not the summary)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        out[prefix] = value
    elif isinstance(value, Mapping) and depth < 4:
        for key, item in value.items():
            _flatten(f"{prefix}/{key}", item, out, depth + 1)


def _section_html(page: str, key: str) -> str | None:
    """One ``<section id="key">`` of report.html (the report's own markup), or None when the report has none."""
    match = re.search(rf'<section id="{re.escape(key)}">(.*?)</section>', page, flags=re.S)
    return match.group(1) if match else None


def _html(fragment: str, title: str):
    import wandb

    head = f'<head><meta charset="utf-8"><title>{title}</title></head>'
    page = f"<!DOCTYPE html><html>{head}<body>{fragment}</body></html>"
    return wandb.Html(page, inject=False)


def log_report_to_wandb(run, report_dir: str | Path, sections: Sequence | None = None, prefix: str = "evaluation",
                        log_full_report: bool = True) -> list[str]:
    """Log a written evaluation report (``report_dir`` with evaluation.json, figures/, report.html) into ``run`` (a
    W&B run, or a logger with ``.experiment``); returns the keys logged (summary and media).

    ``sections`` (the :class:`agnews.evaluation.report.Section` objects, when at hand) supply the attribution HTML;
    otherwise it is cut out of report.html."""
    import wandb

    run = getattr(run, "experiment", run)
    report_dir = Path(report_dir)
    evaluation_file = report_dir / "evaluation.json"
    if not evaluation_file.is_file():
        raise FileNotFoundError(f"{report_dir} holds no evaluation.json: not an evaluation report folder")
    summary = json.loads(evaluation_file.read_text(encoding="utf-8"))
    summary.pop("meta", None)
    numbers: dict[str, float] = {}
    for key, section in summary.items():
        _flatten(f"{prefix}/{key}", section, numbers)
    for key, value in numbers.items():
        run.summary[key] = value

    payload: dict[str, Any] = {}
    for png in sorted((report_dir / "figures").glob("*.png")):
        payload[f"{prefix}/figures/{png.stem}"] = _image(png.read_bytes(), png.stem.replace("_", " "))
    metrics = summary.get("metrics") or {}
    if metrics.get("per_class"):
        table = wandb.Table(columns=["class", "precision", "recall", "f1", "support"])
        for name, row in metrics["per_class"].items():
            table.add_data(name, row["precision"], row["recall"], row["f1"], row["support"])
        payload[f"{prefix}/per_class"] = table
    errors = summary.get("errors") or {}
    if not errors.get("skipped") and errors.get("most_confident_mistakes") is not None:
        payload[f"{prefix}/confident_mistakes"] = wandb.Table(
            columns=MISTAKE_COLUMNS,
            data=[[m["id"], m["gold"], m["pred"], m["confidence"], m["gold_prob"], str(m["text"])[:TEXT_CHARS]]
                  for m in errors["most_confident_mistakes"]],
        )
        payload[f"{prefix}/confusions"] = wandb.Table(
            columns=["gold", "predicted", "count", "share_of_errors"],
            data=[[c["gold"], c["pred"], c["count"], c["share_of_errors"]] for c in errors.get("top_confusions", [])],
        )
    page = (report_dir / "report.html").read_text(encoding="utf-8") if (report_dir / "report.html").is_file() else ""
    attribution = summary.get("attribution") or {}
    if attribution and not attribution.get("skipped"):
        fragment = next((s.html for s in sections or () if getattr(s, "key", None) == "attribution"), None)
        fragment = fragment or _section_html(page, "attribution")
        if fragment:
            payload[f"{prefix}/attribution_heatmaps"] = _html(fragment, "Attributions")
    if page and log_full_report:
        payload[f"{prefix}/report"] = wandb.Html(page, inject=False)
    if payload:
        run.log(payload)
    return sorted([*numbers, *payload])


def run_group(path: str | Path) -> str:
    """The W&B group the training of ``path`` logged into: ``logger.wandb.group`` of its config when set, else the
    sweep directory's name for a multirun job, else the run directory's name (as :func:`default_group` chose)."""
    path = Path(path).resolve()
    try:
        from omegaconf import OmegaConf

        from agnews.runs import CONFIG_FILE

        config = OmegaConf.load(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else None
        group = OmegaConf.select(config, "logger.wandb.group") if config is not None else None
        if group:
            return str(group)
        hydra_file = path / ".hydra" / "hydra.yaml"
        if hydra_file.is_file():
            hydra = OmegaConf.load(hydra_file).hydra
            if str(hydra.mode) == "RunMode.MULTIRUN":
                return Path(str(hydra.sweep.dir)).name
    except Exception:  # noqa: BLE001  (an odd config must not stop the logging; fall back to the folder's name)
        log.debug("no W&B group in %s's config", path, exc_info=True)
    return path.name


def evaluation_to_wandb(report_dir: str | Path, evaluated: str | Path, options: Mapping[str, Any] | None = None,
                        sections: Sequence | None = None, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Start a ``job_type=evaluate`` W&B run in the evaluated run's group, log the report, finish; returns
    ``{"mode", "group", "run_id", "dir", "keys"}``.

    ``options``: ``mode`` (auto/online/offline/disabled, as ``logger.wandb.mode``), ``project``, ``entity``, ``group``
    (default: :func:`run_group`), ``name``, ``tags``, ``dir`` (default: ``report_dir``)."""
    import wandb

    options = dict(options or {})
    mode = resolve_mode(options.get("mode", "auto"))
    group = options.get("group") or run_group(evaluated)
    save_dir = Path(options.get("dir") or report_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=options.get("project") or "agnews",
        entity=options.get("entity"),
        group=group,
        job_type="evaluate",
        name=options.get("name") or f"{Path(evaluated).resolve().name}-evaluation",
        tags=list(options.get("tags") or []),
        config=dict(config or {}),
        dir=str(save_dir),
        mode=mode,
        settings=wandb.Settings(silent=True),
        reinit="create_new",
    )
    try:
        keys = log_report_to_wandb(run, report_dir, sections)
        return {"mode": mode, "group": group, "run_id": run.id, "dir": str(save_dir), "keys": keys}
    finally:
        run.finish()


# ---- the sweep ------------------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


def _cell(value: str):
    try:
        return float(value) if value != "" else None
    except ValueError:
        return value


def log_sweep_summary(sweep_dir: str | Path, wandb_options: Mapping[str, Any]) -> dict[str, Any] | None:
    """One ``job_type=sweep-summary`` run in the sweep's group holding ``summary.csv`` (one row per job) and
    ``summary_by_config.csv`` (mean/std per configuration) as tables, plus a test-accuracy bar chart per job.

    ``wandb_options`` is the jobs' ``logger.wandb`` config (mode, project, entity, group, tags); the group defaults to
    the sweep directory's name, as the jobs' own runs do. Returns None when the sweep has no summary."""
    import wandb

    sweep_dir = Path(sweep_dir)
    summary_file = sweep_dir / "summary.csv"
    if not summary_file.is_file():
        return None
    options = dict(wandb_options or {})
    mode = resolve_mode(options.get("mode", "auto"))
    if mode == "disabled":
        return None
    group = options.get("group") or sweep_dir.name
    header, rows = _read_csv(summary_file)
    table = wandb.Table(columns=header, data=[[_cell(v) if h.startswith(("val/", "test/")) else v
                                              for h, v in zip(header, row)] for row in rows])
    payload: dict[str, Any] = {"sweep/summary": table}
    by_config = sweep_dir / "summary_by_config.csv"
    if by_config.is_file():
        cfg_header, cfg_rows = _read_csv(by_config)
        payload["sweep/summary_by_config"] = wandb.Table(
            columns=cfg_header, data=[[v if i == 0 or h == "seeds" else _cell(v) for i, (h, v) in
                                       enumerate(zip(cfg_header, row))] for row in cfg_rows])
    if "test/accuracy" in header:
        scored = wandb.Table(columns=["job", "test/accuracy"],
                             data=[[r[header.index("job")], _cell(r[header.index("test/accuracy")])] for r in rows
                                   if r[header.index("test/accuracy")] != ""])
        payload["sweep/test_accuracy"] = wandb.plot.bar(scored, "job", "test/accuracy", title="test accuracy per job")
    (sweep_dir / "wandb").mkdir(exist_ok=True)
    run = wandb.init(
        project=options.get("project") or "agnews",
        entity=options.get("entity"),
        group=group,
        job_type="sweep-summary",
        name=f"{group}-summary",
        tags=list(options.get("tags") or []),
        config={"sweep_dir": str(sweep_dir), "jobs": len(rows)},
        dir=str(sweep_dir),
        mode=mode,
        settings=wandb.Settings(silent=True),
        reinit="create_new",
    )
    try:
        statuses = [row[header.index("status")] for row in rows] if "status" in header else []
        run.summary["sweep/jobs"] = len(rows)
        run.summary["sweep/ok"] = statuses.count("ok")
        run.log(payload)
        return {"mode": mode, "group": group, "run_id": run.id, "jobs": len(rows)}
    finally:
        run.finish()
