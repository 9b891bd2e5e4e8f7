"""The ensemble's outputs: the run directory (``agnews.runs`` format) and the serving bundle's member sources."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path

import numpy as np

from agnews.ensemble.members import Member
from agnews.errors import ConfigError
from agnews.runs import (
    CONFIG_FILE,
    EXPORT_INFO_FILE,
    METRICS_FILE,
    MODEL_INFO_FILE,
    ONNX_MODEL_FILE,
    PREDICTIONS_DIR,
    RunFormatError,
    predictions_path,
    read_json,
    write_json,
    write_predictions,
    write_text_atomic,
)
from agnews.runs.bundle import BundleError, MemberSource, looks_pickled

log = logging.getLogger(__name__)

MEMBER_FORMAT_CHOICES = ("auto", "onnx", "transformers")
TOKENIZER_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens_map", "spiece", "sentencepiece", "added_tokens")
# TensorRT engines and timing caches are built for one GPU: a bundle rebuilds them where it runs.
ENGINE_SUFFIXES = (".engine", ".plan", ".trt", ".timing", ".cache")


# ---- run directory ---------------------------------------------------------------------------------------------------
def write_config(output_dir: Path, config: dict) -> None:
    import yaml

    write_text_atomic(output_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def write_split(output_dir: Path, split: str, ids, labels, probs, label_names) -> str:
    write_predictions(predictions_path(output_dir, split), ids, labels, probs, label_names)
    return f"{PREDICTIONS_DIR}/{split}.csv"


def write_metrics(output_dir: Path, metrics: dict) -> None:
    write_json(output_dir / METRICS_FILE, metrics)


def environment() -> dict:
    import scipy
    import sklearn

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
    }


# ---- bundle members --------------------------------------------------------------------------------------------------
def _regular_files(folder: Path, check: bool = True) -> dict[str, Path]:
    """Every plain file under ``folder`` (relative posix path -> path); pickled files are an error, not skipped."""
    files = {
        p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()
    }
    return _refuse_pickles(folder, files) if check else files


def _refuse_pickles(folder: Path, files: dict[str, Path]) -> dict[str, Path]:
    pickled = [rel for rel, p in files.items() if looks_pickled(p)]
    if pickled:
        raise BundleError(
            f"{folder}: pickled files {pickled}; a bundle holds safetensors, ONNX and JSON only "
            "(remove or convert them)"
        )
    return files


def _tokenizer_facts(files: dict[str, Path]) -> dict:
    names = sorted(rel for rel in files if "/" not in rel and rel.startswith(TOKENIZER_PREFIXES))
    config = files.get("tokenizer_config.json")
    tokenizer_class = None
    if config is not None:
        tokenizer_class = read_json(config).get("tokenizer_class")
    return {"class": tokenizer_class, "files": names}


def _export_files(member: Member, variant: str | None, workdir: Path) -> tuple[dict[str, Path], str, str]:
    """The export's chosen ONNX variant with what it needs to run on its own; (files, variant, onnx file name)."""
    export_dir = member.run.export_dir
    export_info = read_json(export_dir / EXPORT_INFO_FILE)
    variants = export_info.get("files") or {}
    chosen = variant or export_info.get("default")
    if chosen not in variants:
        raise RunFormatError(
            f"{export_dir}: no ONNX variant {chosen!r} for member {member.name}; it has {sorted(variants)}"
        )
    onnx_name = variants[chosen]
    others = {name for v, name in variants.items() if v != chosen}
    files = {}
    for rel, path in _regular_files(export_dir, check=False).items():
        if "/" in rel or rel == EXPORT_INFO_FILE or path.suffix in ENGINE_SUFFIXES:
            continue  # sub-folders hold engine caches; export.json is rewritten below
        if rel in others or any(rel.startswith(o + ".") or rel.startswith(o + "_") for o in others):
            continue  # another variant (or its external-data file)
        if rel.endswith(".onnx") and rel != onnx_name:
            continue
        files[rel] = path
    _refuse_pickles(export_dir, files)
    if MODEL_INFO_FILE not in files:
        files[MODEL_INFO_FILE] = member.run.require_model() / MODEL_INFO_FILE
    if not any(rel.startswith(TOKENIZER_PREFIXES) for rel in files) and member.run.has_model:
        files.update({rel: p for rel, p in _regular_files(member.run.model_dir).items()
                      if "/" not in rel and rel.startswith(TOKENIZER_PREFIXES)})
    # The bundle carries one variant: its export.json lists only that one, as the default.
    trimmed = {**export_info, "files": {chosen: onnx_name}, "default": chosen}
    if isinstance(export_info.get("sha256"), dict):
        trimmed["sha256"] = {k: v for k, v in export_info["sha256"].items() if k in files}
    info_copy = workdir / "exports" / member.name / EXPORT_INFO_FILE
    info_copy.parent.mkdir(parents=True, exist_ok=True)
    info_copy.write_text(json.dumps(trimmed, indent=2) + "\n", encoding="utf-8")
    files[EXPORT_INFO_FILE] = info_copy
    return files, chosen, onnx_name


def member_source(
    member: Member, label_names: list[str], workdir: Path, prefer: str = "auto", variant: str | None = None
) -> MemberSource:
    """How ``member`` goes into the bundle: its ONNX export when it has one (``export/export.json``), a text-input ONNX
    model when ``model/agnews_model.json`` says ``"input": "text"``, else its ``model/`` safetensors (torch).
    ``prefer``: ``auto`` (that order), ``onnx`` or ``transformers`` (an error when the member has no such model);
    ``workdir`` holds generated files (the trimmed export.json) until the bundle is written."""
    if prefer not in MEMBER_FORMAT_CHOICES:
        raise ConfigError(f"bundle.member_format={prefer!r}; choose one of {MEMBER_FORMAT_CHOICES}")
    run = member.run
    if run.task == "ensemble" or run.has_bundle:
        raise RunFormatError(
            f"member {member.name} ({run.path}) is itself an ensemble: a bundle cannot nest bundles; "
            "combine its members directly, or set bundle.enabled=false"
        )
    info = run.model_info if run.has_model else {}
    has_export = run.has_export
    is_text = info.get("input") == "text"
    # scored_precision: the precision that reproduces the member's stored predictions (bf16 for trainer=cpu runs)
    facts = {"source_run": str(run.path.resolve()), "task": run.task, "family": info.get("family"),
             "scored_precision": run.precision}
    if has_export and prefer in ("auto", "onnx") and not is_text:
        files, chosen, onnx_name = _export_files(member, variant, workdir)
        model_info = read_json(files[MODEL_INFO_FILE])
        fmt, reason = "onnx", f"ONNX export, variant {chosen} ({run.export_dir.name}/{onnx_name})"
        facts.update(variant=chosen, onnx_file=onnx_name, tokenizer=_tokenizer_facts(files))
    elif is_text and prefer in ("auto", "onnx"):
        files = _regular_files(run.model_dir)
        model_info = info
        onnx_name = info.get("onnx_file", ONNX_MODEL_FILE)
        if onnx_name not in files:
            raise RunFormatError(f"{run.model_dir}: text-input model without its ONNX file {onnx_name}")
        fmt, reason = "text-onnx", f"text-input ONNX model ({run.model_dir.name}/{onnx_name}; tokenizes in the graph)"
        facts.update(onnx_file=onnx_name, tokenizer={"class": "in-graph", "files": []})
    elif prefer in ("auto", "transformers") and not is_text and run.has_model:
        files = _regular_files(run.model_dir)
        if "config.json" not in files and "adapter_config.json" not in files:
            raise RunFormatError(
                f"{run.model_dir}: member {member.name} has neither transformers weights nor an export"
            )
        model_info = info
        fmt, reason = "transformers", f"transformers safetensors ({run.model_dir.name}/, torch backend; no ONNX export)"
        facts.update(tokenizer=_tokenizer_facts(files))
    else:
        wanted = {"onnx": "an ONNX export (python -m agnews.export run=...)", "transformers": "a model/ with weights"}
        raise RunFormatError(
            f"member {member.name} ({run.path}) has no model to bundle"
            + (f" in the requested format ({wanted[prefer]})" if prefer != "auto" else " (no export/ and no model/)")
            + "; set bundle.enabled=false to combine stored predictions only"
        )
    if list(model_info.get("label_names") or []) != list(label_names):
        raise BundleError(
            f"member {member.name}: its model predicts {model_info.get('label_names')}, its stored predictions and the "
            f"ensemble use {label_names}"
        )
    facts.update(
        max_length=model_info.get("max_length"),
        label_names=list(label_names),
        label_map={name: i for i, name in enumerate(label_names)},
        reason=reason,
    )
    log.info("bundle member %s: %s", member.name, reason)
    return MemberSource(member.name, fmt, files, facts)
