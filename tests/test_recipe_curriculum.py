"""Curriculum sampler (agnews/data/curriculum.py): pacing, coverage, determinism, resume, teacher losses, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, small_data_overrides, train_run
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from agnews import runs
from agnews.data.batching import LengthGroupedBatchSampler
from agnews.data.curriculum import (
    CurriculumBatchSampler,
    LengthCurriculum,
    TeacherLossCurriculum,
    competence,
)
from agnews.data.sources import Split
from agnews.errors import ConfigError

LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _lengths(count: int = 600, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 120, size=count)


def _sampler(lengths=None, **options) -> LengthCurriculum:
    settings = dict(batch_size=16, seed=3, epochs=3, pacing="root", start_fraction=0.1, duration=0.5)
    settings.update(options)
    return LengthCurriculum(None, _lengths() if lengths is None else lengths, **settings)


def _epochs(sampler, epochs: int) -> list[list[list[int]]]:
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_competence_root_and_linear_start_at_c0_and_reach_one_at_T():
    assert competence(0, 100, 0.1, "root") == pytest.approx(0.1)
    assert competence(0, 100, 0.1, "linear") == pytest.approx(0.1)
    assert competence(25, 100, 0.1, "root") == pytest.approx(np.sqrt(25 * 0.99 / 100 + 0.01))
    assert competence(50, 100, 0.2, "linear") == pytest.approx(0.6)
    assert competence(100, 100, 0.1, "root") == competence(500, 100, 0.1, "linear") == 1.0
    # root pacing admits data faster early on than linear
    assert competence(10, 100, 0.1, "root") > competence(10, 100, 0.1, "linear")


@pytest.mark.parametrize("pacing", ["root", "linear"])
def test_early_batches_are_shorter_and_every_example_is_drawn(pacing):
    lengths = _lengths()
    sampler = _sampler(lengths, pacing=pacing, epochs=4)
    epochs = _epochs(sampler, 4)
    flat = [batch for epoch in epochs for batch in epoch]
    assert len(epochs[0]) == len(sampler) == int(np.ceil(len(lengths) / 16))
    assert all(len(batch) == 16 and len(set(batch)) == 16 for batch in flat)
    # The first batch comes from the shortest start_fraction (10 %) of the data (ties broken at random).
    assert lengths[flat[0]].max() <= np.quantile(lengths, 0.1)
    early = np.mean([lengths[b].mean() for b in flat[:5]])
    late = np.mean([lengths[b].mean() for b in epochs[-1]])
    assert early < 0.5 * late
    # Once the pool is the whole split (after duration 0.5 of 4 epochs), every example is drawn within two passes.
    end = sampler.describe()["total_pacing_batches"]
    assert end == int(np.ceil(0.5 * 4 * len(sampler))) and sampler.pool_size(end) == len(lengths)
    assert sampler.pool_size(end - 1) < len(lengths)
    assert {i for batch in flat[end : end + 2 * len(sampler)] for i in batch} == set(range(len(lengths)))


def test_pool_is_drawn_in_passes_without_repeats():
    # Before competence grows past the first pool, no example repeats until the whole pool was drawn once.
    sampler = _sampler(start_fraction=0.5, duration=1.0, epochs=100, pacing="linear")
    sampler.set_epoch(0)
    first = [i for batch in list(sampler)[:9] for i in batch]  # 144 draws from a pool of >= 300
    assert len(first) == len(set(first))


def test_same_seed_same_batches_other_seed_other_batches():
    assert _epochs(_sampler(), 2) == _epochs(_sampler(), 2)
    assert _epochs(_sampler(), 1) != _epochs(_sampler(seed=4), 1)
    # Any epoch computed on its own (a fresh sampler, as after a restart) equals the one from an uninterrupted pass.
    fresh = _sampler()
    fresh.set_epoch(2)
    assert list(fresh) == _epochs(_sampler(), 3)[2]


def test_resume_mid_epoch_continues_with_the_uninterrupted_batches():
    reference = _epochs(_sampler(), 3)
    interrupted = _sampler()
    interrupted.set_epoch(1)
    iterator = iter(interrupted)
    for _ in range(7):
        next(iterator)
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 7
    resumed = _sampler()
    resumed.load_state_dict(state)
    assert resumed.pending_resume_epoch == 1
    resumed.set_epoch(1)
    assert list(resumed) == reference[1][7:]
    resumed.set_epoch(2)
    assert list(resumed) == reference[2]
    # A position saved under other pacing would skip the wrong batches: refused, naming the difference.
    with pytest.raises(ValueError, match="curriculum"):
        _sampler(pacing="linear").load_state_dict(state)


def test_sharded_ranks_split_the_same_curriculum():
    whole = _sampler()
    whole.set_epoch(0)
    batches = list(whole)
    ranks = [_sampler(num_replicas=2, rank=rank) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(0)
    per_rank = len(batches) // 2
    assert list(ranks[0]) == batches[0 : per_rank * 2 : 2]
    assert list(ranks[1]) == batches[1 : per_rank * 2 : 2]
    assert isinstance(ranks[0], LengthGroupedBatchSampler) and len(ranks[0]) == per_rank


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pacing": "step"}, "pacing must be one of"),
        ({"start_fraction": 0.0}, r"start_fraction must be in \(0, 1\]"),
        ({"start_fraction": 1.5}, r"start_fraction must be in \(0, 1\]"),
        ({"duration": 0}, r"duration .* must be in \(0, 1\]"),
        ({"epochs": -1}, "set trainer.max_epochs or data.curriculum.epochs"),
    ],
)
def test_bad_settings_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        _sampler(**options)


def test_difficulty_must_match_the_split():
    with pytest.raises(ConfigError, match="3 difficulty scores for 600"):
        CurriculumBatchSampler([1.0, 2.0, 3.0], _lengths(), 16, epochs=1)
    with pytest.raises(ConfigError, match="finite"):
        CurriculumBatchSampler([np.nan] * 600, _lengths(), 16, epochs=1)


# ---- teacher loss ---------------------------------------------------------------------------------------------------
def _split(count: int = 400) -> Split:
    labels = [i % 4 for i in range(count)]
    return Split("train", [f"train-{i:06d}" for i in range(count)], [f"text {i}" for i in range(count)], labels)


def _teacher_run(folder, split: Split, p_gold: np.ndarray, splits=("train", "val")):
    """A finished run directory whose stored predictions give each example ``p_gold`` on its gold class."""
    folder.mkdir(parents=True)
    count = len(split)
    rest = (1 - p_gold) / 3
    probs = np.repeat(rest[:, None], 4, axis=1)
    probs[np.arange(count), split.labels] = p_gold
    for name in splits:
        runs.write_predictions(runs.predictions_path(folder, name), split.ids, split.labels, probs, LABELS)
    runs.write_json(folder / runs.MANIFEST_FILE, {"task": "train"})
    return folder


def test_teacher_loss_orders_batches_by_the_teachers_loss(tmp_path):
    split = _split()
    p_gold = np.random.default_rng(1).uniform(0.05, 0.99, size=len(split))
    teacher = _teacher_run(tmp_path / "teacher", split, p_gold)
    sampler = TeacherLossCurriculum(
        split, _lengths(len(split)), batch_size=16, seed=0, teacher=str(teacher), epochs=2, start_fraction=0.1,
        duration=0.5,
    )
    np.testing.assert_allclose(sampler.difficulty, -np.log(p_gold), atol=1e-5)
    epochs = _epochs(sampler, 2)
    loss = sampler.difficulty
    assert loss[epochs[0][0]].max() <= np.quantile(loss, 0.1) + 1e-9
    assert np.mean([loss[b].mean() for b in epochs[0][:3]]) < 0.5 * np.mean([loss[b].mean() for b in epochs[1]])
    assert sampler.describe()["teacher"] == str(teacher) and sampler.describe()["difficulty"] == "teacher_loss"


def test_teacher_without_train_predictions_says_what_to_run(tmp_path):
    split = _split()
    teacher = _teacher_run(tmp_path / "teacher", split, np.full(len(split), 0.5), splits=("val", "test"))
    with pytest.raises(ConfigError, match=r"no train predictions.*scoring.splits=\[train,val,test\]"):
        TeacherLossCurriculum(split, _lengths(len(split)), 16, teacher=str(teacher), epochs=1)


def test_teacher_that_scored_other_examples_is_refused(tmp_path):
    split = _split()
    teacher = _teacher_run(tmp_path / "teacher", split.subset(range(300)), np.full(300, 0.5))
    with pytest.raises(ConfigError, match="did not score this run's train examples.*100 of 400 ids"):
        TeacherLossCurriculum(split, _lengths(len(split)), 16, teacher=str(teacher), epochs=1)


def test_teacher_missing_or_unfinished_is_a_config_error(tmp_path):
    split = _split()
    with pytest.raises(ConfigError, match="needs a teacher run"):
        TeacherLossCurriculum(split, _lengths(len(split)), 16, teacher=None, epochs=1)
    with pytest.raises(ConfigError, match="no such run directory"):
        TeacherLossCurriculum(split, _lengths(len(split)), 16, teacher=str(tmp_path / "nope"), epochs=1)


# ---- the YAML configs -----------------------------------------------------------------------------------------------
def test_yaml_builds_the_partial_the_data_module_calls(compose_train_cfg, tmp_path):
    cfg = compose_train_cfg(["data/curriculum=length", "trainer.max_epochs=4", "data.curriculum.pacing=linear"])
    factory = instantiate(cfg.data.curriculum)
    sampler = factory(split=_split(), lengths=_lengths(400), batch_size=16, seed=5, num_replicas=1, rank=0)
    assert isinstance(sampler, LengthCurriculum)
    assert sampler.describe()["epochs"] == 4 and sampler.pacing == "linear"

    split = _split()
    teacher = _teacher_run(tmp_path / "teacher", split, np.linspace(0.1, 0.9, len(split)))
    cfg = compose_train_cfg(["data/curriculum=teacher_loss", f"data.curriculum.teacher={teacher}"])
    sampler = instantiate(cfg.data.curriculum)(
        split=split, lengths=_lengths(400), batch_size=16, seed=5, num_replicas=1, rank=0
    )
    assert isinstance(sampler, TeacherLossCurriculum) and sampler.epochs == cfg.trainer.max_epochs
    assert sampler.start_fraction == 0.1 and sampler.duration == 0.5  # inherited from length.yaml


# ---- through the pipeline -------------------------------------------------------------------------------------------
class TrainBatches(Callback):
    """Writes the dataset indices of every training batch, one line per batch (a file: works in any process)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        with self.path.open("a") as handle:
            handle.write(" ".join(str(i) for i in batch["index"].tolist()) + "\n")


def _trained_batches(path: Path) -> list[list[int]]:
    return [[int(i) for i in line.split()] for line in path.read_text().splitlines()]


def test_length_then_teacher_loss_curriculum_train_end_to_end(tmp_path, make_ag_news_dir):
    from agnews.data.run_splits import load_run_split

    data = make_ag_news_dir(train_per_class=30, test_per_class=5)
    common = [*TINY, *small_data_overrides(data), "trainer.max_epochs=2", "strategy.optimizer.lr=2e-2"]
    # A length curriculum; this run also scores its train split, so it can teach the next one.
    batches = tmp_path / "length_batches.txt"
    teacher = train_run(
        tmp_path / "length",
        [*common, "data/curriculum=length", "scoring.splits=[train,val,test]",
         f"+callbacks.batches._target_={__name__}.TrainBatches", f"+callbacks.batches.path={batches}"],
    )
    manifest = runs.load_run(teacher).manifest
    assert manifest["data"]["curriculum"]["difficulty"] == "length"
    train = load_run_split(teacher, "train")
    trained = _trained_batches(batches)
    assert len(trained) == 2 * int(np.ceil(len(train) / 16))
    # The first batch is the 16 shortest training texts (c0 * 80 rows < one batch: the pool is one batch's worth).
    from agnews.data.tokenization import tokenize_texts
    from agnews.models.factory import offline_tokenizer

    lengths = tokenize_texts(offline_tokenizer("right"), train.texts, 32, None).lengths
    assert lengths[trained[0]].max() <= np.sort(lengths)[15]

    batches = tmp_path / "teacher_batches.txt"
    student = train_run(
        tmp_path / "student",
        [*common, "data/curriculum=teacher_loss", f"data.curriculum.teacher={teacher}",
         f"+callbacks.batches._target_={__name__}.TrainBatches", f"+callbacks.batches.path={batches}"],
    )
    assert runs.load_run(student).manifest["data"]["curriculum"]["teacher"] == str(teacher)
    stored = runs.read_predictions(runs.predictions_path(teacher, "train")).select(train.ids)
    loss = -np.log(np.maximum(stored.probs[np.arange(len(train)), stored.labels], 1e-12))
    first = _trained_batches(batches)[0]
    assert loss[first].max() <= np.sort(loss)[15] + 1e-6
