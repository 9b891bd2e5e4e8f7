"""``python -m agnews.serve`` serving an ensemble BUNDLE for real (free loopback ports): a stacking ensemble of two tiny
fp32 runs, one of them ONNX-exported by ``python -m agnews.export``, answers over HTTP, gRPC and GraphQL exactly what
``Predictor.from_path(<ensemble run>)`` computes offline, names itself consistently, lists its members' checksums as
the bundle's manifest does; a bundle with one changed byte is refused at start with one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from serving_support import REPO_ROOT, free_port, launched

from agnews.inference import Predictor
from agnews.runs import BUNDLE_DIR, BUNDLE_MANIFEST_FILE, sha256_file
from agnews.serving._proto import classifier_pb2 as pb
from agnews.serving._proto import classifier_pb2_grpc as pb_grpc
from tests.test_ensemble import run_ensemble, texts_by_id

FREE_TEXTS = ["Stocks rally as oil prices fall and investors cheer earnings", "Markets"]
GQL_CLASSIFY = "query($t: [String!]!) { classify(texts: $t) { label probabilities { label probability } model { id version } } }"
GQL_MODEL = "{ model { model { id version } kind members { name format files { path sha256 } } files { path sha256 } } }"


@pytest.fixture(scope="module")
def ensemble(tiny_run_factory, tmp_path_factory) -> Path:
    """An ensemble run (stacking_logreg: a combiner file in the bundle too) of an ONNX-exported tiny MiniLM and a tiny
    ELECTRA served from safetensors. The members are the ones tests/test_ensemble.py trains (same cache key), so a
    session running both trains them once."""
    learn = ("trainer.max_epochs=10", "strategy.optimizer.lr=2e-2")  # probabilities that differ between texts
    minilm, electra = tiny_run_factory("minilm", *learn), tiny_run_factory("electra", *learn)
    root = tmp_path_factory.mktemp("bundle_serving")
    exported = root / "minilm_onnx"
    shutil.copytree(minilm, exported, ignore=shutil.ignore_patterns("checkpoints"))  # the shared run stays export-free
    done = subprocess.run([sys.executable, "-m", "agnews.export", f"run={exported}", "optimize=false"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = run_ensemble(root / "ens_stack", [exported, electra], "stacking_logreg")
    manifest = json.loads((out / BUNDLE_DIR / BUNDLE_MANIFEST_FILE).read_text())
    assert [m["format"] for m in manifest["members"]] == ["onnx", "transformers"]
    return out


@pytest.fixture(scope="module")
def texts(ensemble) -> list[str]:
    """The synthetic test texts the members scored (varied probabilities) and two texts of no split."""
    first_member = json.loads((ensemble / BUNDLE_DIR / BUNDLE_MANIFEST_FILE).read_text())["members"][0]["source_run"]
    return list(texts_by_id(Path(first_member)).values())[:6] + FREE_TEXTS


@pytest.fixture(scope="module")
def served(ensemble, tmp_path_factory):
    with launched(ensemble, tmp_path_factory.mktemp("serve_bundle") / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.http, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(served):
    with served.channel() as channel:
        yield pb_grpc.ClassifierStub(channel)


def test_bundle_answers_match_the_offline_predictor_over_http_grpc_and_graphql(ensemble, texts, http, stub):
    offline = Predictor.from_path(ensemble)
    assert offline.info["kind"] == "ensemble"
    expected = offline.predict_proba(texts)
    labels = offline.label_names
    assert expected.std(axis=0).max() > 0.01  # the texts get visibly different probabilities: parity is not vacuous
    expected_labels = [labels[i] for i in expected.argmax(axis=1)]

    batch = http.post("/classify_batch", json={"texts": texts})
    assert batch.status_code == 200, batch.text
    singles = [http.post("/classify", json={"text": t}) for t in texts]
    assert all(r.status_code == 200 for r in singles), [r.text for r in singles]
    reply = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=texts), timeout=60)
    graph = http.post("/graphql", json={"query": GQL_CLASSIFY, "variables": {"t": texts}}).json()
    assert "errors" not in graph, graph

    answers = {
        "http batch": ([r["label"] for r in batch.json()],
                       [[r["probabilities"][n] for n in labels] for r in batch.json()]),
        "http single": ([r.json()["label"] for r in singles],
                        [[r.json()["probabilities"][n] for n in labels] for r in singles]),
        "grpc batch": ([p.label for p in reply.predictions],
                       [[c.probability for c in p.probabilities] for p in reply.predictions]),
        "graphql": ([r["label"] for r in graph["data"]["classify"]],
                    [[c["probability"] for c in r["probabilities"]] for r in graph["data"]["classify"]]),
    }
    assert [c.label for c in reply.predictions[0].probabilities] == labels
    assert [c["label"] for c in graph["data"]["classify"][0]["probabilities"]] == labels
    for name, (got_labels, got_probs) in answers.items():
        np.testing.assert_allclose(np.array(got_probs), expected, atol=1e-5, err_msg=name)
        assert got_labels == expected_labels, name


def test_model_identity_and_member_checksums_match_the_bundle_manifest(ensemble, texts, http, stub):
    manifest_path = ensemble / BUNDLE_DIR / BUNDLE_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    info = http.post("/model", json={}).json()
    ref = info["model"]
    assert info["kind"] == "bundle"
    assert ref == {"id": manifest.get("name") or ensemble.name, "version": sha256_file(manifest_path)[:16]}

    # every member, in the manifest's order, with the manifest's checksums, which are those of the files on disk
    wanted = [(m["name"], m["format"], {f["path"]: f["sha256"] for f in m["files"]}) for m in manifest["members"]]
    assert [(m["name"], m["format"], {f["path"]: f["sha256"] for f in m["files"]}) for m in info["members"]] == wanted
    for _, _, files in wanted:
        for path, digest in files.items():
            assert sha256_file(ensemble / BUNDLE_DIR / path) == digest
    combiner = {f["path"]: f["sha256"] for f in manifest["combiner"]["files"]}
    assert combiner and {f["path"]: f["sha256"] for f in info["files"]} == combiner

    # each answer, on each protocol, names the model /model describes
    assert http.post("/classify", json={"text": texts[0]}).json()["model"] == ref
    assert all(r["model"] == ref for r in http.post("/classify_batch", json={"texts": texts[:3]}).json())
    reply = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=texts[:3]), timeout=60)
    assert (reply.model.id, reply.model.version) == (ref["id"], ref["version"])  # gRPC names it once per reply
    graph = http.post("/graphql", json={"query": GQL_CLASSIFY, "variables": {"t": texts[:3]}}).json()
    assert all(r["model"] == ref for r in graph["data"]["classify"])

    grpc_info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=60)
    assert (grpc_info.model.id, grpc_info.model.version, grpc_info.kind) == (ref["id"], ref["version"], "bundle")
    assert [(m.name, m.format, {f.path: f.sha256 for f in m.files}) for m in grpc_info.members] == wanted
    model = http.post("/graphql", json={"query": GQL_MODEL}).json()["data"]["model"]
    assert model["model"] == ref and model["kind"] == "bundle"
    assert [(m["name"], m["format"], {f["path"]: f["sha256"] for f in m["files"]}) for m in model["members"]] == wanted
    assert {f["path"]: f["sha256"] for f in model["files"]} == combiner


def _processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes (other than this one) that contain any of ``needles``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_bundle_with_one_changed_byte_is_refused_at_start_with_one_line_naming_the_file(ensemble, tmp_path):
    bundle = shutil.copytree(ensemble / BUNDLE_DIR, tmp_path / "tampered_bundle")
    manifest = json.loads((bundle / BUNDLE_MANIFEST_FILE).read_text())
    onnx_member = next(m for m in manifest["members"] if m["format"] == "onnx")
    target = bundle / onnx_member["dir"] / onnx_member["onnx_file"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))

    port, grpc_port = free_port(), free_port()
    done = subprocess.run(
        [sys.executable, "-m", "agnews.serve", f"run={bundle}", f"port={port}", f"grpc_port={grpc_port}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 2, done.stderr[-4000:]
    # The refusal is the last thing printed (after both servers were stopped): the bundle, then the altered file.
    # (BundleError puts each problem on its own indented line, so one problem reads as a header plus one line.)
    assert done.stderr.count("agnews.serve:") == 1, done.stderr[-4000:]
    refusal = done.stderr[done.stderr.index("agnews.serve:"):].strip()
    relative = f"{onnx_member['dir']}/{onnx_member['onnx_file']}"
    assert refusal.startswith(f"agnews.serve: {bundle}") and len(refusal.splitlines()) <= 2, refusal
    assert f"{relative}: SHA-256 differs from the manifest" in refusal and "Traceback" not in refusal, refusal
    # nothing is left behind: no process of this server, both ports free again
    assert _processes_mentioning(f"--port {port}", f"run={bundle}") == []
    assert _port_free(port) and _port_free(grpc_port)
    # the intact bundle is untouched by the refusal and still loads
    assert Predictor.from_path(ensemble).predict_proba(FREE_TEXTS[:1]).shape == (1, 4)
