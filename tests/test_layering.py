"""The layering in pyproject.toml's import-linter contracts holds, and the import-light promises hold at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is part of the dev extra: pip install -e '.[dev]'"
    result = subprocess.run([lint], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-2000:]


def test_inference_imports_no_hydra_or_lightning():
    """Serving builds on agnews.inference: importing it (and loading a Predictor class) must not pull Hydra/Lightning."""
    code = (
        "import sys, agnews.inference, agnews.runs\n"
        "from agnews.inference.predictor import load_model_dir\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'lightning', 'pytorch_lightning'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"
