"""What an evaluation reads: a finished run directory or an ensemble bundle, with clear errors for anything else.

:class:`EvaluationSource` gives every report section the same view: label names, stored predictions per split, the
texts of those examples (rebuilt from the run's config through :func:`agnews.data.run_splits.load_run_split`; for an
ensemble through its first member's run), whether each example had a title, and a lazily loaded
:class:`agnews.inference.Predictor`.

A bundle folder (``<run>/bundle``) resolves to the ensemble run that holds it (that run stored the predictions); a
bundle copied out on its own has no stored predictions, so its splits are scored through the predictor on the texts of
its first member's run.
"""

from __future__ import annotations

import csv
import os
from functools import cached_property
from pathlib import Path

from agnews.errors import AGNewsError, DataError
from agnews.evaluation import EvaluationError
from agnews.runs import BUNDLE_DIR, BUNDLE_MANIFEST_FILE, MANIFEST_FILE, ONNX_MODEL_FILE, Predictions, RunDir
from agnews.runs import RunFormatError, load_run, looks_like_run


class EvaluationSource:
    """A run or bundle to evaluate. Build with :meth:`open` (which checks the path)."""

    def __init__(self, path: Path, run: RunDir | None, bundle_dir: Path | None, data_dir: str | None = None):
        self.path = path
        self.run = run
        self.bundle_dir = bundle_dir
        self.data_dir = data_dir  # overrides the run config's data.data_dir (a run moved to another machine)
        self._predictor = None
        self.predictor_options: dict = {}  # Predictor.from_path options (backend, precision, device, batch_size)
        self._splits: dict = {}
        self._scored: dict[str, Predictions] = {}

    # ---- construction -----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, data_dir: str | None = None) -> "EvaluationSource":
        """A finished run, an ensemble run, or a bundle folder; anything else is an :class:`EvaluationError`/
        :class:`RunFormatError` saying what the path is missing."""
        if path is None or str(path).strip() in ("", "None", "null"):
            raise EvaluationError("run= is required: a finished run directory or an ensemble bundle")
        p = Path(str(path)).expanduser()
        if not p.exists():
            raise RunFormatError(f"{p}: no such run directory or bundle")
        if (p / BUNDLE_MANIFEST_FILE).is_file() and not (p / MANIFEST_FILE).is_file():
            from agnews.runs.bundle import read_bundle

            read_bundle(p)  # verified before anything trusts it
            parent = p.parent
            if p.name == BUNDLE_DIR and (parent / MANIFEST_FILE).is_file():
                run = load_run(parent)  # the ensemble run that built this bundle holds its predictions
                return cls(p.resolve(), run, p.resolve(), data_dir)
            return cls(p.resolve(), None, p.resolve(), data_dir)
        if not looks_like_run(p) and p.is_dir():
            raise RunFormatError(
                f"{p}: neither a run directory (no run.json or config.yaml) nor a bundle (no {BUNDLE_MANIFEST_FILE})"
            )
        run = load_run(p)  # a clear error for an unfinished run
        return cls(p.resolve(), run, run.bundle_dir.resolve() if run.has_bundle else None, data_dir)

    # ---- what it is --------------------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``run`` (one model), ``ensemble`` (a run with a bundle) or ``bundle`` (a bundle on its own)."""
        if self.run is None:
            return "bundle"
        return "ensemble" if self.bundle_dir is not None else "run"

    @property
    def name(self) -> str:
        return self.path.parent.name if self.path.name == BUNDLE_DIR else self.path.name

    @cached_property
    def bundle_manifest(self) -> dict | None:
        if self.bundle_dir is None:
            return None
        from agnews.runs.bundle import read_bundle

        return read_bundle(self.bundle_dir)

    @cached_property
    def label_names(self) -> list[str]:
        if self.bundle_manifest is not None:
            return list(self.bundle_manifest["label_names"])
        return self.run.label_names

    @property
    def default_output_dir(self) -> Path | None:
        """``<run>/evaluation`` for a run or an ensemble run; a bundle on its own needs ``output_dir=``."""
        return None if self.run is None else self.run.path / "evaluation"

    @property
    def hf_model_dir(self) -> Path | None:
        """The run's transformers ``model/`` (for Captum); None for a bundle or a classical (ONNX) model."""
        if self.run is None or self.bundle_dir is not None or not self.run.has_model:
            return None
        model_dir = self.run.model_dir
        if (model_dir / ONNX_MODEL_FILE).is_file() or not (model_dir / "config.json").is_file():
            return None
        return model_dir

    @cached_property
    def text_run(self) -> RunDir:
        """The run whose config rebuilds the data: the run itself, or an ensemble's first member run."""
        if self.run is not None and isinstance(self.run.config.get("data"), dict):
            return self.run
        members = (self.bundle_manifest or {}).get("members") or []
        sources = [m.get("source_run") for m in members if m.get("source_run")]
        for source in sources:
            try:
                return load_run(source)
            except RunFormatError:
                continue
        where = f"{self.path}"
        raise EvaluationError(
            f"{where}: cannot rebuild the texts: it has no data section in its config and none of its members' source "
            f"runs is available ({sources or 'none recorded'})"
        )

    # ---- predictions and texts ---------------------------------------------------------------------------------------
    @property
    def stored_splits(self) -> list[str]:
        return self.run.splits if self.run is not None else []

    def has_predictions(self, split: str) -> bool:
        return split in self.stored_splits or self.run is None

    def predictions(self, split: str) -> Predictions:
        """The stored predictions of ``split`` (for a bundle on its own: scored now through the predictor)."""
        if self.run is not None:
            if split not in self.run.splits:
                have = ", ".join(self.run.splits) or "none"
                raise EvaluationError(f"{self.run.path}: no stored predictions for split {split!r} (stored: {have})")
            return self.run.predictions(split)
        if split not in self._scored:
            data = self.split(split)
            probs = self.predictor().predict_proba(list(data.texts))
            self._scored[split] = Predictions(list(data.ids), data.labels, probs, self.label_names)
        return self._scored[split]

    def split(self, split: str):
        """The run's ``split`` (ids, texts, labels) rebuilt from its config (``agnews.data.sources.Split``)."""
        if split not in self._splits:
            from agnews.data.run_splits import load_run_split

            try:
                self._splits[split] = load_run_split(self.text_run, split, self.data_dir)
            except DataError as exc:
                raise EvaluationError(
                    f"cannot rebuild the {split} texts of {self.text_run.path}: {exc}\n"
                    "Give run_data_dir=<ag_news_csv folder> if the run's data folder moved."
                ) from None
        return self._splits[split]

    def texts(self, split: str) -> dict[str, str]:
        """{example id: text} of the split."""
        data = self.split(split)
        return dict(zip(data.ids, data.texts))

    def texts_for(self, split: str, ids) -> list[str]:
        """The texts of these ids (every id must be in the rebuilt split: otherwise the data changed since the run)."""
        by_id = self.texts(split)
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise EvaluationError(
                f"{len(missing)} stored {split} prediction ids are not in the rebuilt {split} split (e.g. "
                f"{missing[:3]}): the data folder differs from the one the run was scored on"
            )
        return [by_id[i] for i in ids]

    def empty_title(self, split: str) -> dict[str, bool] | None:
        """{id: the row had an empty title} for a CSV-sourced run; None where titles cannot be known (hub source:
        the dataset ships title and description joined)."""
        data_cfg = self.text_run.config.get("data") or {}
        folder = self.data_dir or data_cfg.get("data_dir") or os.environ.get("AGNEWS_DATA_DIR")
        if not folder or data_cfg.get("source") == "hub":
            return None
        ids = self.split(split).ids
        # Ids are "<file>-<line index>" (agnews.data.sources.read_ag_news_csv): val rows come from train.csv.
        flags: dict[str, bool] = {}
        for prefix in sorted({i.split("-", 1)[0] for i in ids}):
            path = Path(folder) / f"{prefix}.csv"
            if not path.is_file():
                return None
            flags.update(title_flags(path, prefix))
        return {i: flags[i] for i in ids if i in flags}

    # ---- the model ---------------------------------------------------------------------------------------------------
    def predictor(self, **kwargs):
        """The :class:`agnews.inference.Predictor` over this run or bundle, loaded on first use (``kwargs`` go to
        ``Predictor.from_path`` and only count on the first call)."""
        if self._predictor is None:
            from agnews.inference import Predictor

            target = self.bundle_dir or self.path
            try:
                self._predictor = Predictor.from_path(target, **{**self.predictor_options, **kwargs})
            except AGNewsError:
                raise
            except Exception as exc:  # a backend's own error type: say which run it was
                raise EvaluationError(f"{target}: cannot load a predictor ({type(exc).__name__}: {exc})") from exc
        return self._predictor

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "label_names": list(self.label_names),
                "stored_splits": self.stored_splits}


def title_flags(path: Path, split: str) -> dict[str, bool]:
    """{id: title empty} for an ag_news_csv file, with the ids ``read_ag_news_csv`` gives (line index; bad lines are
    skipped there and simply absent here)."""
    flags = {}
    with path.open("rb") as handle:
        for index, raw in enumerate(handle):
            try:
                line = raw.decode("utf-8-sig" if index == 0 else "utf-8")
                row = next(csv.reader((line,), strict=True)) if line.strip() else None
            except (UnicodeDecodeError, csv.Error, StopIteration):
                continue
            if row and len(row) == 3:
                flags[f"{split}-{index:06d}"] = not row[1].strip()
    return flags


def check_ag_news_folder(folder: str | Path, label_names) -> Path:
    """An out-of-domain data folder: must exist and hold test.csv in the ag_news_csv format (checked when read)."""
    p = Path(str(folder)).expanduser()
    if not p.is_dir():
        raise EvaluationError(f"data={folder}: no such folder (expected an ag_news_csv folder with test.csv)")
    if not (p / "test.csv").is_file():
        found = sorted(x.name for x in p.iterdir())[:10]
        raise EvaluationError(
            f"data={folder}: no test.csv (found {found}); an out-of-domain folder is in the ag_news_csv format: "
            "test.csv with lines \"class (1-N)\",\"title\",\"description\""
        )
    return p
