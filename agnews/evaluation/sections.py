"""The report's sections that need no module of their own (metrics, robustness, the optional attribution and attack
sections), and :func:`evaluate_run`, which builds every enabled section and writes the report.

Section builders take an :class:`agnews.evaluation.source.EvaluationSource` and return a
:class:`agnews.evaluation.report.Section`.
"""

from __future__ import annotations

import html
import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

from agnews.evaluation import EvaluationError
from agnews.evaluation.report import Section, html_table, md_image, md_table, skipped_section, write_report

log = logging.getLogger("agnews.evaluate")

# Optional sections built by their own modules (agnews.evaluation.<key>), each exposing ``<key>_section(source, *,
# seed, **options) -> Section`` (options: the config block's keys, ``enabled`` left out). A missing module or library
# skips the section with the reason.
OPTIONAL_SECTIONS = {"attribution": "Attributions (Captum, SHAP)", "attack": "Adversarial robustness"}


def metrics_section(source, split: str = "test") -> Section:
    """Accuracy, macro-F1, per-class P/R/F1 and the confusion matrix from the stored predictions."""
    from agnews.evaluation import plots
    from agnews.runs.metrics import classification_report, log_loss

    pred = source.predictions(split)
    report = classification_report(pred.probs, pred.labels, pred.label_names)
    report["nll"] = log_loss(pred.probs, pred.labels)
    report["split"] = split
    names = pred.label_names
    figures = {
        "confusion_matrix": plots.confusion_matrix(report["confusion_matrix"], names, f"Confusion matrix ({split})"),
        "per_class": plots.per_class_bars(report["per_class"], f"Per-class precision / recall / F1 ({split})"),
    }
    head = ["", "value"]
    rows = [("examples", report["num_examples"]), ("accuracy", report["accuracy"]), ("macro-F1", report["f1_macro"]),
            ("NLL", report["nll"])]
    pc_head = ["class", "precision", "recall", "F1", "support"]
    pc_rows = [(n, c["precision"], c["recall"], c["f1"], c["support"]) for n, c in report["per_class"].items()]
    cm_head = ["gold \\ predicted", *names]
    cm_rows = [(names[i], *row) for i, row in enumerate(report["confusion_matrix"])]
    alt_cm = f"Confusion matrix of the {split} split (rows gold, columns predicted)"
    alt_pc = f"Per-class precision, recall and F1 on the {split} split"
    intro = f"From the stored predictions of the {split} split ({source.path})."
    markdown = "\n".join([intro, "", md_table(head, rows), md_table(pc_head, pc_rows), md_table(cm_head, cm_rows),
                          md_image("confusion_matrix", alt_cm) + " " + md_image("per_class", alt_pc)])
    html_body = (f"<p>{html.escape(intro)}</p>" + html_table(head, rows) + html_table(pc_head, pc_rows)
                 + html_table(cm_head, cm_rows) + '<div class="figures">'
                 + plots.img_tag(figures["confusion_matrix"], alt_cm) + plots.img_tag(figures["per_class"], alt_pc)
                 + "</div>")
    return Section("metrics", "Metrics", report, markdown + "\n", html_body, figures)


def robustness_section(source, sample_size: int | None = 500, seed: int = 0, rates=(0.1, 0.3),
                       perturbations=None, split: str = "test") -> Section:
    """The perturbation suite of :mod:`agnews.evaluation.robustness` on a seeded stratified sample, as one section."""
    from agnews.evaluation import plots
    from agnews.evaluation.robustness import PERTURBATIONS, evaluate_robustness, predict

    data = source.split(split)
    if sample_size is not None and sample_size < len(data):
        from agnews.data.splits import stratified_take

        data, _ = stratified_take(data, sample_size, seed, "sample_size")
    names = list(perturbations) if perturbations else list(PERTURBATIONS)
    unknown = sorted(set(names) - set(PERTURBATIONS))
    if unknown:
        raise EvaluationError(f"robustness.perturbations: unknown {unknown}; known: {sorted(PERTURBATIONS)}")
    predictor = source.predictor()
    result = evaluate_robustness(lambda texts: predict(predictor, texts), data.texts, data.labels,
                                 [(n, float(r)) for n in names for r in rates], seed)
    result["split"] = split
    result["sample_size"] = sample_size
    head = ["perturbation", "rate", "accuracy", "relative to clean", "texts changed"]
    rows = [(r["name"], r["rate"], r["accuracy"], r["relative_accuracy"], r["changed_fraction"])
            for r in result["perturbations"]]
    fig = plots.bar_chart({f"{r['name']}@{r['rate']:g}": r["accuracy"] for r in result["perturbations"]},
                          f"Accuracy under perturbation (clean {result['clean_accuracy']:.3f})", "accuracy")
    alt = "Bar chart of accuracy under each perturbation and rate"
    intro = (f"{result['num_examples']} {split} examples (seeded stratified sample, seed {seed}); clean accuracy "
             f"{result['clean_accuracy']:.4f}; robustness score {result['robustness_score']:.4f} "
             f"({result['robustness_score_definition']}); worst: {result['worst']}.")
    markdown = "\n".join([intro, "", md_table(head, rows), md_image("robustness", alt)]) + "\n"
    html_body = f"<p>{html.escape(intro)}</p>" + html_table(head, rows) + plots.img_tag(fig, alt)
    return Section("robustness", "Robustness to perturbations", result, markdown, html_body, {"robustness": fig})


def optional_section(key: str, source, settings: dict, seed: int, module_name: str | None = None) -> Section:
    """The attribution / attack section from its own module; skipped (with the reason) when the module or the library
    it needs cannot be imported."""
    title = OPTIONAL_SECTIONS.get(key, key)
    module_name = module_name or f"agnews.evaluation.{key}"
    try:
        module = importlib.import_module(module_name)
        build = getattr(module, f"{key}_section")
    except ImportError as exc:
        return skipped_section(key, title, f"{module_name} cannot be imported ({exc}); install the "
                                           "report extra: pip install -e '.[report]'")
    except AttributeError:
        return skipped_section(key, title, f"{module_name} has no {key}_section()")
    import inspect

    kwargs = {str(k): v for k, v in settings.items() if str(k) != "enabled"}
    known = [n for n in inspect.signature(build).parameters if n not in ("source", "seed")]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise EvaluationError(f"{key}.{unknown[0]} is not an option of the {key} section (known: {known})")
    try:
        return build(source, seed=seed, **kwargs)
    except ImportError as exc:  # a library the section needs (captum, shap, textattack) is missing
        return skipped_section(key, title, f"a library it needs is not installed ({exc}); install the report "
                                           "extra: pip install -e '.[report]'")


def _positive(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EvaluationError(f"{name} must be a positive integer (or null), got {value!r}")
    return value


def evaluate_run(
    run: str | Path,
    compare: str | Path | None = None,
    data: str | Path | None = None,
    output_dir: str | Path | None = None,
    sample_size: int | None = None,
    seed: int = 0,
    run_data_dir: str | None = None,
    title: str | None = None,
    predictor: dict | None = None,
    sections: dict | None = None,
    calibration: dict | None = None,
    significance: dict | None = None,
    errors: dict | None = None,
    robustness: dict | None = None,
    attribution: dict | None = None,
    attack: dict | None = None,
    progress: Callable[[str], Any] | None = None,
) -> dict:
    """Build every enabled section for ``run`` and write the report; returns {"paths", "summary", "timings"}.

    ``sample_size`` (when given) overrides the sample size of the robustness suite, the attack and the out-of-domain
    data; the metrics, calibration, errors and significance sections always use the whole stored test split.
    """
    from agnews.evaluation.source import EvaluationSource

    sample_size = _positive("sample_size", sample_size)
    sections = {"metrics": True, "calibration": True, "errors": True, "robustness": True, **(sections or {})}
    calibration, significance, errors = dict(calibration or {}), dict(significance or {}), dict(errors or {})
    robustness, attribution, attack = dict(robustness or {}), dict(attribution or {}), dict(attack or {})
    predictor_options = dict(predictor or {})
    say = progress or (lambda message: log.info("%s", message))

    source = EvaluationSource.open(run, run_data_dir)
    other = EvaluationSource.open(compare, run_data_dir) if compare not in (None, "") else None
    if data not in (None, ""):
        from agnews.evaluation.source import check_ag_news_folder

        check_ag_news_folder(data, source.label_names)  # before minutes of work, not after
    out = Path(output_dir) if output_dir not in (None, "") else source.default_output_dir
    if out is None:
        raise EvaluationError(f"{source.path} is a bundle on its own: give output_dir=<folder> for the report")
    if "test" not in source.stored_splits and source.kind != "bundle":
        raise EvaluationError(f"{source.path}: no stored test predictions (stored: {source.stored_splits or 'none'})")

    precision = predictor_options.pop("precision", "auto")
    if precision == "auto":  # the run's own training precision reproduces its stored predictions
        precision = source.run.precision if source.kind == "run" else "fp32"
    source.predictor_options = {**predictor_options, "precision": precision}

    built: list[Section] = []
    timings: dict[str, float] = {}

    def step(key: str, make: Callable[[], Section]) -> None:
        say(f"section {key} ...")
        started = time.perf_counter()
        section = make()
        timings[key] = round(time.perf_counter() - started, 3)
        built.append(section)

    if sections.get("metrics", True):
        step("metrics", lambda: metrics_section(source))
    if data not in (None, ""):
        step("ood", lambda: __import__("agnews.evaluation.ood", fromlist=["x"]).ood_section(
            source, data, sample_size, seed))
    if sections.get("calibration", True):
        from agnews.evaluation.calibration import calibration_section

        step("calibration", lambda: calibration_section(source, int(calibration.get("n_bins", 15))))
    if other is not None:
        from agnews.evaluation.significance import significance_section

        n_resamples = _positive("significance.n_resamples", significance.get("n_resamples", 1000))
        step("significance", lambda: significance_section(source, other, n_resamples,
                                                          int(significance.get("seed", seed)),
                                                          float(significance.get("alpha", 0.05))))
    if sections.get("errors", True):
        from agnews.evaluation.error_analysis import errors_section

        step("errors", lambda: errors_section(source, int(errors.get("k", 10)), int(errors.get("top_confusions", 5)),
                                              int(errors.get("examples_per_confusion", 3))))
    if sections.get("robustness", True) and robustness.get("enabled", True):
        size = sample_size if sample_size is not None else _positive("robustness.sample_size",
                                                                     robustness.get("sample_size", 500))
        step("robustness", lambda: robustness_section(source, size, seed, tuple(robustness.get("rates", (0.1, 0.3))),
                                                      robustness.get("perturbations")))
    for key, settings in (("attack", attack), ("attribution", attribution)):
        if settings.get("enabled", True):
            if key == "attack" and sample_size is not None:
                settings = {**settings, "sample_size": sample_size}
            step(key, lambda key=key, settings=settings: optional_section(key, source, settings, seed))

    meta = {
        "run": str(source.path), "kind": source.kind, "compare": str(other.path) if other else None,
        "data": str(data) if data not in (None, "") else None, "seed": seed, "sample_size": sample_size,
        "precision": precision, "label_names": list(source.label_names), "section_seconds": timings,
    }
    paths = write_report(built, out, title or f"Evaluation report: {source.name}", meta)
    return {"paths": paths, "summary": {s.key: s.summary for s in built}, "timings": timings, "meta": meta}


def headline(result: dict) -> list[str]:
    """The few numbers the CLI prints."""
    s = result["summary"]
    lines = []
    if "metrics" in s:
        lines.append(f"test accuracy {s['metrics']['accuracy']:.4f}  macro-F1 {s['metrics']['f1_macro']:.4f}")
    if "calibration" in s:
        c = s["calibration"]
        lines.append(f"ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f} after temperature scaling "
                     f"(T={c['temperature']:.3f})")
    if "ood" in s:
        lines.append(f"out-of-domain accuracy {s['ood']['accuracy']:.4f} ({s['ood']['num_examples']} rows)")
    if "significance" in s:
        g = s["significance"]
        ci = g["bootstrap"]["accuracy"]
        lines.append(f"vs compare: accuracy difference {ci['difference']:+.4f} [{ci['ci_low']:+.4f}, "
                     f"{ci['ci_high']:+.4f}], McNemar p={g['mcnemar']['p_value']:.4g}")
    if "robustness" in s:
        lines.append(f"robustness score {s['robustness']['robustness_score']:.4f}")
    return lines
