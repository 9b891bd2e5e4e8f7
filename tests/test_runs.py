"""The run-directory format (agnews.runs): load_run and its errors, predictions files, joins by id, rebuilt splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from agnews.errors import DataError
from agnews.runs import (
    CONFIG_FILE,
    ERROR_FILE,
    HYDRA_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_INFO_FILE,
    Predictions,
    RunFormatError,
    align_predictions,
    load_run,
    predictions_path,
    read_predictions,
    write_json,
    write_predictions,
)
from tests.conftest import LABELS, REPO_ROOT


def _finished_run(root: Path, *, model: bool = True, precision: str = "bf16-mixed", data: dict | None = None) -> Path:
    """A run directory as training leaves it (no weights: the format only)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": 42,
        "trainer": {"precision": precision},
        "data": data or {"source": "csv", "data_dir": "/nowhere", "label_names": LABELS, "val_size": 8, "seed": 42},
    }
    (root / CONFIG_FILE).write_text(yaml.safe_dump(config))
    write_json(root / METRICS_FILE, {"test": {"accuracy": 0.5}})
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    write_predictions(predictions_path(root, "test"), ["test-000000", "test-000001", "test-000002"], [0, 1, 3], probs,
                      LABELS)
    if model:
        write_json(root / MODEL_DIR / MODEL_INFO_FILE, {"label_names": LABELS, "max_length": 32})
    write_json(root / MANIFEST_FILE, {"task": "train", "global_step": 3})
    return root


# ---- load_run ------------------------------------------------------------------------------------------------------------
def test_a_finished_run_reads_as_plain_data(tmp_path):
    run = load_run(_finished_run(tmp_path / "run"))
    assert run.manifest["global_step"] == 3 and run.task == "train"
    assert run.metrics["test"]["accuracy"] == 0.5
    assert run.config["data"]["label_names"] == LABELS and isinstance(run.config, dict)
    assert run.precision == "bf16" and run.splits == ["test"]
    assert run.label_names == LABELS and run.has_model and run.require_model() == tmp_path / "run" / MODEL_DIR
    assert run.model_info["max_length"] == 32
    stored = run.predictions("test")
    assert stored.ids == ["test-000000", "test-000001", "test-000002"] and stored.labels.tolist() == [0, 1, 3]
    assert stored.preds.tolist() == [0, 1, 0] and stored.accuracy == pytest.approx(2 / 3)
    assert not run.has_bundle and not run.has_export
    assert load_run(run) is run and Path(run) == tmp_path / "run"  # a RunDir passes through, and is os.PathLike
    assert load_run(_finished_run(tmp_path / "fp32", precision="32-true")).precision == "fp32"


def test_load_run_says_what_a_path_is_instead(tmp_path):
    with pytest.raises(RunFormatError, match="no such run directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunFormatError, match="not a directory"):
        load_run(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFormatError, match=rf"not a run directory \(no {MANIFEST_FILE} or {CONFIG_FILE}\)"):
        load_run(tmp_path / "empty")
    assert issubclass(RunFormatError, FileNotFoundError)  # callers catching FileNotFoundError keep working


@pytest.mark.parametrize("started_with", [CONFIG_FILE, HYDRA_DIR])
def test_a_run_that_did_not_finish_is_named_as_such(tmp_path, started_with):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if started_with == HYDRA_DIR:
        (run_dir / HYDRA_DIR).mkdir()
    else:
        (run_dir / CONFIG_FILE).write_text("seed: 1\n")
    with pytest.raises(RunFormatError, match=f"did not finish \\(no {MANIFEST_FILE};") as caught:
        load_run(run_dir)
    assert ERROR_FILE not in str(caught.value)  # no error file: no reason invented
    # A failed multirun job: the last line of its traceback (the exception) is in the message.
    (run_dir / ERROR_FILE).write_text(
        "ValueError: boom\n\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: data.val_size too big\n\n"
    )
    with pytest.raises(RunFormatError, match="error.txt says: ValueError: data.val_size too big"):
        load_run(run_dir)
    (run_dir / ERROR_FILE).write_text("")  # an empty error file must not crash the message
    with pytest.raises(RunFormatError, match="did not finish"):
        load_run(run_dir)


def test_a_corrupt_manifest_fails_at_load_time(tmp_path):
    run_dir = _finished_run(tmp_path / "run")
    (run_dir / MANIFEST_FILE).write_text('{"task": "tr')
    with pytest.raises(RunFormatError, match=rf"{MANIFEST_FILE}: unreadable"):
        load_run(run_dir)
    (run_dir / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(RunFormatError, match="expected a JSON object, got list"):
        load_run(run_dir)


def test_require_model_explains_a_missing_or_incomplete_export(tmp_path):
    run = load_run(_finished_run(tmp_path / "run", model=False))
    assert not run.has_model
    with pytest.raises(RunFormatError, match="the run exported no model .*scoring.export_model=true"):
        run.require_model()
    assert run.label_names == LABELS  # no model info: the config names them
    (run.path / MODEL_DIR).mkdir()
    (run.path / MODEL_DIR / "model.safetensors").write_bytes(b"")
    with pytest.raises(RunFormatError, match=f"incomplete model export \\(no {MODEL_INFO_FILE}\\)"):
        run.require_model()


def test_missing_parts_of_a_run_are_named(tmp_path):
    run = load_run(_finished_run(tmp_path / "run"))
    with pytest.raises(RunFormatError, match=r"no stored predictions for split 'val' \(stored: test\)"):
        run.predictions("val")
    (run.path / METRICS_FILE).unlink()
    with pytest.raises(RunFormatError, match=f"the run has no {METRICS_FILE}"):
        run.metrics  # noqa: B018
    (run.path / CONFIG_FILE).write_text("data: [unclosed\n")
    with pytest.raises(RunFormatError, match=f"{CONFIG_FILE}: unreadable"):
        run.config  # noqa: B018


# ---- predictions files ------------------------------------------------------------------------------------------------
def test_predictions_round_trip_and_are_written_atomically(tmp_path):
    path = predictions_path(tmp_path, "val")
    probs = np.array([[0.5, 0.2, 0.2, 0.1], [0.0, 0.0, 0.0, 1.0]])
    write_predictions(path, ["b", "a"], np.array([0, 3]), probs, LABELS)
    back = read_predictions(path)
    assert back.ids == ["b", "a"] and back.label_names == LABELS and back.labels.tolist() == [0, 3]
    np.testing.assert_allclose(back.probs, probs, atol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.csv"]  # no temp file left behind
    # Shapes that do not match are refused before anything is written: the old file stays whole.
    with pytest.raises(ValueError, match="differ in length"):
        write_predictions(path, ["only-one"], np.array([0, 1]), probs, LABELS)
    assert read_predictions(path).ids == ["b", "a"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["val.csv"]
    # An empty split is a valid (header-only) file.
    write_predictions(path, [], np.zeros(0), np.zeros((0, 4)), LABELS)
    empty = read_predictions(path)
    assert len(empty) == 0 and empty.probs.shape == (0, 4)


def test_write_json_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json(target, {"a": object()})  # not serialisable: fails before the disk is touched
    assert json.loads(target.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


HEADER = "id,label,pred,prob_World,prob_Sports,prob_Business,prob_Sci/Tech\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"not a predictions file \(header must be id,label,pred,prob_<class>...\), got None"),
        ("id,label,prob_World\n", "not a predictions file"),
        ("id,label,pred,World,Sports\n", "not a predictions file"),
        ("id,label,pred\n", "not a predictions file"),
        (HEADER + "a,0,0,0.5,0.5,0,0\nb,1,1,0.5,0.5\n", r":3: 5 fields, the header has 7"),
        (HEADER + "a,zero,0,0.5,0.5,0,0\n", r":2: label and pred must be integers, got 'zero', '0'"),
        (HEADER + "a,0,0,0.5,high,0,0\n", r":2: probability column 5 is 'high', not a number >= 0"),
        (HEADER + "a,0,0,nan,0.5,0,0\n", r":2: probability column 4 is 'nan'"),
        (HEADER + "a,0,0,-0.1,0.5,0,0\n", r":2: probability column 4 is '-0.1'"),
        (HEADER + "a,4,0,0.5,0.5,0,0\n", r":2: label 4 is outside 0..3"),
        (HEADER + "a,0,0,1,0,0,0\nb,1,1,0,1,0,0\na,0,0,1,0,0,0\nb,1,1,0,1,0,0\n",
         r"2 example ids occur more than once \('a' on lines \[2, 4\]; 'b' on lines \[3, 5\]\)"),
    ],
)
def test_malformed_predictions_files_are_refused_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "test.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        read_predictions(path)
    assert str(path) in str(caught.value)


def test_unreadable_predictions_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such predictions file"):
        read_predictions(tmp_path / "missing.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes(HEADER.encode() + "caf\xe9,0,0,1,0,0,0\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_predictions(path)


# ---- joins by id ------------------------------------------------------------------------------------------------------
def _member(ids, labels, names=LABELS, seed=0) -> Predictions:
    probs = np.random.default_rng(seed).dirichlet(np.ones(len(names)), size=len(ids))
    return Predictions(list(ids), np.asarray(labels), probs, list(names))


def test_align_predictions_orders_every_member_like_the_first():
    a = _member(["x", "y", "z"], [0, 1, 2])
    b = _member(["z", "x", "y"], [2, 0, 1], seed=1)
    first, second = align_predictions({"a": a, "b": b}, "test")
    assert first is a and second.ids == ["x", "y", "z"] and second.labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(second.probs, b.probs[[1, 2, 0]])
    with pytest.raises(DataError, match="no predictions to align"):
        align_predictions({}, "test")


def test_align_predictions_lists_every_mismatch_at_once():
    reference = _member(["x", "y", "z"], [0, 1, 2])
    members = {
        "ref": reference,
        "other_ids": _member(["x", "y", "w"], [0, 1, 2]),
        "other_names": _member(["x", "y", "z"], [0, 1, 2], names=["a", "b", "c", "d"]),
        "other_gold": _member(["z", "y", "x"], [2, 3, 3]),
        "fine": _member(["y", "x", "z"], [1, 0, 2]),
    }
    with pytest.raises(DataError) as caught:
        align_predictions(members, "val")
    message = str(caught.value)
    assert message.startswith("members cannot be combined on val:")
    assert "other_ids: scored different val examples than ref (1 ids only in ref, e.g. ['z']; 1 only in other_ids, e.g. ['w'])" in message
    assert "other_names: label names ['a', 'b', 'c', 'd'] != ref: ['World', 'Sports', 'Business', 'Sci/Tech']" in message
    assert "other_gold: gold labels differ from ref on 2 val examples (e.g. ['x', 'y'])" in message
    assert "fine" not in message


# ---- a run's split, rebuilt from its config ----------------------------------------------------------------------------
def test_a_runs_split_is_rebuilt_from_its_config(tmp_path, make_ag_news_dir):
    from agnews.data.run_splits import load_run_split
    from agnews.data.sources import load_csv_folder
    from agnews.data.splits import make_splits

    folder = make_ag_news_dir(train_per_class=10, test_per_class=3)
    data = {"source": "csv", "data_dir": str(folder), "label_names": LABELS, "val_size": 8, "train_size": 20, "seed": 7}
    run = load_run(_finished_run(tmp_path / "run", data=data))
    raw = load_csv_folder(folder, LABELS)
    expected = make_splits(raw["train"], raw["test"], 8, 20, 7)
    for split in ("train", "val", "test"):
        rebuilt = load_run_split(run, split)
        assert (rebuilt.ids, rebuilt.texts, rebuilt.labels) == (
            expected[split].ids, expected[split].texts, expected[split].labels
        )
    # data_dir overrides the config's folder (a run moved to another machine); a path works as well as a RunDir
    assert load_run_split(run.path, "test", data_dir=str(folder)).ids == expected["test"].ids
    with pytest.raises(ValueError, match="split must be one of"):
        load_run_split(run, "dev")
    broken = load_run(_finished_run(tmp_path / "broken", data={"label_names": LABELS}))
    with pytest.raises(RunFormatError, match="no data section"):
        load_run_split(broken, "test")


# ---- the format has one home ------------------------------------------------------------------------------------------
# The names the issue lists: a run's manifest, metrics, resolved config, model facts, predictions and model folder.
FORMAT_LITERALS = re.compile(
    r"""["'](run\.json|metrics\.json|agnews_model\.json|config\.yaml)["']|/\s*["'](model|predictions)["']"""
)


def test_no_module_outside_agnews_runs_spells_a_run_file_name():
    """Every reader and writer takes the names from agnews.runs: a path literal of the format anywhere else is a bug."""
    offenders = []
    for folder in ("agnews", "experiments"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path.is_relative_to(REPO_ROOT / "agnews" / "runs") or "runs" in path.relative_to(REPO_ROOT).parts[1:-1]:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if FORMAT_LITERALS.search(line):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "run-format names spelled outside agnews.runs:\n" + "\n".join(offenders)
