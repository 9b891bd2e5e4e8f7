"""The real servers (``python -m agnews.serve`` on free loopback ports, one per module) and real clients: httpx, the
generated gRPC stubs (plus health and reflection), GraphQL over HTTP. Same answers everywhere, and a clear 4xx-class
answer for every bad input on every protocol."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving_support import launched

from agnews.inference import Predictor
from agnews.serving._proto import classifier_pb2 as pb
from agnews.serving._proto import classifier_pb2_grpc as pb_grpc

ALICE = "alice-0123456789abcdef"  # unlimited
TRIAL = "trial-0123456789abcdef"  # 0.5 requests/s, burst 1
TEXTS = [
    "Stocks rally as oil prices fall and investors cheer earnings",
    "Striker scores twice as the league leaders win the match",
    "President meets parliament over the treaty on refugees",
    "New chip and wireless software unveiled by researchers",
    "Markets",
]
GQL_CLASSIFY = "query($t: [String!]!) { classify(texts: $t) { label probabilities { label probability } model { id version } } }"


@pytest.fixture(scope="module")
def run(tiny_run_factory, tmp_path_factory):
    """A copy of the tiny run with an ONNX export (``python -m agnews.export run=... quantize=int8``): served, by
    ``backend=auto``, on ONNX Runtime as a deployment would be. (The shutdown test serves a run's torch ``model/``.)"""
    source = tiny_run_factory("minilm")
    run = tmp_path_factory.mktemp("exported") / source.name
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("checkpoints"))
    exported = subprocess.run(
        [sys.executable, "-m", "agnews.export", f"run={run}", "quantize=int8"], capture_output=True, text=True, timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-4000:]
    return run


@pytest.fixture(scope="module")
def served(run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with launched(
        run, log,
        "+rate_limit.per_key.trial=0.5",
        "limits.max_texts=64", "limits.max_chars=10000",
        "batching.max_batch_size=16", "batching.max_latency_ms=5000",
        env={"AGNEWS_API_KEYS": f"alice:{ALICE},trial:{TRIAL}"},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served.http, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def channel(served):
    with served.channel() as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.ClassifierStub(channel)


AUTH = (("authorization", f"Bearer {ALICE}"),)


def gql(http: httpx.Client, query: str, variables: dict | None = None, **kwargs) -> httpx.Response:
    return http.post("/graphql", json={"query": query, "variables": variables or {}}, **kwargs)


def probs_of(prediction_probabilities) -> list[float]:
    return [float(p) for p in prediction_probabilities]


# ---- same answers over every protocol ---------------------------------------------------------------------------------
def test_same_labels_and_probabilities_over_http_grpc_graphql_and_offline(run, http, stub):
    offline = Predictor.from_path(run, backend="onnx")  # the export's default variant, as served
    expected = offline.predict_proba(TEXTS)
    labels = offline.label_names

    batch = http.post("/classify_batch", json={"texts": TEXTS})
    assert batch.status_code == 200, batch.text
    http_batch = np.array([[row["probabilities"][name] for name in labels] for row in batch.json()])
    http_single = np.array([
        [http.post("/classify", json={"text": text}).json()["probabilities"][name] for name in labels] for text in TEXTS
    ])
    grpc_batch_reply = stub.ClassifyBatch(pb.ClassifyBatchRequest(texts=TEXTS), metadata=AUTH)
    grpc_batch = np.array([[p.probability for p in pred.probabilities] for pred in grpc_batch_reply.predictions])
    grpc_single = np.array([
        [p.probability for p in stub.Classify(pb.ClassifyRequest(text=t), metadata=AUTH).prediction.probabilities]
        for t in TEXTS
    ])
    graph = gql(http, GQL_CLASSIFY, {"t": TEXTS}).json()
    assert "errors" not in graph, graph
    graph_probs = np.array([[p["probability"] for p in row["probabilities"]] for row in graph["data"]["classify"]])

    # Probability order is the model's label order on every protocol
    assert [p.label for p in grpc_batch_reply.predictions[0].probabilities] == labels
    assert [p["label"] for p in graph["data"]["classify"][0]["probabilities"]] == labels
    assert list(batch.json()[0]["probabilities"]) == labels
    for name, got in [("http batch", http_batch), ("http single", http_single), ("grpc batch", grpc_batch),
                      ("grpc single", grpc_single), ("graphql", graph_probs)]:
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    expected_labels = [labels[i] for i in expected.argmax(axis=1)]
    assert [row["label"] for row in batch.json()] == expected_labels
    assert [p.label for p in grpc_batch_reply.predictions] == expected_labels
    assert [row["label"] for row in graph["data"]["classify"]] == expected_labels


def test_model_identity_is_the_same_everywhere_and_matches_the_files(run, http, stub):
    info = http.post("/model", json={}).json()
    export_info = json.loads((run / "export" / "export.json").read_text())
    assert (info["kind"], info["backend"], info["variant"]) == ("export", "onnx", export_info["default"])
    assert info["model"]["id"] == run.name
    assert re.fullmatch(r"[0-9a-f]{16}", info["model"]["version"])
    assert info["label_names"] == ["World", "Sports", "Business", "Sci/Tech"]
    assert info["max_length"] == 32
    assert info["limits"] == {"max_texts": 64, "max_chars": 10000}
    from agnews.runs import sha256_file

    by_path = {f["path"]: f for f in info["files"]}
    for name in export_info["files"].values():
        assert by_path[name]["sha256"] == sha256_file(run / "export" / name)
    # every prediction names the model that made it
    assert http.post("/classify", json={"text": TEXTS[0]}).json()["model"] == info["model"]

    grpc_info = stub.ModelInfo(pb.ModelInfoRequest(), metadata=AUTH)
    assert (grpc_info.model.id, grpc_info.model.version) == (info["model"]["id"], info["model"]["version"])
    assert list(grpc_info.label_names) == info["label_names"] and grpc_info.max_length == 32
    assert grpc_info.variant == info["variant"]
    assert {f.path: f.sha256 for f in grpc_info.files} == {p: f["sha256"] for p, f in by_path.items()}

    graph = gql(http, "{ model { model { id version } variant labelNames maxLength maxTexts files { path sha256 } } }").json()
    model = graph["data"]["model"]
    assert model["model"] == info["model"] and model["labelNames"] == info["label_names"] and model["maxTexts"] == 64
    assert model["variant"] == info["variant"]
    assert {f["path"]: f["sha256"] for f in model["files"]} == {p: f["sha256"] for p, f in by_path.items()}


# ---- BentoML's own endpoints, gRPC health and reflection ----------------------------------------------------------------
def test_probes_metrics_and_openapi_are_served_without_a_key(served):
    with httpx.Client(base_url=served.http, timeout=30) as anonymous:
        assert anonymous.get("/livez").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        metrics = anonymous.get("/metrics")
        assert metrics.status_code == 200 and "bentoml_service_request_total" in metrics.text
        spec = anonymous.get("/docs.json").json()
    assert {"/classify", "/classify_batch", "/model", "/graphql"} <= set(spec["paths"])
    # what the access layer answers is part of the contract
    assert {"400", "401", "413", "415", "429"} <= set(spec["paths"]["/classify"]["post"]["responses"])
    body = spec["paths"]["/classify_batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["texts"]["maxItems"] == 64


def test_grpc_health_and_reflection_list_the_classifier(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "agnews.v1.Classifier"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"agnews.v1.Classifier", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_adaptive_batching_merges_concurrent_requests(served, http):
    def bucket_stats() -> tuple[float, float]:
        text = http.get("/metrics").text
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("bentoml_service_adaptive_batch_size_sum") and 'method_name="classify_batch"' in line:
                total += float(line.rsplit(" ", 1)[1])
            if line.startswith("bentoml_service_adaptive_batch_size_count") and 'method_name="classify_batch"' in line:
                count += float(line.rsplit(" ", 1)[1])
        return total, count

    before = bucket_stats()
    with httpx.Client(base_url=served.http, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as client:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            replies = list(pool.map(lambda t: client.post("/classify_batch", json={"texts": [t]}), TEXTS * 12))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200][:3]
    # each reply answers its own text
    assert all(len(r.json()) == 1 for r in replies)
    after = bucket_stats()
    requests, batches = after[0] - before[0], after[1] - before[1]
    assert requests == 60
    assert batches < requests, f"{requests} requests ran as {batches} batches: nothing was merged"


# ---- request ids and logs ---------------------------------------------------------------------------------------------
def test_request_ids_are_echoed_and_logged_and_keys_never_are(served, http, stub):
    reply = http.post("/classify", json={"text": TEXTS[0]}, headers={"X-Request-ID": "trace-http-42"})
    assert reply.headers["x-request-id"] == "trace-http-42"
    generated = http.post("/classify", json={"text": TEXTS[0]}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    bad = http.post("/classify", json={"text": ""}, headers={"X-Request-ID": "trace-bad-7"})
    assert bad.json()["request_id"] == "trace-bad-7"
    _, call = stub.Classify.with_call(pb.ClassifyRequest(text=TEXTS[0]), metadata=(*AUTH, ("x-request-id", "trace-grpc-9")))
    assert dict(call.initial_metadata())["x-request-id"] == "trace-grpc-9"

    wanted = {"trace-http-42", "trace-bad-7", "trace-grpc-9"}
    deadline = time.monotonic() + 10  # a request's line is written just after its answer is sent
    while True:
        lines = [json.loads(line) for line in served.log().splitlines() if line.startswith('{"ts"')]
        by_id = {line["request_id"]: line for line in lines}
        if wanted <= set(by_id) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_id["trace-http-42"]["status"] == 200 and by_id["trace-http-42"]["caller"] == "alice"
    assert by_id["trace-bad-7"]["status"] == 400
    assert by_id["trace-grpc-9"]["protocol"] == "grpc" and by_id["trace-grpc-9"]["status"] == "OK"
    assert ALICE not in served.log() and TRIAL not in served.log()


# ---- the bad-input matrix ---------------------------------------------------------------------------------------------
ONE_MB = "a" * 1_000_000
MANY = ["news"] * 10_000


def _grpc_raw(channel, method: str, payload: bytes, metadata=AUTH):
    call = channel.unary_unary(f"/agnews.v1.Classifier/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(payload, metadata=metadata, timeout=60)


# (case, HTTP: (path, json or raw bytes, headers) -> status, message part)
HTTP_CASES = {
    "empty list": ("/classify_batch", {"texts": []}, None, 400, "texts is empty"),
    "empty string": ("/classify", {"text": ""}, None, 400, "text is empty"),
    "whitespace": ("/classify", {"text": " \n\t "}, None, 400, "only whitespace"),
    "1 MB text": ("/classify", {"text": ONE_MB}, None, 400, "1000000 characters; at most 10000"),
    "10,000 texts": ("/classify_batch", {"texts": MANY}, None, 400, "10000 texts in one request; at most 64"),
    "invalid UTF-8": ("/classify", b'{"text": "\xff\xfe news"}', None, 400, "not valid UTF-8"),
    "lone surrogate": ("/classify", b'{"text": "\\ud800"}', None, 400, "not valid Unicode"),
    "numbers for strings": ("/classify_batch", {"texts": [1, 2]}, None, 400, "texts[0] is a JSON number, expected a string"),
    "missing field": ("/classify", {}, None, 400, "text is missing"),
    "extra field": ("/classify", {"text": "news", "lang": "en"}, None, 400, "lang is not a field"),
    "malformed JSON": ("/classify", b'{"text": "news"', None, 400, "not valid JSON"),
    "not an object": ("/classify_batch", ["news"], None, 400, "must be a JSON object"),
    "wrong content type": ("/classify", b"text=news", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    "wrong API key": ("/classify", {"text": "news"}, {"Authorization": "Bearer not-a-valid-key-000"}, 401, "not valid"),
    "no API key": ("/classify", {"text": "news"}, {"Authorization": ""}, 401, "API key is required"),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_http_bad_input(http, case):
    path, body, headers, status, message = HTTP_CASES[case]
    kwargs = {"content": body, "headers": {"Content-Type": "application/json", **(headers or {})}} if isinstance(body, bytes) \
        else {"json": body, "headers": headers or {}}
    reply = http.post(path, **kwargs)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]
    assert reply.json()["request_id"] == reply.headers["x-request-id"]


GRPC_CASES = {
    "empty list": ("ClassifyBatch", pb.ClassifyBatchRequest(texts=[]), grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
    "empty string": ("Classify", pb.ClassifyRequest(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
    "whitespace": ("Classify", pb.ClassifyRequest(text=" \n\t "), grpc.StatusCode.INVALID_ARGUMENT, "only whitespace"),
    "1 MB text": ("Classify", pb.ClassifyRequest(text=ONE_MB), grpc.StatusCode.INVALID_ARGUMENT, "1000000 characters"),
    "10,000 texts": ("ClassifyBatch", pb.ClassifyBatchRequest(texts=MANY), grpc.StatusCode.INVALID_ARGUMENT, "10000 texts"),
    "invalid UTF-8": ("Classify", b"\x0a\x04\xff\xfenw", grpc.StatusCode.INVALID_ARGUMENT, "bad UTF-8"),
    "numbers for strings": ("Classify", b"\x08\x05", grpc.StatusCode.INVALID_ARGUMENT, "wrong type"),
    "missing field": ("ClassifyBatch", b"", grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
    "extra field": ("Classify", b"\x0a\x04news\x28\x01", grpc.StatusCode.INVALID_ARGUMENT, "field numbers [5]"),
    "malformed message": ("Classify", b"\x0a\x09news", grpc.StatusCode.INVALID_ARGUMENT, "not a valid agnews.v1.ClassifyRequest"),
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_bad_input(channel, case):
    method, request, code, message = GRPC_CASES[case]
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        _grpc_raw(channel, method, payload)
    assert caught.value.code() == code, caught.value.details()
    assert message in caught.value.details()


@pytest.mark.parametrize("metadata, message", [
    ((("authorization", "Bearer not-a-valid-key-000"),), "not valid"),
    ((), "API key is required"),
])
def test_grpc_wrong_or_no_api_key(stub, metadata, message):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(pb.ClassifyRequest(text="news"), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in caught.value.details()


DEEP = "{ model { members { files { path { a { b { c } } } } } } }"
ALIASES = "{ " + " ".join(f'a{i}: classify(texts: ["news"]) {{ label }}' for i in range(20)) + " }"
GRAPHQL_CASES = {
    "empty list": ({"query": GQL_CLASSIFY, "variables": {"t": []}}, "texts is empty"),
    "empty string": ({"query": GQL_CLASSIFY, "variables": {"t": [""]}}, "texts[0] is empty"),
    "whitespace": ({"query": GQL_CLASSIFY, "variables": {"t": [" \n"]}}, "only whitespace"),
    "1 MB text": ({"query": GQL_CLASSIFY, "variables": {"t": [ONE_MB]}}, "1000000 characters"),
    "10,000 texts": ({"query": GQL_CLASSIFY, "variables": {"t": MANY}}, "10000 texts"),
    "numbers for strings": ({"query": "{ classify(texts: [1, 2]) { label } }"}, "String cannot represent a non string value"),
    "missing field": ({"query": "{ classify { label } }"}, "classify(texts:)' of type '[String!]!' is required"),
    "extra field": ({"query": '{ classify(texts: ["news"], lang: "en") { label } }'}, "Unknown argument 'lang'"),
    "deep query": ({"query": DEEP}, "exceeds maximum operation depth"),
    "too many aliases": ({"query": ALIASES}, "aliases"),
}


@pytest.mark.parametrize("case", list(GRAPHQL_CASES))
def test_graphql_bad_input(http, case):
    body, message = GRAPHQL_CASES[case]
    reply = http.post("/graphql", json=body)
    assert reply.status_code < 500
    errors = reply.json()["errors"]
    assert any(message in error["message"] for error in errors), errors
    assert reply.json().get("data") in (None, {}) or all(v is None for v in reply.json()["data"].values())


@pytest.mark.parametrize("body, headers, status, message", [
    (b'{"query": "{ model { kind } }"', {}, 400, "not valid JSON"),
    (b'{"query": "\xff\xfe"}', {}, 400, "not valid UTF-8"),
    (b'{"query": "{ model { kind } }"}', {"Authorization": "Bearer not-a-valid-key-000"}, 401, "not valid"),
    (b'{"query": "{ model { kind } }"}', {"Authorization": ""}, 401, "API key is required"),
], ids=["malformed JSON", "invalid UTF-8", "wrong API key", "no API key"])
def test_graphql_bad_transport(http, body, headers, status, message):
    reply = http.post("/graphql", content=body, headers={"Content-Type": "application/json", **headers})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


def test_rate_limit_is_per_key_on_every_protocol(served, channel):
    """The trial key may make 0.5 requests/s (burst 1); alice, unlimited, is unaffected meanwhile."""
    trial = {"Authorization": f"Bearer {TRIAL}"}
    with httpx.Client(base_url=served.http, timeout=60) as client:
        statuses = [client.post("/classify", json={"text": "news"}, headers=trial) for _ in range(3)]
        limited = [r for r in statuses if r.status_code == 429]
        assert limited, [r.status_code for r in statuses]
        assert "rate limit of 0.5 requests/s" in limited[0].json()["error"] and int(limited[0].headers["retry-after"]) >= 1
        graph = [client.post("/graphql", json={"query": "{ model { kind } }"}, headers=trial) for _ in range(3)]
        assert 429 in [r.status_code for r in graph]
        assert client.post("/classify", json={"text": "news"}, headers={"Authorization": f"Bearer {ALICE}"}).status_code == 200
    stub = pb_grpc.ClassifierStub(channel)
    codes = []
    for _ in range(3):
        try:
            stub.Classify(pb.ClassifyRequest(text="news"), metadata=(("x-api-key", TRIAL),))
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "rate limit" in error.details()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


def test_the_server_still_answers_after_the_bad_inputs(http, stub):
    """No bad request leaves a worker stuck: a normal request right after them is answered at once."""
    assert http.post("/classify", json={"text": TEXTS[0]}, timeout=30).status_code == 200
    assert stub.Classify(pb.ClassifyRequest(text=TEXTS[0]), metadata=AUTH, timeout=30).prediction.label


# ---- the OpenAPI contract -------------------------------------------------------------------------------------------
def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, tmp_path):
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{served.http}/docs.json",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
        "--include-path-regex", "^/(classify|classify_batch|model)$",
        "--header", f"Authorization: Bearer {ALICE}",
        "--phases", "examples,coverage,fuzzing", "--max-examples", "15", "--workers", "1",
        "--request-timeout", "60", "--suppress-health-check", "all", "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested: 3" in result.stdout  # /classify, /classify_batch, /model
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", result.stdout).groups())
    assert generated == passed >= 50, result.stdout[-3000:]


# ---- the adapters alone -----------------------------------------------------------------------------------------------
def test_graphql_and_grpc_servers_also_run_alone(run, tmp_path, http):
    """``python -m agnews.serving.graphql_app`` and ``python -m agnews.serving.grpc_server`` serve the same answers
    without BentoML, and stop on SIGTERM."""
    import os
    import signal

    from serving_support import free_port

    gql_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "AGNEWS_API_KEYS": ""}
    logs = [(tmp_path / "graphql.log").open("w"), (tmp_path / "grpc.log").open("w")]
    processes = [
        subprocess.Popen([sys.executable, "-m", "agnews.serving.graphql_app", f"run={run}", f"port={gql_port}"],
                         stdout=logs[0], stderr=subprocess.STDOUT, env=env),
        subprocess.Popen([sys.executable, "-m", "agnews.serving.grpc_server", f"run={run}", f"grpc_port={grpc_port}"],
                         stdout=logs[1], stderr=subprocess.STDOUT, env=env),
    ]
    try:
        expected = [row["label"] for row in http.post("/classify_batch", json={"texts": TEXTS}).json()]
        deadline = time.monotonic() + 300
        graph = None
        while graph is None and time.monotonic() < deadline:
            assert processes[0].poll() is None, (tmp_path / "graphql.log").read_text()
            try:
                graph = httpx.post(f"http://127.0.0.1:{gql_port}/graphql", json={"query": GQL_CLASSIFY, "variables": {"t": TEXTS}}, timeout=30).json()
            except httpx.HTTPError:
                time.sleep(0.5)
        assert [row["label"] for row in graph["data"]["classify"]] == expected
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as standalone:
            grpc.channel_ready_future(standalone).result(timeout=max(1, deadline - time.monotonic()))
            health = health_pb2_grpc.HealthStub(standalone)
            while health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING:
                time.sleep(0.2)
            reply = pb_grpc.ClassifierStub(standalone).ClassifyBatch(pb.ClassifyBatchRequest(texts=TEXTS))
        assert [p.label for p in reply.predictions] == expected
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(60) for process in processes]
        for log in logs:
            log.close()
    assert codes == [0, 0]
