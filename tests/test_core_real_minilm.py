"""The core methods on the shipped pretrained MiniLM (``model=minilm_local``) and REAL AG News rows.

The other test files check adversarial training, PEFT, distillation, resume and robustness on tiny random models over
synthetic separable texts; here the same code paths run through ``agnews.pipeline.train`` on the real encoder and real
news texts for a few steps, and what matters is asserted:

- FGM / PGD / FreeLB: at every optimizer step the word-embedding matrix is exactly what the batch found (δ never
  stays in it) and changes by exactly the optimizer's update; every δ stays in its norm ball (FGM on its surface,
  PGD/FreeLB steps of at most α), zero on padding.
- LoRA / IA3: the merged ``model/`` (plain transformers, the Predictor, ONNX) reproduces the run's stored test
  probabilities.
- Distillation from a real teacher: the logged loss is the KD/CE mix, and the student agrees with its teacher far
  more than the untrained student did.
- Resume at an epoch boundary from ``last.ckpt`` equals the uninterrupted run (metrics, probabilities to 1e-5).
- Prompt and prefix tuning learn a real task (Sports vs Sci/Tech) well above chance.
- The robustness CLI on a real run: clean accuracy is the run's own test accuracy; perturbations do not help.

Runs are fp32 (``trainer.precision=32-true``) so that "equal" can be tested exactly; runs are shared per module.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from agnews.strategies.adversarial import per_example_norm
from tests.conftest import LABELS, real_rows_dir, train_run, write_ag_news_csv

# The real encoder on CPU in fp32, short real texts, small batches: every step is a real step, seconds per run.
REAL = [
    "model=minilm_local", "trainer=cpu", "trainer.precision=32-true", "logger=csv", "data.source=csv",
    "data.train_size=null", "data.max_length=32", "data.batch_size=8", "data.eval_batch_size=64",
    "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "callbacks.progress_bar=null",
]
# No checkpoints, no scoring, no export: what the adversarial checks need is the training steps themselves.
STEPS_ONLY = [
    "trainer.enable_checkpointing=false", "callbacks.model_checkpoint=null", "callbacks.early_stopping=null",
    "scoring.splits=[]", "scoring.export_model=false", "trainer.limit_val_batches=0",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("core_real")


@pytest.fixture(scope="module")
def real_data(root, shared_data_dir) -> Path:
    """200 real train rows, 80 class-balanced real test rows."""
    return real_rows_dir(root / "data", shared_data_dir, train_rows=200, test_rows=80)


def run_real(root: Path, name: str, data: Path, *overrides: str) -> Path:
    """One pipeline run of the real MiniLM (tokenization cache shared by the module's runs)."""
    return train_run(root / name, [*REAL, f"data.data_dir={data}", *overrides], cache_dir=root / "cache")


def read_probs(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["id"] for r in rows], np.array([[float(r[f"prob_{n}"]) for n in LABELS] for r in rows])


def read_log(run: Path) -> list[dict]:
    with (run / "csv" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _config(run: Path) -> dict:
    """The run's resolved config.yaml."""
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


# ---- adversarial training: the embedding matrix never keeps δ, δ stays in its ball -----------------------------------
class AttackWatch(L.Callback):
    """Watches every optimizer step of a real adversarial run (added to the run as a Hydra callback).

    Before the optimizer steps (after the method's forwards/backwards and Lightning's clipping), the word-embedding
    matrix must be bitwise what the batch started with; a replica AdamW fed the same gradient and state then predicts
    the new matrix, which must be bitwise what the real step produced: the optimizer's update, nothing else. The δs
    the model saw (``module.trace``) are kept per step.
    """

    steps: dict[str, list[dict]] = {}

    def __init__(self, tag: str):
        self.steps_seen = AttackWatch.steps[tag] = []

    def on_train_start(self, trainer, pl_module):
        pl_module.trace = []  # the module records every δ it feeds the model (and ∂L/∂δ)
        self.embedding = pl_module.model.get_input_embeddings()
        # Lightning runs the training step (the closure) inside optimizer.step: only the post-hook sees the update.
        trainer.optimizers[0].register_step_post_hook(self._after_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.at_batch_start = self.embedding.weight.detach().clone()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # The method's forwards and backwards are over; the update has not happened yet.
        weight = self.embedding.weight
        self.current = {
            "restored": torch.equal(weight.detach(), self.at_batch_start),
            "hooks_left": len(self.embedding._forward_hooks),
            "state": copy.deepcopy(optimizer.state.get(weight, {})),
            "trace": [{k: (None if v is None else v.clone()) for k, v in e.items()} for e in pl_module.trace],
        }

    def _after_step(self, optimizer, args, kwargs):
        weight = self.embedding.weight
        current = self.current
        # The replica: the matrix the batch started with, the gradient the optimizer used (clipped; not zeroed yet),
        # the optimizer state before this step, this group's hyperparameters (lr of this step included).
        group = next(g for g in optimizer.param_groups if any(p is weight for p in g["params"]))
        replica_weight = self.at_batch_start.clone().requires_grad_(True)
        replica_weight.grad = weight.grad.detach().clone()
        replica = type(optimizer)([replica_weight])
        replica.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        if current["state"]:
            replica.state[replica_weight] = current["state"]
        replica.step()
        current.pop("state")
        current["grad_norm"] = float(weight.grad.norm())
        current["changed"] = not torch.equal(weight.detach(), self.at_batch_start)
        current["update_is_the_optimizers"] = torch.equal(weight.detach(), replica_weight.detach())
        self.steps_seen.append(current)


@pytest.mark.parametrize(
    "strategy, precision", [("fgm", "32-true"), ("pgd", "32-true"), ("freelb", "32-true"), ("pgd", "bf16-mixed")]
)
def test_adversarial_steps_on_real_minilm_keep_embeddings_and_norm_bounds(root, real_data, strategy, precision):
    """The shipped settings (conf/strategy/<strategy>.yaml), 3 real steps of batch 8; also under the bf16 autocast
    that trainer=cpu (the quickstart) trains with."""
    tag = f"{strategy}-{precision}"
    run = run_real(
        root, f"adv_{tag}", real_data, f"strategy={strategy}", *STEPS_ONLY, f"trainer.precision={precision}",
        "data.val_size=16", "trainer.max_steps=3", "strategy.optimizer.lr=1e-4",
        f"+callbacks.watch._target_={__name__}.AttackWatch", f"+callbacks.watch.tag={tag}",
    )
    settings = _config(run)["strategy"]
    eps, norm = settings["epsilon"], settings["norm"]
    steps = AttackWatch.steps[tag]
    assert len(steps) == 3
    expected_passes = {"fgm": 2, "pgd": settings.get("steps", 1) + 1, "freelb": settings.get("steps", 1)}[strategy]
    for step in steps:
        # The matrix after the attack is the matrix before it; the optimizer alone moves it.
        assert step["restored"], "δ stayed in the embedding matrix"
        assert step["hooks_left"] == 0
        assert step["grad_norm"] > 0 and step["changed"]
        assert step["update_is_the_optimizers"], "the embeddings changed by more than the optimizer's update"
        trace = step["trace"]
        assert len(trace) == expected_passes
        previous = None
        for entry in trace:
            delta, mask = entry["delta"], entry["mask"]
            size = per_example_norm(delta, norm)
            assert (size <= eps * (1 + 1e-5)).all(), size
            assert torch.count_nonzero(delta * (1 - mask)) == 0, "δ on padding"
            if previous is not None and strategy != "fgm":
                # one projected ascent step moves δ by at most α (projection onto a convex ball is non-expansive)
                assert (per_example_norm(delta - previous, norm) <= settings["alpha"] * (1 + 1e-5)).all()
            previous = delta
        final = per_example_norm(trace[-1]["delta"], norm)
        assert (final > 0).all(), "the adversarial pass saw no perturbation"
        if strategy == "fgm":
            torch.testing.assert_close(final, torch.full_like(final, eps), rtol=1e-4, atol=0)
        if strategy == "freelb":
            # the random start: inside the init ball (l2: U(-1,1)·m/√(L·d) has norm <= m)
            assert (per_example_norm(trace[0]["delta"], norm) <= settings["init_magnitude"] * (1 + 1e-5)).all()
        else:
            assert torch.count_nonzero(trace[0]["delta"]) == 0  # the clean pass
    # What the run logged per step: a real, bounded δ.
    logged = [float(r["train/delta_norm"]) for r in read_log(run) if r.get("train/delta_norm")]
    assert len(logged) == 3 and all(0 < v <= eps * (1 + 1e-5) for v in logged)


# ---- LoRA / IA3: the merged export reproduces the run ----------------------------------------------------------------
@pytest.fixture(scope="module")
def merged_run(root, real_data):
    """``merged_run(method)``: a finished fp32 peft=<method> run of the real MiniLM (1 epoch, 23 steps), cached."""
    runs: dict[str, Path] = {}

    def make(method: str) -> Path:
        if method not in runs:
            runs[method] = run_real(
                root, f"peft_{method}", real_data, f"peft={method}", "data.val_size=16", "trainer.max_epochs=1",
                "strategy.optimizer.lr=2e-3", "callbacks.early_stopping=null",
            )
        return runs[method]

    return make


def _test_texts(run: Path) -> tuple[list[str], list[str]]:
    from agnews.data.run_splits import load_run_split

    split = load_run_split(run, "test")
    return split.ids, split.texts


def check_merged_export(run: Path, method: str) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from agnews.inference import Predictor

    ids, texts = _test_texts(run)
    stored_ids, stored = read_probs(run / "predictions" / "test.csv")
    assert stored_ids == ids and len(ids) == 80
    # A plain model, and the adapter trained (the merge is not a no-op): the merged value weight is not the base one.
    exported = load_file(run / "model" / "model.safetensors")
    assert not any(mark in key for key in exported for mark in ("lora_", "ia3_", "base_layer", "modules_to_save"))
    state = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model.base_model.model.bert.encoder.layer.0.attention.self.value"
    base = state[f"{prefix}.base_layer.weight"]
    merged = exported["bert.encoder.layer.0.attention.self.value.weight"]
    assert (merged - base).abs().max() > 1e-4, f"{method}: the merged weight is the base weight"

    # Plain transformers, no peft: the run's stored test probabilities.
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    with torch.inference_mode():
        encoded = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        probs = torch.softmax(model(**encoded).logits, dim=-1).numpy()
    np.testing.assert_allclose(probs, stored, atol=1e-4, rtol=0)
    # The project's Predictor over the run directory: the same.
    predictor = Predictor.from_path(run)
    np.testing.assert_allclose(predictor.predict_proba(texts), stored, atol=1e-4, rtol=0)
    # A real model: the stored accuracy is the metrics file's, and well above chance.
    metrics = json.loads((run / "metrics.json").read_text())
    labels = [LABELS.index(name) for name in _labels_of(run)]
    assert metrics["test"]["accuracy"] == pytest.approx(float((stored.argmax(1) == np.array(labels)).mean()))
    print(f"peft={method}: test accuracy {metrics['test']['accuracy']:.3f}")
    assert metrics["test"]["accuracy"] > 0.5, metrics["test"]


def _labels_of(run: Path) -> list[str]:
    from agnews.data.run_splits import load_run_split

    return [LABELS[i] for i in load_run_split(run, "test").labels]


def test_lora_merged_export_reproduces_the_real_run(merged_run):
    check_merged_export(merged_run("lora"), "lora")


def test_ia3_merged_export_reproduces_the_real_run(merged_run):
    check_merged_export(merged_run("ia3"), "ia3")


def test_lora_onnx_export_reproduces_the_real_run(merged_run, tmp_path):
    from agnews.export import export_run
    from agnews.inference import Predictor

    run = merged_run("lora")
    folder = export_run(run, output_dir=tmp_path / "export", optimize=False, parity={"num_texts": 32})
    record = json.loads((folder / "export.json").read_text())
    assert record["parity"]["fp32"]["max_abs_diff"] <= 1e-4, record["parity"]
    _, texts = _test_texts(run)
    _, stored = read_probs(run / "predictions" / "test.csv")
    onnx = Predictor.from_path(folder, variant="fp32")
    assert onnx.describe()["backend"] == "onnx"
    np.testing.assert_allclose(onnx.predict_proba(texts), stored, atol=1e-4, rtol=0)


# ---- distillation from a real teacher --------------------------------------------------------------------------------
def _predict(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return model(**encoded).logits.argmax(-1).numpy()


def test_distillation_from_the_real_minilm_teacher(root, real_minilm_run):
    """A 3-layer MiniLM student (layers 0, 2, 4 of the pretrained 6) learns from the session's real MiniLM teacher on
    the teacher's own real rows: the logged loss is the KD/CE mix, and the student comes to agree with the teacher
    far more than it did untrained."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from agnews.strategies.distill import keep_encoder_layers

    teacher_config = _config(real_minilm_run)
    data = Path(teacher_config["data"]["data_dir"])
    run = run_real(
        root, "distill", data, "strategy=distill", f"strategy.teacher={real_minilm_run}", "strategy.student_layers=3",
        "data.val_size=100", "data.batch_size=16", "trainer.max_epochs=1", "strategy.optimizer.lr=3e-4",
        "callbacks.early_stopping=null",
    )
    config = _config(run)
    kd_weight, ce_weight = config["strategy"]["kd_weight"], config["strategy"]["ce_weight"]
    assert kd_weight > 0 and ce_weight > 0

    # The loss trained on is kd_weight·KD + ce_weight·CE, step by step, with a real (non-zero) KD term that falls.
    rows = [r for r in read_log(run) if r.get("train/kd_loss")]
    assert len(rows) == 32  # 500 training rows at batch 16, one logged row per step
    for r in rows:
        kd, ce, loss = float(r["train/kd_loss"]), float(r["train/ce_loss"]), float(r["train/loss"])
        assert kd > 0 and loss == pytest.approx(kd_weight * kd + ce_weight * ce, rel=1e-5, abs=1e-6)
    kd = [float(r["train/kd_loss"]) for r in rows]
    print(f"KD term, first/last 8 steps: {np.mean(kd[:8]):.3f} -> {np.mean(kd[-8:]):.3f}")
    assert np.mean(kd[-8:]) < 0.7 * np.mean(kd[:8]), kd

    # Agreement with the teacher's stored test predictions: the untrained student (built as the pipeline builds it,
    # same seed, same 3 layers) against the trained one.
    _, teacher_probs = read_probs(real_minilm_run / "predictions" / "test.csv")
    _, student_probs = read_probs(run / "predictions" / "test.csv")
    _, texts = _test_texts(run)
    assert len(texts) == len(teacher_probs) == 400
    L.seed_everything(config["seed"])
    bundle = instantiate(OmegaConf.create(config["model"]), label_names=LABELS)
    assert keep_encoder_layers(bundle.model, 3) == [0, 2, 4]
    untrained = _predict(bundle.model, bundle.tokenizer, texts, config["data"]["max_length"])
    teacher = teacher_probs.argmax(1)
    before = float((untrained == teacher).mean())
    after = float((student_probs.argmax(1) == teacher).mean())
    print(f"student/teacher agreement: untrained {before:.3f}, distilled {after:.3f}")
    assert after >= 0.7 and after >= before + 0.3, (before, after)  # measured: 0.31 -> 0.81
    assert json.loads((run / "model" / "config.json").read_text())["num_hidden_layers"] == 3


# ---- exact resume on the real model ----------------------------------------------------------------------------------
class StopAfterFirstEpoch(L.Callback):
    """An interruption at the epoch boundary: the run is configured exactly like the full one (same LR schedule)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


# The run's length: 2 epochs of 4 steps, set as max_epochs or as max_steps (the interruption is the same callback).
RESUME_LENGTHS = {
    "max_epochs": ["trainer.max_epochs=2"],
    "max_steps": ["trainer.max_steps=8", "trainer.max_epochs=10"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "length",
    [
        "max_epochs",
        # Lightning's processed-epoch count (what it passes to set_epoch) runs one ahead after resuming a max_steps
        # run from an end-of-epoch checkpoint; the train loader takes the epoch from trainer.current_epoch instead.
        "max_steps",
    ],
)
def test_resume_at_an_epoch_boundary_equals_the_uninterrupted_real_run(root, shared_data_dir, length):
    """8 steps (2 epochs of 4) in one go == 4 steps, stop at the epoch end, resume from last.ckpt: same final weights,
    same metrics, same test probabilities (1e-5)."""
    data = real_rows_dir(root / "resume_data", shared_data_dir, train_rows=48, test_rows=40)
    common = [
        *RESUME_LENGTHS[length], "data.val_size=16", "trainer.deterministic=true",
        "strategy.optimizer.lr=1e-4", "callbacks.early_stopping=null", "seed=5",
        # A monitor that changes every epoch, so "best" is not trivially the first epoch in both runs.
        "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min",
    ]
    full = run_real(root, f"resume_{length}_full", data, *common)
    half = run_real(
        root, f"resume_{length}_half", data, *common, f"+callbacks.interrupt._target_={__name__}.StopAfterFirstEpoch"
    )
    last = half / "checkpoints" / "last.ckpt"
    resumed = run_real(root, f"resume_{length}_resumed", data, *common, f"ckpt_path={last}")

    manifests = {name: json.loads((run / "run.json").read_text()) for name, run in
                 (("full", full), ("half", half), ("resumed", resumed))}
    assert manifests["full"]["global_step"] == manifests["resumed"]["global_step"] == 8
    assert manifests["half"]["global_step"] == 4

    def weights(run):
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]

    full_weights, resumed_weights, half_weights = weights(full), weights(resumed), weights(half)
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-5, rtol=0, msg=name)
    assert any(not torch.equal(half_weights[n], v) for n, v in full_weights.items())  # the second epoch did something

    full_metrics = json.loads((full / "metrics.json").read_text())
    resumed_metrics = json.loads((resumed / "metrics.json").read_text())
    for split in ("val", "test"):
        assert resumed_metrics[split]["accuracy"] == full_metrics[split]["accuracy"]
        assert resumed_metrics[split]["confusion_matrix"] == full_metrics[split]["confusion_matrix"]
    assert Path(resumed_metrics["best_checkpoint"]).name == Path(full_metrics["best_checkpoint"]).name
    full_ids, full_probs = read_probs(full / "predictions" / "test.csv")
    resumed_ids, resumed_probs = read_probs(resumed / "predictions" / "test.csv")
    assert resumed_ids == full_ids
    np.testing.assert_allclose(resumed_probs, full_probs, atol=1e-5, rtol=0)


# ---- prompt and prefix tuning learn a real task ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sports_vs_scitech(root, shared_data_dir) -> Path:
    """Real rows of two classes (Sports, Sci/Tech): 240 train rows, 80 balanced test rows."""
    folder = root / "two_classes"
    with (shared_data_dir / "train.csv").open(newline="", encoding="utf-8") as handle:
        train = [row for row in csv.reader(handle) if row[0] in ("2", "4")][:240]
    with (shared_data_dir / "test.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    sports = [row for row in rows if row[0] == "2"][:40]
    scitech = [row for row in rows if row[0] == "4"][:40]
    test = [row for pair in zip(sports, scitech) for row in pair]
    write_ag_news_csv(folder / "train.csv", train)
    write_ag_news_csv(folder / "test.csv", test)
    (folder / "classes.txt").write_text("\n".join(LABELS) + "\n")
    return folder


PROMPT_RECIPES = {
    # Prompt tuning needs a high learning rate (Lester et al. use 0.3); the head trains at the same rate here.
    "prompt": ["strategy.optimizer.lr=3e-2"],
    "prefix": ["strategy.optimizer.lr=1e-2"],
}


@pytest.mark.parametrize("method", sorted(PROMPT_RECIPES))
def test_prompt_methods_learn_a_real_two_class_task(root, sports_vs_scitech, method):
    from safetensors.torch import load_file

    run = run_real(
        root, f"learn_{method}", sports_vs_scitech, f"peft={method}", *PROMPT_RECIPES[method], "data.val_size=40",
        "data.batch_size=16", "trainer.max_epochs=2", "callbacks.early_stopping=null",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"peft={method}: test accuracy {metrics['test']['accuracy']:.3f}, val {metrics['val']['accuracy']:.3f}")
    assert metrics["test"]["num_examples"] == 80
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]  # chance: 0.5
    # The virtual tokens / prefix themselves trained, not just the head: each Adam step moves a weight by about lr at
    # most, so an RMS change of several lr means many consistent steps (measured: ~4 lr).
    trained = load_file(run / "model" / "adapter_model.safetensors")
    prompt = next(v for k, v in trained.items() if "prompt_embeddings" in k)
    initial = _initial_prompt(run)
    lr = _config(run)["strategy"]["optimizer"]["lr"]
    change = float((prompt - initial).pow(2).mean().sqrt())
    print(f"peft={method}: RMS change of the prompt {change / lr:.2f} lr")
    assert prompt.shape == initial.shape
    assert change > 1.5 * lr, "the prompt barely moved"


def _initial_prompt(run: Path) -> torch.Tensor:
    """The prompt encoder's weights before training: the pipeline's build (same seed) redone."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from agnews.models.peft import apply_peft

    config = _config(run)
    L.seed_everything(config["seed"])
    bundle = apply_peft(instantiate(OmegaConf.create(config["model"]), label_names=LABELS), config["peft"])
    return next(p for n, p in bundle.model.named_parameters() if "prompt_encoder" in n).detach().clone()


# ---- the robustness CLI on real runs ---------------------------------------------------------------------------------
ALL_PERTURBATIONS = {"char_swap", "char_drop", "char_insert", "keyboard_typo", "word_drop", "word_shuffle", "synonym"}


def check_robustness_report(report: dict, stored_accuracy: float, tolerance: float, names=ALL_PERTURBATIONS) -> None:
    assert report["clean_accuracy"] == pytest.approx(stored_accuracy, abs=tolerance)
    assert report["clean_accuracy"] > 0.5  # a real model on real rows
    results = report["perturbations"]
    assert {r["name"] for r in results} == set(names)
    for r in results:
        # A perturbation may flip a borderline row the right way, never many: at most clean + a few rows.
        assert 0.0 <= r["accuracy"] <= report["clean_accuracy"] + 0.05, r
        assert r["relative_accuracy"] == pytest.approx(r["accuracy"] / report["clean_accuracy"])
        if r["level"] == "char" or r["name"] == "word_drop":
            assert r["changed_fraction"] > 0.5, r  # rate 0.3 of the words of a news text: nearly every text changes
    assert report["mean_perturbed_accuracy"] <= report["clean_accuracy"]
    assert report["robustness_score"] == pytest.approx(report["mean_perturbed_accuracy"] / report["clean_accuracy"])


def test_robustness_cli_on_the_real_lora_run(merged_run, tmp_path, capsys):
    """fp32 run, fp32 scoring: the CLI's clean accuracy IS the run's test accuracy (same rows, same model)."""
    from agnews.evaluation.robustness import main

    run = merged_run("lora")
    output = tmp_path / "robustness.json"
    assert main(["--run", str(run), "--rates", "0.3", "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(output.read_text())
    assert printed == {k: report[k] for k in ("clean_accuracy", "mean_perturbed_accuracy", "robustness_score")}
    ids, _ = _test_texts(run)
    assert report["ids"] == ids and report["num_examples"] == 80 and report["precision"] == "fp32"
    stored = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    check_robustness_report(report, stored, tolerance=1e-6)  # metrics.json holds a float32 accuracy


@pytest.mark.slow
def test_robustness_cli_on_the_real_minilm_run_at_its_own_precision(real_minilm_run, tmp_path):
    """The session's bf16 quickstart-style run, scored at its own precision (--precision auto) over all 400 rows, by
    the CLI in a subprocess: bf16 reproduces the stored predictions to within a row or two, not bitwise."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    output = tmp_path / "robustness.json"
    names = ["char_swap", "word_drop", "synonym"]  # one of each kind: character, word, vocabulary
    result = subprocess.run(
        [sys.executable, "-m", "agnews.evaluation.robustness", "--run", str(real_minilm_run), "--precision", "auto",
         "--perturbations", *names, "--rates", "0.1", "0.3", "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["precision"] == "bf16" and report["num_examples"] == 400
    assert len(report["perturbations"]) == 6
    stored = json.loads((real_minilm_run / "metrics.json").read_text())["test"]["accuracy"]
    check_robustness_report(report, stored, tolerance=0.01, names=names)
    # Twice the rate, no better: per perturbation, rate 0.3 scores at most a few rows above rate 0.1.
    by = {(r["name"], r["rate"]): r["accuracy"] for r in report["perturbations"]}
    for name in {r["name"] for r in report["perturbations"]}:
        assert by[(name, 0.3)] <= by[(name, 0.1)] + 0.02, (name, by[(name, 0.1)], by[(name, 0.3)])
