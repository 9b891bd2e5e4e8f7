"""The serving bundle's format (agnews.runs.bundle): manifest, checksums, and every refusal a loader must make —
unknown schema versions, pickled files, tampered, missing, unlisted or escaping files — plus how members are chosen
for it (ONNX export, text-input ONNX, safetensors). Synthetic files only: fast, no model is run."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from agnews.ensemble.members import Member
from agnews.ensemble.write import member_source
from agnews.inference import Predictor
from agnews.runs import RunFormatError, load_run, sha256_file, write_json
from agnews.runs.bundle import BundleError, MemberSource, looks_pickled, read_bundle, write_bundle
from tests.conftest import LABELS


def _safetensors(path: Path, seed: int = 0) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": np.random.default_rng(seed).normal(size=(8, 4)).astype(np.float32)}, str(path))
    return path


def member_folder(root: Path, name: str, label_names=LABELS) -> Path:
    folder = root / name
    _safetensors(folder / "model.safetensors")
    write_json(folder / "agnews_model.json", {"label_names": list(label_names), "max_length": 32, "family": "minilm"})
    (folder / "tokenizer.json").write_text('{"version": "1.0"}\n')
    return folder


def make_bundle(tmp_path: Path, target: Path | None = None, label_names=LABELS, weights=(0.5, 0.5)) -> Path:
    sources = []
    for name in ("a", "b"):
        folder = member_folder(tmp_path / "src", name, label_names)
        files = {p.name: p for p in folder.iterdir()}
        sources.append(MemberSource(name, "transformers", files, {"max_length": 32, "source_run": str(folder)}))
    meta = tmp_path / "src" / "logreg.json"
    meta.write_text(json.dumps({"coef": [[0.0] * 8] * 4, "intercept": [0.0] * 4}))
    target = target or tmp_path / "run" / "bundle"
    combiner = {"method": "soft_vote", "params": {"members": ["a", "b"], "weights": list(weights)}}
    write_bundle(target, LABELS, sources, combiner, {"logreg.json": meta})
    return target


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path)


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# ---- writing and reading ---------------------------------------------------------------------------------------------
def test_manifest_lists_every_file_with_its_checksum(bundle):
    manifest = read_bundle(bundle)
    assert manifest["schema_version"] == 1 and manifest["label_names"] == LABELS
    listed = {f["path"]: f for m in manifest["members"] for f in m["files"]} | {
        f["path"]: f for f in manifest["combiner"]["files"]}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    assert "members/a/model.safetensors" in listed and "combiner/logreg.json" in listed
    for path, entry in listed.items():
        assert entry["sha256"] == sha256_file(bundle / path) and entry["bytes"] == (bundle / path).stat().st_size
    assert manifest["members"][0]["max_length"] == 32 and manifest["combiner"]["params"]["weights"] == [0.5, 0.5]
    assert not list(bundle.parent.glob(".bundle*"))  # no staging folder left


def test_rewriting_replaces_the_bundle_and_a_failed_rewrite_keeps_the_old_one(tmp_path, bundle):
    make_bundle(tmp_path, target=bundle, weights=(0.9, 0.1))
    assert read_bundle(bundle)["combiner"]["params"]["weights"] == [0.9, 0.1]
    pickled = tmp_path / "src" / "weights.pkl"
    pickled.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(BundleError, match="pickled file"):
        write_bundle(
            bundle, LABELS, [MemberSource("a", "transformers", {"weights.pkl": pickled})], {"method": "soft_vote"}
        )
    assert read_bundle(bundle)["combiner"]["params"]["weights"] == [0.9, 0.1]
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]  # no staging or backup folder left


def test_writing_refuses_unsafe_member_names_and_unknown_formats(tmp_path):
    folder = member_folder(tmp_path, "m")
    with pytest.raises(BundleError, match="unique and folder-safe"):
        write_bundle(
            tmp_path / "b", LABELS, [MemberSource("../up", "transformers", {"x": folder / "tokenizer.json"})], {}
        )
    with pytest.raises(BundleError, match="unknown format 'pickle'"):
        write_bundle(tmp_path / "b", LABELS, [MemberSource("m", "pickle", {"x": folder / "tokenizer.json"})], {})
    assert not (tmp_path / "b").exists()


# ---- refusals --------------------------------------------------------------------------------------------------------
def test_one_changed_byte_is_refused_by_the_loader_and_the_predictor(tmp_path, bundle):
    target = bundle / "members" / "a" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # same size, one bit of one weight
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"members/a/model.safetensors: SHA-256 differs"):
        read_bundle(bundle)
    with pytest.raises(BundleError, match="integrity check failed"):
        Predictor.from_path(bundle)
    write_json(bundle.parent / "run.json", {"task": "ensemble"})  # the run that holds it resolves to the bundle
    with pytest.raises(BundleError, match="SHA-256 differs"):
        Predictor.from_path(bundle.parent)


def test_resized_and_missing_files_are_refused(bundle):
    with (bundle / "members" / "b" / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    (bundle / "combiner" / "logreg.json").unlink()
    with pytest.raises(BundleError) as error:
        read_bundle(bundle)
    assert "members/b/tokenizer.json: 20 bytes, the manifest says 19" in str(error.value)
    assert "combiner/logreg.json: listed in the manifest but missing" in str(error.value)


@pytest.mark.parametrize(
    "name", ["model.pkl", "weights.pickle", "meta.joblib", "model.pt", "pytorch_model.bin", "last.ckpt"]
)
def test_an_added_pickle_file_is_refused(bundle, name):
    (bundle / "members" / "a" / name).write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(BundleError, match=rf"members/a/{name}: a pickled file"):
        read_bundle(bundle)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickle_under_an_innocent_name_is_refused_by_its_header(bundle, protocol):
    # replacing a listed file keeps the listing; the pickle header alone is the reason given
    (bundle / "combiner" / "logreg.json").write_bytes(pickle.dumps({"coef": [1.0]}, protocol=protocol))
    with pytest.raises(BundleError, match="combiner/logreg.json: a pickled file"):
        read_bundle(bundle)


def test_unlisted_files_and_headerless_pickles_are_refused(bundle):
    (bundle / "members" / "b" / "notes.txt").write_text("hello\n")
    (bundle / "members" / "b" / "old.dat").write_bytes(pickle.dumps([1, 2], protocol=0))  # no header in protocol 0
    with pytest.raises(BundleError) as error:
        read_bundle(bundle)
    assert "members/b/notes.txt: not listed in the manifest" in str(error.value)
    assert "members/b/old.dat: not listed in the manifest" in str(error.value)


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_unknown_schema_versions_are_refused(bundle, version):
    manifest = _manifest(bundle)
    manifest["schema_version"] = version
    write_json(bundle / "manifest.json", manifest)
    with pytest.raises(BundleError, match=rf"schema_version {version!r} is not supported"):
        read_bundle(bundle)


@pytest.mark.parametrize("path", ["../outside.json", "/etc/hostname", "members/../../x"])
def test_listed_paths_outside_the_bundle_are_refused(bundle, path):
    manifest = _manifest(bundle)
    manifest["combiner"]["files"].append({"path": path, "sha256": "0" * 64, "bytes": 1})
    write_json(bundle / "manifest.json", manifest)
    with pytest.raises(BundleError, match="is not a file inside the bundle"):
        read_bundle(bundle)


def test_symlinks_are_refused(tmp_path, bundle):
    (tmp_path / "elsewhere.json").write_text("{}")
    (bundle / "members" / "a" / "link.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BundleError, match="members/a/link.json: a symlink"):
        read_bundle(bundle)


def test_not_a_bundle_and_a_corrupt_manifest(tmp_path, bundle):
    with pytest.raises(BundleError, match="not a bundle"):
        read_bundle(tmp_path)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: unreadable"):
        read_bundle(bundle)


def test_members_must_predict_the_bundles_labels_and_match_the_combiner(tmp_path):
    from agnews.inference.ensemble import load_bundle_model

    wrong = make_bundle(tmp_path, label_names=["a", "b", "c", "d"])
    with pytest.raises(BundleError, match=r"member a predicts \['a', 'b', 'c', 'd'\], the ensemble \['World'"):
        load_bundle_model(wrong)
    manifest = _manifest(wrong)
    manifest["combiner"]["params"]["members"] = ["b", "a"]
    write_json(wrong / "manifest.json", manifest)
    with pytest.raises(BundleError, match=r"fitted on members \['b', 'a'\], the bundle holds \['a', 'b'\]"):
        load_bundle_model(wrong)


def test_a_malformed_combiner_is_refused(tmp_path, bundle):
    from agnews.inference.ensemble import Combination, load_bundle_model

    for method, params, message in [
        ("average", {}, "unknown combiner 'average'"),
        ("weighted", {"members": ["a", "b"], "weights": [1.0]}, "one weight per member"),
        ("stacking_xgboost", {"members": ["a", "b"]}, "must name its meta_file and classes"),
    ]:
        manifest = _manifest(bundle)
        manifest["combiner"].update(method=method, params=params)
        write_json(bundle / "manifest.json", manifest)
        with pytest.raises(BundleError, match=f"combiner cannot be rebuilt: .*{message}"):
            load_bundle_model(bundle)
    with pytest.raises(BundleError, match="meta-learner file is missing"):
        Combination.from_files("stacking_logreg", {"meta_file": "gone.json", "classes": [0, 1]}, tmp_path)


def test_pickle_detection_has_no_false_positives_on_the_formats_a_bundle_holds(tmp_path):
    assert not looks_pickled(_safetensors(tmp_path / "w.safetensors"))
    # a safetensors header of 640 bytes starts with 0x80 0x02, like a protocol-2 pickle; its JSON header clears it
    tricky = tmp_path / "tricky.safetensors"
    header = b'{"__metadata__":{}}'.ljust(0x0280, b" ")
    tricky.write_bytes((0x0280).to_bytes(8, "little") + header)
    assert tricky.read_bytes()[:2] == b"\x80\x02" and not looks_pickled(tricky)
    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "m.cbm").write_bytes(b"CBM1" + bytes(20))
    (tmp_path / "m.ubj").write_bytes(b"{L\x00\x00")
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")
    (tmp_path / "empty").write_bytes(b"")
    for name in ("m.json", "m.cbm", "m.ubj", "m.onnx", "empty"):
        assert not looks_pickled(tmp_path / name), name
    for protocol in (2, 3, 4, 5):
        (tmp_path / "p").write_bytes(pickle.dumps({"a": np.zeros(3).tolist()}, protocol=protocol))
        assert looks_pickled(tmp_path / "p"), protocol


# ---- which form each member takes ------------------------------------------------------------------------------------
def fake_member_run(root: Path, name: str, export: bool = False, text: bool = False) -> Member:
    run = root / name
    write_json(run / "run.json", {"task": "baseline" if text else "train"})
    (run / "config.yaml").write_text("seed: 1\n")
    model = run / "model"
    if text:
        write_json(model / "agnews_model.json", {"label_names": LABELS, "input": "text", "onnx_file": "model.onnx"})
        (model / "model.onnx").write_bytes(b"\x08\x07fake-onnx")
    else:
        member_folder(run, "model")
        write_json(model / "config.json", {"model_type": "bert"})
        write_json(model / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer"})
    if export:
        folder = run / "export"
        for file in ("model.onnx", "model.int8.onnx", "model.int8.onnx.data"):
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            (folder / file).write_bytes(b"\x08\x07" + file.encode())
        (folder / "tokenizer.json").write_text("{}")
        (folder / "trt_cache").mkdir()
        (folder / "trt_cache" / "engine.plan").write_bytes(b"gpu-specific")
        variants = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
        write_json(folder / "export.json", {"files": variants, "default": "fp32", "parity": {"fp32": 1e-6}})
    return Member(name, load_run(run))


def test_a_member_with_an_export_goes_in_as_its_default_onnx_variant(tmp_path):
    member = fake_member_run(tmp_path, "exported", export=True)
    source = member_source(member, LABELS, tmp_path / "work")
    assert source.format == "onnx" and source.facts["variant"] == "fp32" and "ONNX export" in source.facts["reason"]
    assert sorted(source.files) == ["agnews_model.json", "export.json", "model.onnx", "tokenizer.json"]
    trimmed = json.loads(source.files["export.json"].read_text())
    assert trimmed["files"] == {"fp32": "model.onnx"} and trimmed["default"] == "fp32" and trimmed["parity"]
    assert source.files["agnews_model.json"] == member.run.model_dir / "agnews_model.json"  # taken from model/

    int8 = member_source(member, LABELS, tmp_path / "work2", variant="int8")
    assert sorted(int8.files) == ["agnews_model.json", "export.json", "model.int8.onnx", "model.int8.onnx.data",
                                  "tokenizer.json"]
    with pytest.raises(RunFormatError, match=r"no ONNX variant 'fp16' for member exported; it has \['fp32', 'int8'\]"):
        member_source(member, LABELS, tmp_path / "work3", variant="fp16")
    # asked for safetensors, it gets the model/ folder instead
    weights = member_source(member, LABELS, tmp_path / "work4", prefer="transformers")
    assert weights.format == "transformers" and "model.safetensors" in weights.files
    assert weights.facts["tokenizer"]["class"] == "BertTokenizer"


def test_a_text_input_model_goes_in_as_text_onnx_and_plain_runs_as_safetensors(tmp_path):
    text = member_source(fake_member_run(tmp_path, "tfidf", text=True), LABELS, tmp_path / "w")
    assert text.format == "text-onnx" and sorted(text.files) == ["agnews_model.json", "model.onnx"]
    assert text.facts["tokenizer"]["class"] == "in-graph"
    plain = member_source(fake_member_run(tmp_path, "plain"), LABELS, tmp_path / "w")
    assert plain.format == "transformers" and plain.facts["label_map"]["Sci/Tech"] == 3
    with pytest.raises(RunFormatError, match="plain2 .* has no model to bundle in the requested format"):
        member_source(fake_member_run(tmp_path, "plain2"), LABELS, tmp_path / "w", prefer="onnx")
    with pytest.raises(BundleError, match="its model predicts"):
        member_source(fake_member_run(tmp_path, "plain3"), ["x", "y", "z", "w"], tmp_path / "w")


def test_a_pickled_file_in_a_members_model_folder_fails_the_bundle(tmp_path):
    member = fake_member_run(tmp_path, "legacy")
    (member.run.model_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(BundleError, match=r"pickled files \['pytorch_model.bin'\]"):
        member_source(member, LABELS, tmp_path / "w")


def test_an_ensemble_of_exported_members_writes_onnx_members_into_its_bundle(tmp_path):
    from tests.test_ensemble import fake_run, run_ensemble

    members = []
    for i, (name, kwargs) in enumerate([("exp", {"export": True}), ("tfidf", {"text": True})]):
        fake_member_run(tmp_path / "members", name, **kwargs)
        fake_run(tmp_path / "members", name, 2.0, i)  # predictions (keeps run.json and model/)
        members.append(tmp_path / "members" / name)
    out = run_ensemble(tmp_path / "ens", members, "soft_vote")
    manifest = read_bundle(out / "bundle")
    assert [m["format"] for m in manifest["members"]] == ["onnx", "text-onnx"]
    assert (out / "bundle" / "members" / "exp" / "model.onnx").is_file()
    assert not (out / "bundle" / "members" / "exp" / "model.int8.onnx").exists()
    shutil.rmtree(tmp_path / "members")  # self-contained: the members' runs are no longer needed to read it
    assert read_bundle(out / "bundle")["members"][1]["source_run"].endswith("tfidf")
