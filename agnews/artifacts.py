"""Training-side helpers for the run directory: export the trained model, describe the environment.

The run-directory format itself (file names, JSON/predictions writers and readers, :func:`agnews.runs.load_run`)
lives in :mod:`agnews.runs`; see docs/runs.md.
"""

from __future__ import annotations

import platform
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
