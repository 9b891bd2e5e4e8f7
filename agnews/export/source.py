"""What is exported: a finished run's ``model/`` (a plain transformers classifier), checked before any work starts."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from agnews.export.errors import ExportError
from agnews.runs import MODEL_INFO_FILE, RunDir, RunFormatError, load_run, read_json

ADAPTER_CONFIG = "adapter_config.json"
# Files of model/ that are weights or the transformers config: the export folder serves from ONNX, and a config.json
# there would make Predictor's backend=auto pick torch.
NOT_COPIED_NAMES = {"config.json", "generation_config.json"}
NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".index.json")


@dataclass(frozen=True)
class ExportSource:
    run: RunDir
    model_dir: Path
    info: dict  # agnews_model.json

    @property
    def family(self) -> str:
        return str(self.info.get("family", "unknown"))

    @property
    def max_length(self) -> int:
        return int(self.info.get("max_length", 128))


def load_source(run_path: str | Path) -> ExportSource:
    """The run and its exported classifier, or :class:`ExportError` saying why it cannot be exported."""
    try:
        run = load_run(run_path)
        model_dir = run.require_model()
        info = run.model_info
    except RunFormatError as exc:
        raise ExportError(f"run={run_path}: {exc}") from exc
    if info.get("input") == "text":
        raise ExportError(
            f"{model_dir}: this run's model is already an ONNX pipeline (text in, probabilities out); "
            "serve it directly with Predictor.from_path(run) instead of exporting it"
        )
    adapter = model_dir / ADAPTER_CONFIG
    if adapter.is_file():
        try:
            peft_type = read_json(adapter).get("peft_type", "peft")
        except RunFormatError:
            peft_type = "peft"
        raise ExportError(
            f"{model_dir} holds an unmerged {peft_type} adapter (prompt/prefix tuning): its virtual tokens are added "
            "inside peft's forward and cannot be exported to ONNX. LoRA and IA3 runs are merged into plain weights "
            "when training exports the model and export fine; serve this run with backend=torch."
        )
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir}: no transformers weights (config.json) to export")
    if not info.get("label_names"):
        raise ExportError(f"{model_dir / MODEL_INFO_FILE} names no label_names")
    return ExportSource(run, model_dir, info)


def copy_serving_files(model_dir: Path, target: Path) -> list[str]:
    """Copy the tokenizer files and ``agnews_model.json`` (everything but weights and config.json) into ``target``."""
    copied = []
    for path in sorted(model_dir.iterdir()):
        if not path.is_file() or path.name in NOT_COPIED_NAMES or path.name.endswith(NOT_COPIED_SUFFIXES):
            continue
        shutil.copy2(path, target / path.name)
        copied.append(path.name)
    if MODEL_INFO_FILE not in copied:
        raise ExportError(f"{model_dir}: no {MODEL_INFO_FILE} to copy")
    return copied
