"""Training-side helpers for the run directory: export the trained model, describe the environment.

The run-directory format itself (file names, JSON/predictions writers and readers, :func:`agnews.runs.load_run`)
lives in :mod:`agnews.runs`; see docs/runs.md.
"""

from __future__ import annotations

import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from agnews.runs import MODEL_DIR, MODEL_INFO_FILE, write_json


def export_model(bundle, output_dir: Path, max_length: int, extra: dict | None = None) -> Path:
    """Save the classifier in Hugging Face form (safetensors) with its tokenizer and the facts needed to feed it.

    The facts file is written last: a folder without it is an incomplete export (``RunDir.require_model`` says so).
    """
    from agnews.models.exported import save_unmerged
    from agnews.models.long_input import LongInputClassifier
    from agnews.models.peft import is_peft_model

    target = Path(output_dir) / MODEL_DIR
    if is_peft_model(bundle.model):  # prompt/prefix tuning: adapter + base/ (LoRA/IA3 arrive merged)
        save_unmerged(bundle.model, target)
    elif isinstance(bundle.model, LongInputClassifier):
        # The encoder as a plain Hugging Face folder (export and from_pretrained read it); the windowing settings
        # travel in the facts file, a hierarchical pooling layer in its own safetensors file.
        bundle.model.model.save_pretrained(target, safe_serialization=True)
        bundle.model.save_extra(target)
    else:
        bundle.model.save_pretrained(target, safe_serialization=True)
    bundle.tokenizer.save_pretrained(target)
    write_json(target / MODEL_INFO_FILE, {**bundle.describe(), "max_length": max_length, **(extra or {})})
    return target


def environment() -> dict:
    import lightning
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class PhaseTimer:
    """Wall seconds per phase of a job (``lap("fit")`` closes the phase that ran since the previous lap) and the job's
    UTC start, for the run manifest's ``timings_s`` / ``started_at``."""

    def __init__(self) -> None:
        self.started_at = datetime.now(timezone.utc).isoformat()
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now


def prepare_job(cfg) -> Path:
    """What every training-side job does first: one copy of Lightning's log lines, the output folder, torch's thread
    count and the seeds. Returns the output folder."""
    import lightning as L

    # Lightning installs its own console handler; under Hydra (which configures the root logger: console + run log
    # file) that prints every Lightning message twice. Let its records flow to the root handlers only.
    logging.getLogger("lightning.pytorch").handlers.clear()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    L.seed_everything(cfg.seed, workers=True)
    return output_dir
