"""Long inputs (model.long_input=sliding_window|head_tail|hierarchical): windowing at token level, every model family,
clear config errors, training from the CLI, the Predictor and the ONNX export of a windowed run, and the decisive
sentence past the first window that changes the prediction only with windows on (real pretrained MiniLM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import LABELS, REPO_ROOT, TINY, real_rows_dir, small_data_overrides, train_run

from agnews.data.padding import pad_token_ids
from agnews.errors import ConfigError
from agnews.models.long_input import LongInputClassifier, LongInputSettings, make_windows

CLS, SEP, PAD = 101, 102, 0


def settings(**values) -> LongInputSettings:
    base = dict(mode="sliding_window", window=8, stride=2, max_windows=4, prefix_ids=[CLS], suffix_ids=[SEP])
    result = LongInputSettings(**{**base, **values})
    result.check(None)
    return result


def windows_of(config: LongInputSettings, rows: list[list[int]]):
    batch = pad_token_ids(rows, PAD, config.padding_side)
    out = make_windows(config, torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
    return out, out.inputs["input_ids"].tolist(), out.inputs["attention_mask"].tolist()


# ---- windowing, token by token -------------------------------------------------------------------------------------
def test_sliding_windows_cover_every_content_token_with_the_stride_as_overlap():
    content = list(range(1000, 1013))  # 13 tokens; window 8 = [CLS] + 6 content + [SEP]; step 6 - 2 = 4
    out, ids, mask = windows_of(settings(), [[CLS, *content, SEP], [CLS, 2000, 2001, SEP]])
    assert out.valid.tolist() == [[True, True, True], [True, False, False]]
    assert ids == [
        [CLS, 1000, 1001, 1002, 1003, 1004, 1005, SEP],
        [CLS, 1004, 1005, 1006, 1007, 1008, 1009, SEP],  # shares 1004, 1005 (stride 2) with the first window
        [CLS, 1008, 1009, 1010, 1011, 1012, SEP, PAD],
        [CLS, 2000, 2001, SEP, PAD, PAD, PAD, PAD],  # the short row: one window, exactly its own tokens
    ]
    assert mask == [[1] * 8, [1] * 8, [1] * 7 + [0], [1] * 4 + [0] * 4]
    assert out.summary_position == 0


def test_a_window_is_added_only_when_it_adds_content():
    # 10 content tokens: the second window (4..9) already reaches the end, so no third one
    out, ids, _ = windows_of(settings(), [[CLS, *range(1000, 1010), SEP]])
    assert out.valid.tolist() == [[True, True]]
    assert ids[-1] == [CLS, *range(1004, 1010), SEP]


def test_left_padded_windows_keep_real_tokens_at_the_end_for_xlnet():
    config = settings(padding_side="left", prefix_ids=[], suffix_ids=[SEP, CLS])  # XLNet: <sep> <cls> last
    out, ids, mask = windows_of(config, [[*range(1000, 1009), SEP, CLS], [2000, SEP, CLS]])
    assert ids == [
        [1000, 1001, 1002, 1003, 1004, 1005, SEP, CLS],
        [PAD, 1004, 1005, 1006, 1007, 1008, SEP, CLS],
        [PAD, PAD, PAD, PAD, PAD, 2000, SEP, CLS],
    ]
    assert mask == [[1] * 8, [0] + [1] * 7, [0] * 5 + [1] * 3]
    assert out.summary_position == 7  # XLNet's head reads the last position


def test_head_tail_keeps_the_first_and_the_last_tokens():
    config = settings(mode="head_tail", window=8, head_tokens=2)
    out, ids, _ = windows_of(config, [[CLS, *range(1000, 1020), SEP], [CLS, 2000, 2001, SEP]])
    assert out.valid.tolist() == [[True], [True]]
    assert ids == [[CLS, 1000, 1001, 1016, 1017, 1018, 1019, SEP], [CLS, 2000, 2001, SEP, PAD, PAD, PAD, PAD]]


def test_max_windows_bounds_the_grid_and_the_tokenizer_limit():
    config = settings(max_windows=2)
    assert config.max_length == 2 + 6 + 4  # the longest row two windows cover
    out, ids, _ = windows_of(config, [[CLS, *range(1000, 1030), SEP]])
    assert out.valid.shape == (1, 2) and ids[1] == [CLS, *range(1004, 1010), SEP]


def test_longformer_windows_get_global_attention_on_their_first_token():
    config = settings(global_attention_first_token=True)
    out, _, _ = windows_of(config, [[CLS, *range(1000, 1010), SEP]])
    assert out.inputs["global_attention_mask"].tolist() == [[1] + [0] * 7] * 2


# ---- every model family: a text that fits one window scores exactly as without windows -------------------------------
FAMILY_MODES = [
    ("minilm", "sliding_window", "mean"),
    ("roberta", "sliding_window", "max"),
    ("deberta", "head_tail", "mean"),
    ("electra", "hierarchical", "mean"),
    ("xlnet", "hierarchical", "mean"),
    ("longformer", "sliding_window", "mean"),
]
SHORT = ["Late goal wins the derby", "Stocks rally as oil falls on Wall Street", "New chip"]
LONG = [" ".join(["shares profit market earnings investors bank merger stocks"] * 9), *SHORT]


def tiny_bundles(compose_train_cfg, family: str, mode: str, pooling: str, window: int = 16):
    """The same random weights with windows off and on (seeded builds; large init so logits are far from zero)."""
    common = [f"model={family}", "model.tiny=true", "+model.config_overrides.initializer_range=0.5"]
    torch.manual_seed(0)
    plain = instantiate(compose_train_cfg(common).model, label_names=LABELS)
    options = [f"model.long_input={mode}", f"model.long_input_options.window={window}",
               "model.long_input_options.stride=4", f"model.long_input_options.pooling={pooling}"]
    torch.manual_seed(0)
    windowed = instantiate(compose_train_cfg(common + options).model, label_names=LABELS)
    return plain, windowed


def logits(bundle, texts: list[str], max_length: int) -> np.ndarray:
    from agnews.inference.backends.torch_backend import TorchBackend
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel

    encoder = TextEncoder(bundle.tokenizer, max_length, bundle.padding_side, bundle.global_attention_first_token)
    return TransformerModel(encoder, TorchBackend(bundle.model), len(LABELS)).predict_logits(texts)


@pytest.mark.parametrize(("family", "mode", "pooling"), FAMILY_MODES)
def test_short_texts_score_as_without_windows_and_long_texts_export_to_onnx(
    compose_train_cfg, tmp_path, family, mode, pooling
):
    from agnews.export.onnx_export import export_fp32
    from agnews.inference.backends.onnx_backend import OnnxBackend
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel

    plain, windowed = tiny_bundles(compose_train_cfg, family, mode, pooling)
    assert isinstance(windowed.model, LongInputClassifier)
    assert windowed.describe()["long_input"]["mode"] == mode
    reference = logits(plain, SHORT, 16)
    assert np.abs(reference).max() > 0.05  # logits far enough from zero for the comparisons to mean something
    np.testing.assert_allclose(logits(windowed, SHORT, 64), reference, atol=1e-4)

    # ONNX: the wrapper with its pooling in the graph, the sequence padded to max_length inside it; same logits
    windowed.model.eval()
    info = {**windowed.describe(), "max_length": 64}
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        facts = export_fp32(windowed.model, windowed.tokenizer, info, path, 17)
    assert facts["long_input"] == mode and facts["fixed_internal_length"] == 64
    torch_logits = logits(windowed, LONG, 64)
    onnx_model = TransformerModel(TextEncoder.from_info(windowed.tokenizer, info), OnnxBackend(path), len(LABELS))
    np.testing.assert_allclose(onnx_model.predict_logits(LONG), torch_logits, atol=1e-4)
    if mode != "head_tail":  # the long text spans several windows: its logits differ from the truncated text's
        assert np.abs(torch_logits[0] - logits(plain, LONG[:1], 16)[0]).max() > 1e-3


def test_export_model_saves_and_load_classifier_restores_the_hierarchical_pooling(compose_train_cfg, tmp_path):
    from agnews.artifacts import export_model
    from agnews.models.exported import load_classifier
    from agnews.models.long_input import WEIGHTS_FILE

    _, windowed = tiny_bundles(compose_train_cfg, "xlnet", "hierarchical", "mean")
    with torch.no_grad():  # a trained-looking attention layer, not its initial weights
        windowed.model.pool.score.weight.normal_(0, 2.0)
    windowed.model.eval()
    model_dir = export_model(windowed, tmp_path, max_length=64)
    assert (model_dir / WEIGHTS_FILE).is_file() and (model_dir / "config.json").is_file()
    loaded = load_classifier(model_dir)
    assert isinstance(loaded.model, LongInputClassifier) and loaded.max_length == 64
    assert loaded.model.settings == windowed.model.settings
    loaded_bundle = type(windowed)(loaded.model, loaded.tokenizer, "xlnet", "x", LABELS)
    np.testing.assert_allclose(logits(loaded_bundle, LONG, 64), logits(windowed, LONG, 64), atol=1e-5)

    (model_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_classifier(model_dir)


def test_fine_tuning_on_from_a_hierarchical_model_continues_its_attention_pooling(compose_train_cfg, tmp_path):
    from agnews.artifacts import export_model

    _, windowed = tiny_bundles(compose_train_cfg, "xlnet", "hierarchical", "mean")
    with torch.no_grad():
        windowed.model.pool.score.weight.normal_(0, 2.0)
    model_dir = export_model(windowed, tmp_path / "first", max_length=64)
    options = ["model=xlnet", f"model.pretrained={model_dir}", "model.long_input_options.window=16",
               "model.long_input_options.stride=4"]
    again = instantiate(compose_train_cfg([*options, "model.long_input=hierarchical"]).model, label_names=LABELS)
    for name, tensor in windowed.model.pool.state_dict().items():
        assert torch.equal(again.model.pool.state_dict()[name], tensor), name
    # a model folder without a trained attention layer (windows off before) starts a fresh one, as before
    plain_dir = export_model(tiny_bundles(compose_train_cfg, "xlnet", "sliding_window", "mean")[1], tmp_path / "plain",
                             max_length=64)
    fresh = instantiate(compose_train_cfg([*options, f"model.pretrained={plain_dir}", "model.long_input=hierarchical"]).model,
                        label_names=LABELS)
    assert not torch.equal(fresh.model.pool.score.weight, windowed.model.pool.score.weight)


def test_lora_on_a_windowed_model_exports_merged_weights_the_predictor_windows_again(tmp_path, make_ag_news_dir):
    from agnews.data.run_splits import load_run_split
    from agnews.inference import Predictor
    from agnews.runs import load_run

    run = load_run(train_run(tmp_path / "run", [
        *TINY, *small_data_overrides(make_ag_news_dir(10, 3)), "data.val_size=8", "trainer.max_epochs=1", "peft=lora",
        "model.long_input=sliding_window", "model.long_input_options.window=16", "model.long_input_options.stride=4",
        "data.max_length=64",
    ]))
    assert not (run.path / "model" / "adapter_config.json").exists()  # LoRA merged into plain weights
    predictor = Predictor.from_path(run.path)
    assert isinstance(predictor.model.backend.model, LongInputClassifier)
    test = load_run_split(run, "test")
    np.testing.assert_allclose(predictor.predict_proba(test.texts), run.predictions("test").probs, atol=1e-5, rtol=0)


# ---- clear errors --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.long_input=windows"], "model.long_input='windows' is unknown"),
        (["model.long_input=sliding_window", "model.long_input_options.window=600"], "exceeds the model's maximum input of 512"),
        (["model.long_input=sliding_window", "model.long_input_options.window=16", "model.long_input_options.stride=14"],
         "stride=14 must be smaller than the window's 14 text tokens"),
        (["model.long_input=sliding_window", "model.long_input_options.window=2"], "leaves no room for text"),
        (["model.long_input=sliding_window", "model.long_input_options.pooling=sum"], "pooling='sum'"),
        (["model.long_input=head_tail", "model.long_input_options.window=16", "model.long_input_options.head_tokens=15"],
         "head_tokens=15: expected 0..14"),
        (["model.long_input=sliding_window", "+model.long_input_options.overlap=3"], "unknown option(s) ['overlap']"),
        (["model.long_input=sliding_window", "model.long_input_options.max_windows=0"], "max_windows=0"),
    ],
)
def test_bad_long_input_options_are_config_errors(compose_train_cfg, overrides, message):
    cfg = compose_train_cfg(["model=minilm", "model.tiny=true", *overrides])
    with pytest.raises(Exception) as caught:
        instantiate(cfg.model, label_names=LABELS)
    error = caught.value if isinstance(caught.value, ConfigError) else caught.value.__cause__
    assert isinstance(error, ConfigError) and message in str(error)


def test_data_max_length_beyond_what_the_windows_cover_is_refused(compose_train_cfg, make_ag_news_dir):
    from agnews.pipeline import train

    cfg = compose_train_cfg([
        *TINY, *small_data_overrides(make_ag_news_dir(5, 2)), "model.long_input=sliding_window",
        "model.long_input_options.window=16", "model.long_input_options.stride=4", "model.long_input_options.max_windows=2",
        "data.max_length=40",  # two windows cover 16 + 10 = 26 tokens
    ])
    with pytest.raises(ConfigError, match="data.max_length=40 exceeds what tiny:bert accepts \\(26 tokens\\)"):
        train(cfg)


# ---- training from the CLI, then the Predictor on the run ----------------------------------------------------------
def test_cli_trains_a_tiny_windowed_model_and_the_predictor_reads_it_back(tmp_path, make_ag_news_dir):
    from agnews.data.run_splits import load_run_split
    from agnews.inference import Predictor
    from agnews.runs import load_run

    data = make_ag_news_dir(train_per_class=20, test_per_class=5)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "AGNEWS_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "agnews.train", *TINY, *small_data_overrides(data), "trainer.max_epochs=1",
        "model.long_input=sliding_window", "model.long_input_options.window=16", "model.long_input_options.stride=4",
        "data.max_length=64", f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run_dir / "model" / "agnews_model.json").read_text())
    assert info["max_length"] == 64
    assert info["long_input"]["mode"] == "sliding_window" and info["long_input"]["window"] == 16
    predictor = Predictor.from_path(run_dir)
    assert isinstance(predictor.model.backend.model, LongInputClassifier)
    # what training scored with the windowed model, the exported model gives back through the Predictor
    run = load_run(run_dir)
    test = load_run_split(run, "test")
    assert max(len(ids) for ids in predictor.model.encoder.token_ids(test.texts)) > 16  # texts span several windows
    np.testing.assert_allclose(predictor.predict_proba(test.texts), run.predictions("test").probs, atol=1e-5, rtol=0)


# ---- the decisive sentence past the first window (real pretrained MiniLM) ------------------------------------------
FILLER = (
    "The committee met on Tuesday afternoon in the usual room and talked for a while about the schedule for next "
    "month, the colour of the new chairs and who would bring coffee to the following meeting. "
)
DECISIVE = {
    "Sports": "The striker scored twice in the second half as United beat Chelsea to win the league title.",
    "Business": "Shares of the oil company fell sharply after it reported lower quarterly profit and cut its earnings forecast.",
    "Sci/Tech": "Microsoft released a software patch for a Windows security flaw that hackers used to attack computers.",
}
WINDOW = ["model.long_input_options.window=64", "model.long_input_options.stride=16", "model.long_input_options.max_windows=6"]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, real_minilm_run, shared_data_dir):
    """Training with windows on (sliding_window, mean of window logits), started from the real MiniLM run (what it
    learnt about the classes) for two steps at a negligible learning rate, on a few real rows; data.max_length=256."""
    root = tmp_path_factory.mktemp("long_input")
    data = real_rows_dir(root / "data", shared_data_dir, train_rows=48, test_rows=8)
    return train_run(root / "run", [
        "model=minilm_local", f"model.pretrained={real_minilm_run}", "model.long_input=sliding_window", *WINDOW,
        "trainer=cpu", "trainer.max_steps=2", "trainer.num_sanity_val_steps=0", "logger=csv",
        "callbacks.progress_bar=null", "strategy.optimizer.lr=1e-7", f"data.data_dir={data}", "data.source=csv",
        "data.val_size=8", "data.max_length=256", "data.batch_size=16",
    ])


def texts_with_decisive_sentence() -> list[str]:
    return [FILLER * 2 + sentence for sentence in DECISIVE.values()]  # ~97 tokens: the sentence starts past 64


def test_a_decisive_sentence_past_the_first_window_changes_the_prediction_only_with_windows_on(long_run):
    from agnews.inference import Predictor
    from agnews.inference.backends.torch_backend import TorchBackend
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel

    texts = texts_with_decisive_sentence()
    windowed = Predictor.from_path(long_run)  # the run's model/: the wrapper, max_length 256
    assert windowed.max_length == 256
    assert windowed.predict(texts) == list(DECISIVE)
    assert windowed.predict(list(DECISIVE.values())) == list(DECISIVE)  # the sentences alone, for reference

    # The same weights, windows off: truncated to the first 64 tokens, the text is all filler
    wrapper = windowed.model.backend.model
    encoder = TextEncoder(windowed.model.encoder.tokenizer, 64)
    truncated = TransformerModel(encoder, TorchBackend(wrapper.model), len(LABELS)).predict_proba(texts)
    filler_class = TransformerModel(encoder, TorchBackend(wrapper.model), len(LABELS)).predict_proba([FILLER * 3]).argmax()
    assert LABELS[int(filler_class)] not in DECISIVE
    assert (truncated.argmax(1) == filler_class).all()


@pytest.mark.parametrize(("mode", "pooling"), [("sliding_window", "max"), ("head_tail", "mean")])
def test_other_pooling_modes_also_follow_the_decisive_sentence(long_run, mode, pooling):
    from agnews.inference.backends.torch_backend import TorchBackend
    from agnews.inference.encoding import TextEncoder
    from agnews.inference.transformer import TransformerModel
    from agnews.models.exported import load_classifier
    from agnews.models.long_input import resolve_settings

    loaded = load_classifier(long_run / "model")
    encoder_model = loaded.model.model
    config = resolve_settings(
        mode, {"window": 64, "stride": 16, "max_windows": 6, "pooling": pooling}, encoder_model, loaded.tokenizer,
        False, False,
    )
    model = TransformerModel(
        TextEncoder(loaded.tokenizer, 256), TorchBackend(LongInputClassifier(encoder_model, config)), len(LABELS)
    )
    assert [LABELS[i] for i in model.predict_proba(texts_with_decisive_sentence()).argmax(1)] == list(DECISIVE)


def test_export_of_the_windowed_run_matches_the_torch_predictor_on_long_texts(long_run, tmp_path):
    from agnews.export.pipeline import export_run
    from agnews.inference import Predictor

    texts = texts_with_decisive_sentence() + [FILLER * 5, *DECISIVE.values()]
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n")
    export = export_run(long_run, output_dir=tmp_path / "export", parity={"texts_file": str(texts_file), "num_texts": 64})
    record = json.loads((export / "export.json").read_text())
    assert record["export"]["long_input"] == "sliding_window"
    assert record["parity"]["fp32"]["max_abs_diff"] < 1e-4 and record["parity"]["optimized"]["max_abs_diff"] < 1e-4
    reference = Predictor.from_path(long_run).predict_proba(texts)
    onnx = Predictor.from_path(export, backend="onnx").predict_proba(texts)
    np.testing.assert_allclose(onnx, reference, atol=1e-4)
    assert [LABELS[i] for i in onnx[:3].argmax(1)] == list(DECISIVE)
