"""Multi-stage training: ``python -m agnews.train stages=[mlm,curriculum,full] <overrides>`` chains runs.

Each entry of ``stages`` is a stage name (``conf/stage/<name>.yaml``: its ``kind`` and the ``overrides`` it adds) or an
inline mapping ``{name: ..., kind: ..., overrides: [...]}`` (with a stage file of that name, ``kind`` may be left out
and ``overrides`` are added to the file's). Stage ``i`` composes the entry config of its kind (``mlm``:
``conf/pretrain.yaml``; ``train``: ``conf/train.yaml``) with the command's overrides, then its own, then
``model.pretrained=<stage i-1's run>`` (and ``model.tiny=false``: a tiny model is then loaded, not rebuilt at random):
every stage starts from the previous stage's weights. Earlier stages write ``<run>/stages/<i>-<name>/``; the last stage
(a ``train`` stage) writes the run directory itself, so the result is a normal run (Predictor, export, ensembles).
``<run>/stages.json`` and the ``stages`` entry of ``run.json`` record every stage: name, kind, overrides, run
directory, status and headline metrics. A failing stage fails the whole run (``stages.json`` says which stage and
why). ``ckpt_path`` is refused: resuming one stage of a chain is not supported; start the chain again.

Stage configs are composed with Hydra's compose API inside the running app (GlobalHydra is initialised by
``@hydra.main``); the command's overrides come from ``HydraConfig.get().overrides.task``, so each job of a multirun
(``-m``) chains its own stages with its own overrides.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from agnews import resolvers, runs  # noqa: F401  (resolvers: ${agnews.*} in the stage configs)
from agnews.runs import STAGES_DIR, STAGES_FILE
from agnews.errors import AGNewsError, ConfigError

log = logging.getLogger(__name__)

STAGE_GROUP = "stage"
# The entry config each kind of stage composes.
KIND_CONFIGS = {"mlm": "pretrain", "train": "train"}
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class StageFailed(AGNewsError):
    """One stage of a multi-stage run failed; the run as a whole did not finish."""


@dataclass
class Stage:
    index: int  # 1-based
    name: str
    kind: str
    overrides: list[str]
    run_dir: str = "."  # relative to the top run directory
    status: str = "pending"
    starts_from: str | None = None
    command: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None


@contextlib.contextmanager
def _hydra() -> Iterator[None]:
    """Inside ``@hydra.main`` GlobalHydra is initialised already; elsewhere (a library call) use this checkout's conf."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def _stage_names() -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    return sorted(GlobalHydra.instance().config_loader().get_group_options(STAGE_GROUP))


def _stage_file(name: str) -> DictConfig | None:
    from hydra import compose

    if name not in _stage_names():
        return None
    loaded = compose(config_name=f"{STAGE_GROUP}/{name}")
    return loaded.get(STAGE_GROUP, loaded) if "kind" not in loaded else loaded


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, ListConfig)) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: overrides must be a list of 'key=value' strings, got {value!r}")
    return [str(item) for item in value]


def parse_stages(entries: Any) -> list[Stage]:
    """The ``stages`` list as :class:`Stage` objects, every mistake reported before any stage runs."""
    if not isinstance(entries, (list, ListConfig)) or not entries:
        raise ConfigError(f"stages must be a non-empty list of stage names or mappings, got {entries!r}")
    stages = []
    for index, entry in enumerate(entries, start=1):
        where = f"stages[{index - 1}]"
        if isinstance(entry, str):
            name, kind, extra = entry, None, []
        elif isinstance(entry, (dict, DictConfig)):
            unknown = sorted(set(entry) - {"name", "kind", "overrides"})
            if unknown or not isinstance(entry.get("name"), str):
                raise ConfigError(f"{where}: a stage mapping has a string 'name' and optional 'kind', 'overrides' "
                                  f"(got keys {sorted(entry)})")
            name, kind, extra = entry["name"], entry.get("kind"), _string_list(entry.get("overrides"), where)
        else:
            raise ConfigError(f"{where}: expected a stage name or a mapping, got {entry!r}")
        stage_file = _stage_file(name)
        if stage_file is None and kind is None:
            raise ConfigError(
                f"{where}: unknown stage {name!r}: no conf/{STAGE_GROUP}/{name}.yaml (available: "
                f"{', '.join(_stage_names()) or 'none'}); or give it inline: {{name: {name}, kind: train, overrides: [...]}}"
            )
        base = [] if stage_file is None else _string_list(stage_file.get("overrides"), f"conf/{STAGE_GROUP}/{name}.yaml")
        kind = kind or (stage_file.get("kind") if stage_file is not None else None)
        if kind not in KIND_CONFIGS:
            raise ConfigError(f"{where} ({name}): kind must be one of {sorted(KIND_CONFIGS)}, got {kind!r}")
        stages.append(Stage(index=index, name=name, kind=kind, overrides=base + extra))
    if stages[-1].kind != "train":
        raise ConfigError(
            f"the last stage ({stages[-1].name!r}) is a {stages[-1].kind!r} stage: the last stage writes the run "
            "directory as a classifier run, so it must be kind: train (run python -m agnews.pretrain for a "
            "pre-training run on its own)"
        )
    return stages


def command_overrides() -> list[str]:
    """This job's command-line overrides without ``stages`` itself (in a multirun: this job's values)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    task = list(HydraConfig.get().overrides.task)
    parsed = OverridesParser.create().parse_overrides(task)
    return [text for text, override in zip(task, parsed, strict=True) if override.key_or_group != "stages"]


def _compose(kind: str, overrides: list[str], output_dir: Path) -> DictConfig:
    from hydra import compose

    try:
        cfg = compose(config_name=KIND_CONFIGS[kind], overrides=overrides)
    except Exception as error:  # Hydra's composition errors (unknown group/key): name the stage's command line
        raise ConfigError(f"cannot compose the {kind} stage with overrides {overrides}: {error}") from error
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.stages = []
    return cfg


def _headline(kind: str, metrics: dict) -> dict:
    if kind == "mlm":
        return {"val": {k: metrics.get("val", {}).get(k) for k in ("mlm_loss_before", "mlm_loss")}}
    return {
        split: {k: report.get(k) for k in ("accuracy", "f1_macro")}
        for split, report in metrics.items()
        if isinstance(report, dict) and "accuracy" in report
    }


def _quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted: run directories may hold characters the grammar reserves)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _write(top: Path, base: list[str], stages: list[Stage]) -> list[dict]:
    records = [asdict(stage) for stage in stages]
    runs.write_json(top / STAGES_FILE, {"command_overrides": base, "stages": records})
    return records


def run_stages(cfg: DictConfig, base_overrides: list[str] | None = None) -> dict:
    """Run ``cfg.stages`` in order; returns the last stage's metrics (those of the run directory ``cfg`` names)."""
    from agnews.pipeline import train
    from agnews.pretraining.run import pretrain

    if cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path cannot resume a multi-stage run (stages=[...]): each stage is its own run; start the chain "
            "again, or resume its last stage alone with python -m agnews.train ckpt_path=... model.pretrained=<stage>"
        )
    top = Path(cfg.paths.output_dir).resolve()
    with _hydra():
        base = command_overrides() if base_overrides is None else list(base_overrides)
        stages = parse_stages(cfg.stages)
        top.mkdir(parents=True, exist_ok=True)
        previous: Path | None = None
        for stage in stages:
            last = stage is stages[-1]
            run_dir = top if last else top / STAGES_DIR / f"{stage.index}-{stage.name}"
            stage.run_dir = "." if last else run_dir.relative_to(top).as_posix()
            chain = [] if previous is None else [f"model.pretrained={_quoted(previous)}", "model.tiny=false"]
            stage.starts_from = None if previous is None else previous.relative_to(top).as_posix()
            stage.command = [*base, *stage.overrides, *chain]
            stage.status, stage.started_at = "running", _now()
            _write(top, base, stages)
            log.info("Stage %d/%d %r (%s): %s", stage.index, len(stages), stage.name, stage.kind, stage.command)
            try:
                stage_cfg = _compose(stage.kind, stage.command, run_dir)
                if last:

                    def finish(metrics: dict, stage: Stage = stage) -> dict:
                        stage.status, stage.finished_at = "finished", _now()
                        stage.metrics = _headline(stage.kind, metrics)
                        return {"stages": {"file": STAGES_FILE, "stages": _write(top, base, stages)}}

                    metrics = train(stage_cfg, manifest_extra=finish)
                else:
                    metrics = (pretrain if stage.kind == "mlm" else train)(stage_cfg)
                    stage.status, stage.finished_at = "finished", _now()
                    stage.metrics = _headline(stage.kind, metrics)
            except Exception as error:
                stage.status, stage.finished_at = "failed", _now()
                stage.error = f"{type(error).__name__}: {error}"
                _write(top, base, stages)
                raise StageFailed(
                    f"stage {stage.index}/{len(stages)} {stage.name!r} ({stage.kind}) failed: {stage.error} "
                    f"(its directory: {run_dir}; the record: {top / STAGES_FILE})"
                ) from error
            previous = run_dir
    return metrics
