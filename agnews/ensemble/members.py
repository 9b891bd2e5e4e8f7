"""The ensemble's members: finished runs, checked and joined by example id on every split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from agnews.errors import ConfigError, DataError
from agnews.runs import Predictions, RunDir, RunFormatError, align_predictions, load_run
from agnews.runs.bundle import safe_name


@dataclass
class Member:
    name: str
    run: RunDir


@dataclass
class JoinedSplit:
    """One split, rows in the same id order for every member."""

    ids: list[str]
    labels: np.ndarray  # [n]
    probs: np.ndarray  # [members, n, classes]


@dataclass
class Members:
    members: list[Member]
    label_names: list[str]
    splits: dict[str, JoinedSplit]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member_predictions(self, split: str, index: int) -> Predictions:
        joined = self.splits[split]
        return Predictions(joined.ids, joined.labels, joined.probs[index], self.label_names)


def member_paths(spec) -> dict[str, Path]:
    """``members`` from the config: a list of run directories (named by folder, made unique), or ``{name: path}``."""
    if spec is None:
        raise ConfigError("no members given: members=[<run>,<run>,...] (finished run directories)")
    if isinstance(spec, (str, Path)):
        spec = [spec]
    if isinstance(spec, Mapping):
        named = {safe_name(str(name)): Path(str(path)).expanduser() for name, path in spec.items()}
    elif isinstance(spec, Sequence):
        paths = [Path(str(p)).expanduser() for p in spec]
        names = [safe_name(p.name) for p in paths]
        # Runs in different folders may share a folder name (e.g. two `run/`): prefix the parent folder, then a number.
        names = [safe_name(f"{p.parent.name}_{p.name}") if names.count(n) > 1 else n for n, p in zip(names, paths)]
        names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        named = dict(zip(names, paths))
    else:
        raise ConfigError(f"members must be a list of run directories (members=[run_a,run_b]), got {spec!r}")
    if len(named) < 2:
        raise ConfigError(
            f"an ensemble needs at least 2 member runs, got {len(named)}: give members=[<run>,<run>,...]"
        )
    resolved: dict[Path, str] = {}
    for name, path in named.items():
        key = path.resolve()
        if key in resolved:
            raise ConfigError(f"members {resolved[key]} and {name} are the same run ({path}); list each run once")
        resolved[key] = name
    return named


def load_members(spec, splits: Sequence[str] = ("val", "test")) -> Members:
    """Load, check and join the member runs. Every problem (not a finished run, no validation predictions, a missing
    split, different examples, label names or gold labels) is reported in one error that lists them all."""
    if "val" not in splits:
        raise ConfigError(f"splits must include val (the combiner is fitted on it), got {list(splits)}")
    named = member_paths(spec)
    problems, members, stored = [], [], {}
    for name, path in named.items():
        try:
            run = load_run(path)
        except RunFormatError as exc:
            problems.append(f"{name}: {exc}")
            continue
        members.append(Member(name, run))
        missing = [s for s in splits if not run.predictions_path(s).is_file()]
        if "val" in missing:
            problems.append(
                f"{name}: no validation predictions ({run.predictions_path('val')}); the combiner is fitted on them "
                "(train with scoring.splits=[val,test])"
            )
        elif missing:
            problems.append(f"{name}: no stored predictions for {missing} (stored: {run.splits or 'none'})")
        else:
            try:
                stored[name] = {s: run.predictions(s) for s in splits}
            except DataError as exc:
                problems.append(f"{name}: {exc}")
    if problems:
        raise DataError("the members cannot be combined:\n  " + "\n  ".join(problems))
    joined = {}
    for split in splits:
        aligned = align_predictions({name: stored[name][split] for name in named}, split)
        joined[split] = JoinedSplit(aligned[0].ids, aligned[0].labels, np.stack([p.probs for p in aligned]))
    return Members(members, list(stored[members[0].name]["val"].label_names), joined)
