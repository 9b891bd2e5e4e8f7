"""The Predictor (agnews.inference): it reproduces what training stored, loads what a run leaves, refuses bad input
clearly, truncates long texts as training did, and returns rows in input order whatever the batching."""

from __future__ import annotations

import random

import numpy as np
import pytest

from agnews.data.run_splits import load_run_split
from agnews.inference import InvalidInputError, Predictor, resolve_model_path
from agnews.runs import CONFIG_FILE, MANIFEST_FILE, MODEL_DIR, MODEL_INFO_FILE, RunFormatError, load_run, write_json
from tests.conftest import LABELS

FAMILIES = ["minilm", "deberta", "roberta", "xlnet", "electra", "longformer"]
# Stored probabilities have 6 decimals; batch composition changes fp32 sums in the last bits.
FP32_ATOL = 1e-4
# bf16 autocast keeps 8 bits of mantissa: probabilities move by a few 1e-3 when rows are batched differently
# (measured: 2.7e-3 at most on the real MiniLM run's 400 test rows).
BF16_ATOL = 1e-2


@pytest.fixture(scope="module")
def tiny_minilm(tiny_run_factory):
    return load_run(tiny_run_factory("minilm"))


@pytest.fixture(scope="module")
def minilm_predictor(tiny_minilm):
    return Predictor.from_path(tiny_minilm.path, batch_size=4)


# ---- parity with what training stored ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_predictor_reproduces_the_stored_test_predictions_of_every_architecture(tiny_run_factory, family):
    run = load_run(tiny_run_factory(family))
    assert run.precision == "fp32"
    test = load_run_split(run, "test")  # the texts, rebuilt from the run's own config
    stored = run.predictions("test")
    assert stored.ids == test.ids and stored.labels.tolist() == test.labels
    predictor = Predictor.from_path(run.path, precision=run.precision)
    assert predictor.label_names == LABELS and predictor.describe()["backend"] == "torch"
    probs = predictor.predict_proba(test.texts)
    assert probs.shape == (len(test), 4) and probs.dtype == np.float64
    np.testing.assert_allclose(probs, stored.probs, atol=FP32_ATOL, rtol=0)
    assert (probs.argmax(axis=1) == stored.preds).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    # logits and log-probabilities are the same model's: softmax(logits) = probs, log-softmax exact
    logits = predictor.predict_logits(test.texts[:5])
    assert logits.dtype == np.float32 and logits.shape == (5, 4)
    np.testing.assert_allclose(predictor.predict_log_proba(test.texts[:5]), np.log(probs[:5]), atol=1e-5)


def test_predictor_reproduces_the_real_minilm_run_under_its_bf16_precision(real_minilm_run):
    run = load_run(real_minilm_run)
    assert run.precision == "bf16"  # trainer=cpu scores the test split under bf16 autocast
    test = load_run_split(run, "test")
    stored = run.predictions("test")
    assert stored.ids == test.ids and len(test) == 400
    predictor = Predictor.from_path(run.path, precision=run.precision)
    probs = predictor.predict_proba(test.texts)
    difference = np.abs(probs - stored.probs)
    agreement = float((probs.argmax(axis=1) == stored.preds).mean())
    print(f"real MiniLM bf16 parity: max |p - stored| = {difference.max():.5f}, mean {difference.mean():.6f}, "
          f"argmax agreement {agreement:.4f} on {len(test)} rows")
    assert difference.max() <= BF16_ATOL, f"max |p - stored| = {difference.max():.4f}"
    assert agreement >= 0.99, f"argmax agrees on {agreement:.2%} of rows"
    # a real model really classifies: the stored accuracy is well above chance and recomputed identically
    assert stored.accuracy > 0.6
    assert float((probs.argmax(axis=1) == stored.labels).mean()) == pytest.approx(stored.accuracy, abs=0.01)


# ---- loading ----------------------------------------------------------------------------------------------------------
def test_from_path_loads_a_run_or_its_model_folder_alike(tiny_minilm):
    texts = load_run_split(tiny_minilm, "test").texts[:6]
    from_run = Predictor.from_path(tiny_minilm.path)
    from_model = Predictor.from_path(tiny_minilm.path / MODEL_DIR)
    assert from_run.source == from_model.source == str(tiny_minilm.model_dir)
    assert from_run.max_length == 32 and from_run.load_seconds is not None
    np.testing.assert_array_equal(from_run.predict_proba(texts), from_model.predict_proba(texts))
    assert resolve_model_path(tiny_minilm.path) == ("model", tiny_minilm.model_dir)
    described = from_run.describe()
    assert described["label_names"] == LABELS and described["precision"] == "fp32" and described["device"] == "cpu"


def test_from_path_names_what_a_path_lacks(tmp_path, tiny_minilm):
    with pytest.raises(RunFormatError, match="no such run, model, export or bundle directory"):
        Predictor.from_path(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RunFormatError, match="a file; give the folder that holds it"):
        Predictor.from_path(tmp_path / "notes.txt")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")  # a save_pretrained folder without the agnews facts
    with pytest.raises(RunFormatError, match=f"not a run \\({MANIFEST_FILE}\\), a model folder \\({MODEL_INFO_FILE}\\)"):
        Predictor.from_path(bare)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / CONFIG_FILE).write_text("seed: 1\n")
    with pytest.raises(RunFormatError, match="the run did not finish"):
        Predictor.from_path(unfinished)
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    write_json(no_model / MANIFEST_FILE, {"task": "train"})
    with pytest.raises(RunFormatError, match="the run exported no model"):
        Predictor.from_path(no_model)
    with pytest.raises(RunFormatError, match="backend=onnx needs an ONNX export; run `python -m agnews.export"):
        Predictor.from_path(tiny_minilm.path, backend="onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor.from_path(tiny_minilm.path, backend="tensorflow")
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor.from_path(tiny_minilm.path, precision="fp8")


# ---- input rules ------------------------------------------------------------------------------------------------------
def test_an_empty_list_gives_an_empty_result(minilm_predictor):
    assert minilm_predictor.predict_proba([]).shape == (0, 4)
    assert minilm_predictor.predict_logits([]).shape == (0, 4)
    assert minilm_predictor.predict([]) == [] and minilm_predictor.classify([]) == []
    # a tuple, or a column of strings from numpy, is as good as a list
    as_list = minilm_predictor.predict_proba(["Stocks rally", "Late goal"])
    np.testing.assert_array_equal(minilm_predictor.predict_proba(("Stocks rally", "Late goal")), as_list)
    np.testing.assert_array_equal(minilm_predictor.predict_proba(np.array(["Stocks rally", "Late goal"])), as_list)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ("Stocks rally", r"not a single string: wrap it as \[text\]"),
        (b"Stocks rally", "not a single string"),
        ({"text": "Stocks rally"}, "texts must be a list of strings, got dict"),
        ((t for t in ["Stocks rally"]), "texts must be a list of strings, got generator"),
        (["Stocks rally", ""], r"texts\[1\] is empty or only whitespace"),
        (["Stocks rally", "ok", " \n\t "], r"texts\[2\] is empty or only whitespace"),
        (["Stocks rally", 5], r"texts\[1\] is int, expected a string"),
        ([None], r"texts\[0\] is NoneType, expected a string"),
        (["ok", b"Stocks rally"], r"texts\[1\] is bytes, expected a string \(decode bytes to str first\)"),
        (["ok", "caf\ud800e"], r"texts\[1\] is not valid Unicode text \(surrogates not allowed at 3\)"),
    ],
)
def test_bad_input_is_refused_with_the_offending_index(minilm_predictor, texts, message):
    with pytest.raises(InvalidInputError, match=message):
        minilm_predictor.predict_proba(texts)
    assert issubclass(InvalidInputError, ValueError)


def test_request_limits_are_enforced_when_set(tiny_minilm):
    limited = Predictor.from_path(tiny_minilm.path, max_texts=2, max_chars=20)
    with pytest.raises(InvalidInputError, match="3 texts in one request; at most 2 are accepted"):
        limited.predict_proba(["a", "b", "c"])
    with pytest.raises(InvalidInputError, match=r"texts\[1\] has 21 characters; at most 20 are accepted"):
        limited.predict_proba(["fine", "x" * 21])
    assert limited.predict_proba(["x" * 20]).shape == (1, 4)


ODD_TEXTS = [
    "\x00 null byte",
    "emoji 🚀📈 only",
    "combining e\u0301 and zero\u200bwidth",
    "\u200b",  # not whitespace to Python: a real (if strange) text, scored as such
    "RTL שלום مرحبا",
    "[CLS] [SEP] [PAD] <s> </s> <pad> <mask> <unk>",
    "x" * 10_000,  # one enormous "word"
    "\ufeffbyte order mark",
]


@pytest.mark.parametrize("family", FAMILIES)
def test_odd_but_valid_texts_never_crash_the_tokenizer(tiny_run_factory, family):
    predictor = Predictor.from_path(tiny_run_factory(family))
    probs = predictor.predict_proba(ODD_TEXTS)
    assert probs.shape == (len(ODD_TEXTS), 4) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("family", ["minilm", "xlnet"])
def test_a_long_text_is_scored_on_its_first_max_length_tokens(tiny_run_factory, family):
    predictor = Predictor.from_path(tiny_run_factory(family))
    words = [random.Random(0).choice(["market", "goal", "election", "software", "shares", "league"]) for _ in range(10_000)]
    long_text, prefix = " ".join(words), " ".join(words[:200])
    encoder = predictor.model.encoder
    long_ids, prefix_ids = encoder.token_ids([long_text, prefix])
    assert len(long_ids) == predictor.max_length == 32 and long_ids == prefix_ids  # truncated, as training truncated
    probs = predictor.predict_proba([long_text, prefix])
    np.testing.assert_array_equal(probs[0], probs[1])


# ---- batching -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["minilm", "xlnet", "longformer"])
def test_length_sorted_batches_return_rows_in_input_order(tiny_run_factory, family):
    run = load_run(tiny_run_factory(family))
    texts = load_run_split(run, "test").texts[:20]
    texts = [text if i % 3 else f"{text} {text} {text}" for i, text in enumerate(texts)]  # lengths that vary
    predictor = Predictor.from_path(run.path, batch_size=3)
    probs = predictor.predict_proba(texts)
    order = list(range(len(texts)))
    random.Random(1).shuffle(order)
    shuffled = predictor.predict_proba([texts[i] for i in order])
    np.testing.assert_allclose(shuffled, probs[order], atol=1e-6, rtol=0)
    one_by_one = np.vstack([predictor.predict_proba([text]) for text in texts[:6]])
    np.testing.assert_allclose(one_by_one, probs[:6], atol=1e-6, rtol=0)  # padding never changes a row
    assert predictor.predict(texts[:3]) == [LABELS[i] for i in probs[:3].argmax(axis=1)]
    answer = predictor.classify(texts[:1])[0]
    assert answer["label"] == LABELS[int(probs[0].argmax())]
    assert answer["probabilities"] == pytest.approx(dict(zip(LABELS, probs[0])))
