"""A finished run directory as an object: config, manifest, metrics, predictions, label names, exported model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from agnews.errors import AGNewsError
from agnews.runs.format import (
    BUNDLE_DIR,
    BUNDLE_MANIFEST_FILE,
    CONFIG_FILE,
    ERROR_FILE,
    EXPORT_DIR,
    EXPORT_INFO_FILE,
    HYDRA_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_INFO_FILE,
    PREDICTIONS_DIR,
    predictions_path,
)
from agnews.runs.predictions import Predictions, read_predictions


class RunFormatError(AGNewsError, FileNotFoundError):
    """A path that is not a (finished) run directory, or a run that lacks what was asked of it."""


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``, or :class:`RunFormatError` naming the file and what is wrong with it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFormatError(f"{path}: unreadable ({exc})") from None
    if not isinstance(payload, dict):
        raise RunFormatError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping read with PyYAML (plain data: no Hydra or OmegaConf needed to look at a run)."""
    import yaml

    path = Path(path)
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFormatError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunFormatError(f"{path}: unreadable ({exc})") from None
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise RunFormatError(f"{path}: expected a mapping, got {type(payload).__name__}")
    return payload


@dataclass(frozen=True)
class RunDir:
    """Typed access to a run directory; build it with :func:`load_run` (which checks the run finished)."""

    path: Path

    # ---- files ----------------------------------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def bundle_dir(self) -> Path:
        return self.path / BUNDLE_DIR

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def predictions_path(self, split: str) -> Path:
        return predictions_path(self.path, split)

    # ---- contents -------------------------------------------------------------------------------------------------
    @cached_property
    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    @cached_property
    def metrics(self) -> dict:
        if not self.metrics_path.is_file():
            raise RunFormatError(f"{self.path}: the run has no {METRICS_FILE}")
        return read_json(self.metrics_path)

    @cached_property
    def config(self) -> dict:
        """The resolved config as plain data (read with PyYAML: no Hydra needed to look at a run)."""
        if not self.config_path.is_file():
            raise RunFormatError(f"{self.path}: the run has no {CONFIG_FILE}")
        return read_yaml(self.config_path)

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", "train"))

    @property
    def precision(self) -> str:
        """``bf16`` when the run trained and scored under bf16 (``trainer.precision`` bf16-mixed/bf16-true), else
        ``fp32``: the precision that reproduces its stored predictions."""
        trainer = (self.config.get("trainer") or {}) if self.config_path.is_file() else {}
        return "bf16" if str(trainer.get("precision", "32")).startswith("bf16") else "fp32"

    @property
    def splits(self) -> list[str]:
        """Splits with stored predictions."""
        return sorted(p.stem for p in (self.path / PREDICTIONS_DIR).glob("*.csv"))

    def predictions(self, split: str) -> Predictions:
        path = self.predictions_path(split)
        if not path.is_file():
            have = ", ".join(self.splits) or "none"
            raise RunFormatError(f"{self.path}: no stored predictions for split {split!r} (stored: {have})")
        return read_predictions(path)

    @property
    def label_names(self) -> list[str]:
        """From the exported model's info, else the config, else the stored predictions' columns."""
        info = self.model_info if self.has_model else {}
        if info.get("label_names"):
            return list(info["label_names"])
        names = (self.config.get("data") or {}).get("label_names") if self.config_path.is_file() else None
        if names:
            return list(names)
        if self.splits:
            return self.predictions(self.splits[0]).label_names
        raise RunFormatError(f"{self.path}: cannot tell the label names (no model info, config or predictions)")

    # ---- the exported model ---------------------------------------------------------------------------------------
    @property
    def has_model(self) -> bool:
        return (self.model_dir / MODEL_INFO_FILE).is_file()

    def require_model(self) -> Path:
        """``model/``, or a clear error saying why there is none."""
        if self.has_model:
            return self.model_dir
        if self.manifest.get("task") == "pretrain":
            raise RunFormatError(
                f"{self.path}: a domain-adaptive pre-training run (a masked-LM encoder, not a classifier); fine-tune "
                f"from it with `python -m agnews.train model.pretrained={self.path}`"
            )
        if not self.model_dir.is_dir():
            raise RunFormatError(
                f"{self.path}: the run exported no model (no {MODEL_DIR}/; train with scoring.export_model=true)"
            )
        raise RunFormatError(f"{self.model_dir}: incomplete model export (no {MODEL_INFO_FILE})")

    @cached_property
    def model_info(self) -> dict:
        return read_json(self.require_model() / MODEL_INFO_FILE)

    @property
    def has_export(self) -> bool:
        return (self.export_dir / EXPORT_INFO_FILE).is_file()

    @property
    def has_bundle(self) -> bool:
        return (self.bundle_dir / BUNDLE_MANIFEST_FILE).is_file()

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)


def _last_error_line(run_dir: Path) -> str:
    """The last non-empty line of the run's ``error.txt`` (the exception, as a traceback ends), or ''."""
    try:
        lines = (run_dir / ERROR_FILE).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def looks_like_run(path: str | Path) -> bool:
    """A run directory, finished or not (what training writes first: the resolved config or Hydra's folder)."""
    path = Path(path)
    return any((path / name).exists() for name in (MANIFEST_FILE, CONFIG_FILE, HYDRA_DIR))


def load_run(path: str | Path) -> RunDir:
    """A finished run directory, or :class:`RunFormatError` naming what is missing.

    A folder without ``run.json`` is either not a run at all or a run that did not finish (crashed, killed, or still
    running): the error says which, from the files that are there (with the last line of its ``error.txt``, if any).
    """
    if isinstance(path, RunDir):
        return path
    path = Path(path).expanduser()
    if not path.exists():
        raise RunFormatError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunFormatError(f"{path}: not a directory (a run is a directory with {MANIFEST_FILE})")
    if not (path / MANIFEST_FILE).is_file():
        if looks_like_run(path):
            error = _last_error_line(path)
            reason = f"; {ERROR_FILE} says: {error}" if error else ""
            raise RunFormatError(
                f"{path}: the run did not finish (no {MANIFEST_FILE}; it failed, was killed or is still running){reason}"
            )
        raise RunFormatError(f"{path}: not a run directory (no {MANIFEST_FILE} or {CONFIG_FILE})")
    run = RunDir(path)
    run.manifest  # noqa: B018 - parse now: a corrupt manifest fails here, not later
    return run
