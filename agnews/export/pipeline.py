"""The export of one run, start to finish: checks, fp32 ONNX, ORT optimisation, INT8, TensorRT, parity, export.json.

Everything is written into a temporary folder beside the target and renamed into place at the end (a previous
export there is replaced only then): a failure at any step, or an interrupt, leaves no partial export behind.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

from agnews.export.errors import ExportError
from agnews.runs import EXPORT_INFO_FILE, ONNX_MODEL_FILE, sha256_file, write_json

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tensorrt")
QUANTIZATIONS = ("none", "int8")
OPTIMIZERS = ("auto", "session")
VARIANT_FILES = {"fp32": ONNX_MODEL_FILE, "optimized": "model.optimized.onnx", "int8": "model.int8.onnx"}
DEFAULT_OPSET = 17


@dataclass
class ParityOptions:
    """Texts and tolerance of the parity checks (see :mod:`agnews.export.parity`)."""

    texts_file: str | None = None
    num_texts: int = 256
    batch_size: int = 32
    tolerance: float = 1e-4  # max |logit difference|, fp32 and optimized ONNX vs PyTorch fp32


@dataclass
class Int8Options:
    per_channel: bool = True  # per-output-channel weight scales: on MiniLM, half the logit error of per-tensor
    min_agreement: float = 0.98  # int8 becomes the default variant only at this argmax agreement with fp32, or above


@dataclass
class TensorRTOptions:
    precision: str = "fp32"
    max_batch_size: int = 64
    workspace_gib: float = 4.0
    tolerance: float = 1e-3  # GPU kernels reduce in another order than CPU PyTorch


def _options(cls, value, name: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ExportError(f"{name} must be a mapping of options, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ExportError(f"unknown {name} option(s) {unknown}; known: {sorted(known)}")
    return cls(**dict(value))


def _check_options(fmt, quantize, optimizer, opset, int8: Int8Options, parity: ParityOptions, trt: TensorRTOptions):
    problems = []
    if fmt not in FORMATS:
        problems.append(f"format={fmt!r} (expected one of {', '.join(FORMATS)})")
    if quantize not in QUANTIZATIONS:
        problems.append(f"quantize={quantize!r} (expected one of {', '.join(QUANTIZATIONS)})")
    if optimizer not in OPTIMIZERS:
        problems.append(f"optimizer={optimizer!r} (expected one of {', '.join(OPTIMIZERS)})")
    from agnews.export.onnx_export import MIN_OPSET

    if not isinstance(opset, int) or opset < MIN_OPSET:
        problems.append(f"opset={opset!r} (expected an integer >= {MIN_OPSET})")
    if not 0 <= float(int8.min_agreement) <= 1:
        problems.append(f"int8.min_agreement={int8.min_agreement!r} (expected 0..1)")
    if parity.num_texts < 1 or parity.batch_size < 1:
        problems.append("parity.num_texts and parity.batch_size must be >= 1")
    if parity.tolerance < 0 or trt.tolerance < 0:
        problems.append("parity.tolerance and tensorrt.tolerance must be >= 0")
    from agnews.inference.backends.tensorrt_backend import PRECISIONS

    if trt.precision not in PRECISIONS:
        problems.append(f"tensorrt.precision={trt.precision!r} (expected one of {', '.join(PRECISIONS)})")
    if trt.max_batch_size < 1 or trt.workspace_gib <= 0:
        problems.append("tensorrt.max_batch_size must be >= 1 and tensorrt.workspace_gib > 0")
    if problems:
        raise ExportError("invalid export options: " + "; ".join(problems))


def _check_target(target: Path) -> None:
    """The target may be absent, empty or a previous export; its parent must be creatable and writable. Checked
    without creating anything (folders are made only once the export is about to be written)."""
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"output_dir={target} is a file, not a folder")
        if any(target.iterdir()) and not (target / EXPORT_INFO_FILE).is_file():
            raise ExportError(
                f"output_dir={target} exists and is not an export (no {EXPORT_INFO_FILE}); refusing to replace it"
            )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"output_dir={target}: cannot create its parent folder ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"output_dir={target}: {ancestor} is not writable")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created (removed again if the export fails)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    try:
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
    except OSError:
        _remove_empty(made[::-1])
        raise
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, replacing a previous export only once the new one is complete."""
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(backup)
    try:
        staging.rename(target)
    except OSError:
        if backup is not None:
            backup.rename(target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def versions(with_tensorrt: bool) -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    import agnews

    found = {
        "agnews": agnews.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if with_tensorrt:
        import tensorrt

        found["tensorrt"] = tensorrt.__version__
    return found


class _Staging:
    """The export being assembled in a temporary folder; keeps export.json current so the Predictor can load any
    variant from it during the parity checks."""

    def __init__(self, folder: Path, record: dict):
        self.folder = folder
        self.record = record

    def add_variant(self, variant: str) -> Path:
        self.record["files"][variant] = VARIANT_FILES[variant]
        return self.folder / VARIANT_FILES[variant]

    def save(self) -> None:
        write_json(self.folder / EXPORT_INFO_FILE, self.record)


def export_run(
    run: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI's name for it
    quantize: str = "none",
    optimize: bool = True,
    optimizer: str = "auto",
    output_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    int8: Int8Options | Mapping | None = None,
    parity: ParityOptions | Mapping | None = None,
    tensorrt: TensorRTOptions | Mapping | None = None,
) -> Path:
    """Export a finished run; returns the export folder (``<run>/export`` unless ``output_dir``).

    ``format``: ``onnx`` or ``tensorrt`` (the ONNX files plus an engine). ``quantize``: ``none`` or ``int8``.
    ``optimize``: write the ORT-optimized variant; ``optimizer``: ``auto`` (ORT transformer optimizer, falling back to
    session-level optimisation) or ``session``. The default variant (``export.json: default``) is the best one
    produced: int8 when its argmax agreement with fp32 on the parity texts is at least ``int8.min_agreement``, else
    optimized, else fp32. Raises :class:`ExportError` with nothing written on any failure.
    """
    parity = _options(ParityOptions, parity, "parity")
    int8_options = _options(Int8Options, int8, "int8")
    trt_options = _options(TensorRTOptions, tensorrt, "tensorrt")
    _check_options(format, quantize, optimizer, opset, int8_options, parity, trt_options)

    from agnews.export.parity import load_parity_texts
    from agnews.export.source import load_source

    source = load_source(run)
    target = Path(output_dir).expanduser() if output_dir else source.run.export_dir
    target = target.absolute()
    _check_target(target)
    if format == "tensorrt":
        from agnews.export import tensorrt as trt_export

        trt_export.check_available()
    texts = load_parity_texts(source, parity.texts_file, parity.num_texts)
    created: list[Path] = []
    try:
        created = _make_parents(target.parent)
        staging_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        _remove_empty(created)
        raise ExportError(f"output_dir={target}: cannot write in {target.parent} ({exc.strerror or exc})") from exc
    try:
        _export_into(staging_dir, source, texts, format, quantize, optimize, optimizer, opset, int8_options,
                     parity, trt_options)
        staging_dir.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the export is an ordinary folder
        _publish(staging_dir, target)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        _remove_empty(created)
        raise
    log.info("Export written to %s", target)
    return target


def _export_into(folder, source, texts, fmt, quantize, optimize, optimizer, opset, int8_options, parity, trt_options):
    import torch

    from agnews.export import onnx_export
    from agnews.export.parity import compare, predictor_logits
    from agnews.export.source import copy_serving_files
    from agnews.inference import Predictor

    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        timings[name] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()

    record = {
        "files": {},
        "default": "fp32",
        "opset": opset,
        "source_run": str(source.run.path.absolute()),
        "source_model": str(source.model_dir.absolute()),
        "family": source.family,
        "format": fmt,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {
            "quantize": quantize, "optimize": bool(optimize), "optimizer": optimizer,
            "int8": asdict(int8_options), "parity": asdict(parity), "tensorrt": asdict(trt_options),
        },
    }
    staging = _Staging(folder, record)
    record["copied"] = copy_serving_files(source.model_dir, folder)

    # ---- fp32 ONNX ------------------------------------------------------------------------------------------------
    log.info("Exporting %s to ONNX (opset %d)", source.model_dir, opset)
    model = onnx_export.load_model(source.model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)  # the copied files: proves the folder's tokenizer loads
    hf_config = model.config
    with torch.no_grad():
        record["export"] = onnx_export.export_fp32(model, tokenizer, source.info, staging.add_variant("fp32"), opset)
    del model
    lap("export")

    def metadata(variant: str) -> dict:
        return {
            "opset": opset,
            "agnews.variant": variant,
            "agnews.source_run": record["source_run"],
            "agnews.family": source.family,
            "agnews.label_names": json.dumps(list(source.info["label_names"])),
            "agnews.max_length": source.max_length,
            "agnews.exporter": onnx_export.EXPORTER,
        }

    onnx_export.stamp_metadata(folder / VARIANT_FILES["fp32"], metadata("fp32"))
    staging.save()

    # ---- parity: every variant against PyTorch fp32, through the Predictor ------------------------------------------
    reference = predictor_logits(
        Predictor.from_path(source.model_dir, backend="torch", precision="fp32", batch_size=parity.batch_size), texts.texts
    )
    results: dict[str, dict] = {
        "texts": texts.describe(),
        "reference": "PyTorch fp32 (Predictor backend=torch on the run's model/)",
    }
    if texts.labels is not None:
        results["reference_accuracy"] = float((reference.argmax(1) == texts.labels).mean())
    onnx_logits: dict[str, object] = {}

    def check(variant: str) -> dict:
        predictor = Predictor.from_path(folder, backend="onnx", variant=variant, batch_size=parity.batch_size)
        onnx_logits[variant] = predictor_logits(predictor, texts.texts)
        results[variant] = compare(reference, onnx_logits[variant], texts.labels)
        return results[variant]

    fp32 = check("fp32")
    if fp32["max_abs_diff"] > parity.tolerance:
        raise ExportError(
            f"fp32 ONNX parity failed: max |logit difference| vs PyTorch is {fp32['max_abs_diff']:.3g} > "
            f"parity.tolerance={parity.tolerance:g} on {len(texts.texts)} texts (agreement {fp32['agreement']:.4f})"
        )
    lap("parity_fp32")

    # ---- ORT graph optimisation -------------------------------------------------------------------------------------
    if optimize:
        from agnews.export.optimize import optimize as run_optimizer

        path = staging.add_variant("optimized")
        try:
            info = run_optimizer(folder / VARIANT_FILES["fp32"], path, hf_config, optimizer)
        except Exception as exc:  # the session-level fallback itself failed: ORT cannot load the graph
            raise ExportError(f"ONNX Runtime optimisation failed ({type(exc).__name__}: {exc}); export with optimize=false") from exc
        onnx_export.stamp_metadata(path, metadata("optimized"))
        staging.save()
        result = check("optimized")
        if result["max_abs_diff"] > parity.tolerance and optimizer == "auto" and "fallback_reason" not in info:
            log.warning("Transformer-optimized graph off by %.3g; falling back to session-level optimisation",
                        result["max_abs_diff"])
            rejected = {**info, "parity": result}
            info = run_optimizer(folder / VARIANT_FILES["fp32"], path, hf_config, "session")
            info["fallback_reason"] = f"transformer optimizer broke parity ({result['max_abs_diff']:.3g})"
            info["rejected"] = rejected
            onnx_export.stamp_metadata(path, metadata("optimized"))
            result = check("optimized")
        if result["max_abs_diff"] > parity.tolerance:
            raise ExportError(
                f"optimized ONNX parity failed ({info['method']}): max |logit difference| {result['max_abs_diff']:.3g} > "
                f"parity.tolerance={parity.tolerance:g}; export with optimize=false"
            )
        record["optimizer"] = info
        lap("optimize")

    # ---- INT8 -------------------------------------------------------------------------------------------------------
    if quantize == "int8":
        from agnews.export.quantize import quantize_int8

        base = "optimized" if "optimized" in record["files"] else "fp32"
        path = staging.add_variant("int8")
        try:
            record["quantization"] = quantize_int8(folder / VARIANT_FILES[base], path, per_channel=int8_options.per_channel)
        except Exception as exc:  # the quantizer raises RuntimeError/ValueError/onnx errors alike
            raise ExportError(f"INT8 quantisation of {VARIANT_FILES[base]} failed: {type(exc).__name__}: {exc}") from exc
        onnx_export.stamp_metadata(path, metadata("int8"))
        staging.save()
        check("int8")
        vs_fp32 = compare(onnx_logits["fp32"], onnx_logits["int8"])
        results["int8"].update(
            agreement_with_fp32_onnx=vs_fp32["agreement"],
            max_abs_diff_vs_fp32_onnx=vs_fp32["max_abs_diff"],
            mean_abs_diff_vs_fp32_onnx=vs_fp32["mean_abs_diff"],
        )
        lap("quantize")

    # ---- the default variant ----------------------------------------------------------------------------------------
    if "int8" in record["files"] and results["int8"]["agreement_with_fp32_onnx"] >= int8_options.min_agreement:
        record["default"] = "int8"
    else:
        record["default"] = "optimized" if "optimized" in record["files"] else "fp32"
        if "int8" in record["files"]:
            record["default_reason"] = (
                f"int8 agreement with fp32 {results['int8']['agreement_with_fp32_onnx']:.4f} < "
                f"int8.min_agreement={int8_options.min_agreement}"
            )
            log.warning("INT8 not made the default: %s", record["default_reason"])

    # ---- TensorRT ---------------------------------------------------------------------------------------------------
    if fmt == "tensorrt":
        from agnews.export import tensorrt as trt_export

        record["tensorrt"] = trt_export.build(
            folder, VARIANT_FILES["fp32"], trt_options.precision, trt_options.max_batch_size,
            onnx_export_length(record, source), trt_options.workspace_gib,
        )
        staging.save()
        predictor = Predictor.from_path(folder, backend="tensorrt", variant="fp32", batch_size=parity.batch_size)
        results["tensorrt"] = compare(reference, predictor_logits(predictor, texts.texts), texts.labels)
        results["tensorrt"]["engine"] = predictor.model.backend.engine_source
        limit = trt_options.tolerance
        if trt_options.precision == "fp32" and results["tensorrt"]["max_abs_diff"] > limit:
            raise ExportError(
                f"TensorRT parity failed: max |logit difference| {results['tensorrt']['max_abs_diff']:.3g} > "
                f"tensorrt.tolerance={limit:g}"
            )
        lap("tensorrt")

    record["parity"] = results
    record["versions"] = versions(fmt == "tensorrt")
    record["timings_s"] = timings
    record["sha256"] = {
        p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != EXPORT_INFO_FILE
    }
    staging.save()


def onnx_export_length(record: dict, source) -> int:
    """The longest sequence the engine must accept: the run's max_length (Longformer: its fixed internal length)."""
    return int(record["export"].get("fixed_internal_length") or source.max_length)
