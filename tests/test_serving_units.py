"""The serving layer's parts without a server: settings, the shared validation rules and their messages, API keys and
rate limits, model identity, backend choice, the committed gRPC stubs, and the import layering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agnews.errors import ConfigError
from agnews.runs import sha256_file
from agnews.runs.bundle import MemberSource, write_bundle
from agnews.serving.access import AccessControl, ApiKeys, RateLimiter, bearer_or_header, request_id
from agnews.serving.core import choose_backend
from agnews.serving.identity import model_card
from agnews.serving.schema import ClassifyBatchRequest, ClassifyRequest, RequestError, check_text, check_texts, parse_body
from agnews.serving.settings import SETTINGS_ENV, Auth, Limits, RateLimit, ServeSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
LIMITS = Limits(max_texts=3, max_chars=20)


# ---- settings ---------------------------------------------------------------------------------------------------------
def test_conf_serve_yaml_and_the_settings_defaults_agree():
    conf = yaml.safe_load((REPO_ROOT / "conf" / "serve.yaml").read_text())
    conf = {k: v for k, v in conf.items() if k not in ("defaults", "hydra")}
    assert ServeSettings.from_dict(conf) == ServeSettings()


def test_key_value_arguments_set_nested_settings_and_survive_the_env_round_trip():
    settings = ServeSettings.from_args(
        ["run=/tmp/r", "port=3100", "grpc_port=null", "batching.enabled=false", "rate_limit.requests_per_second=2.5"]
    )
    assert (settings.run, settings.port, settings.grpc_port) == ("/tmp/r", 3100, None)
    assert settings.batching.enabled is False and settings.rate_limit.requests_per_second == 2.5
    assert ServeSettings.from_env({SETTINGS_ENV: settings.to_json()}) == settings
    assert ServeSettings.from_env({}) is None


@pytest.mark.parametrize("args, message", [
    (["prot=3000"], "unknown setting 'prot'"),
    (["batching.size=3"], "unknown setting 'batching.size'"),
    (["port=http"], "setting port must be int"),
    (["batching.max_batch_size=1"], "max_batch_size must be >= 2"),
    (["backend=jax"], "backend must be one of"),
    (["grpc_port=70000"], "grpc_port must be a TCP port"),
    (["limits.max_texts=0"], "must be >= 1"),
    (["run"], "expected key=value"),
])
def test_bad_settings_say_what_is_wrong(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ServeSettings.from_args(args)


# ---- the shared validation layer --------------------------------------------------------------------------------------
@pytest.mark.parametrize("texts, message", [
    ([], "texts is empty: send at least one text"),
    (["ok", ""], "texts[1] is empty or only whitespace"),
    (["ok", " \t\n"], "texts[1] is empty or only whitespace"),
    (["a"] * 4, "4 texts in one request; at most 3"),
    (["x" * 21], "texts[0] has 21 characters; at most 20"),
    (["ok", 7], "texts[1] is int, expected a string"),
    (["\ud800"], "texts[0] is not valid Unicode text"),
    ("one text", "not a single string: wrap it as [text]"),
])
def test_check_texts_rejects_with_a_message_that_says_what_to_fix(texts, message):
    with pytest.raises(RequestError) as caught:
        check_texts(texts, LIMITS)
    assert message in str(caught.value)


def test_check_texts_accepts_valid_texts_unchanged_and_check_text_names_the_field():
    assert check_texts(("a", " b "), LIMITS) == ["a", " b "]
    with pytest.raises(RequestError, match="^text is empty"):
        check_text("  ", LIMITS)
    with pytest.raises(RequestError, match="^text is int"):
        check_text(3, LIMITS)


@pytest.mark.parametrize("raw, model, message", [
    (b'{"text": "hi"', ClassifyRequest, "not valid JSON (Expecting"),
    (b'{"text": "\xff"}', ClassifyRequest, "not valid UTF-8 (byte 0xff at offset 10)"),
    (b"", ClassifyRequest, "the request body is empty"),
    (b"[]", ClassifyRequest, "must be a JSON object"),
    (b"{}", ClassifyRequest, "text is missing"),
    (b'{"text": "hi", "lang": "en"}', ClassifyRequest, "lang is not a field of this request; it takes only: text"),
    (b'{"text": null}', ClassifyRequest, "text is a JSON null, expected a string"),
    (b'{"texts": "hi"}', ClassifyBatchRequest, "texts is a JSON string, expected a list of strings"),
    (b'{"texts": ["a", {"b": 1}]}', ClassifyBatchRequest, "texts[1] is a JSON object, expected a string"),
    (b'{"texts": [true]}', ClassifyBatchRequest, "texts[0] is a JSON boolean"),
    (b'{"texts": []}', ClassifyBatchRequest, "texts is empty"),
])
def test_parse_body_turns_every_malformed_body_into_one_clear_message(raw, model, message):
    with pytest.raises(RequestError) as caught:
        parse_body(raw, model, LIMITS)
    assert message in str(caught.value)


def test_parse_body_returns_the_texts_and_caps_the_body_size():
    assert parse_body(b'{"texts": ["a", "b"]}', ClassifyBatchRequest, LIMITS) == ["a", "b"]
    assert parse_body('{"text": "caf\u00e9"}'.encode(), ClassifyRequest, LIMITS) == ["caf\u00e9"]
    small = Limits(max_texts=3, max_chars=20, max_body_bytes=10)
    with pytest.raises(RequestError, match="at most 10 are accepted"):
        parse_body(b'{"text": "hello"}', ClassifyRequest, small)


# ---- access -------------------------------------------------------------------------------------------------------------
def test_api_keys_from_env_and_file_identify_callers_by_name(tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\nbob:bob-secret-key-1\n\nunnamed-secret-key-2\n")
    keys = ApiKeys.load(Auth(keys_env="TEST_KEYS", keys_file=str(keys_file)), {"TEST_KEYS": "alice:alice-secret-1, ci:ci-secret-key"})
    assert len(keys) == 4 and keys.enabled
    assert keys.identify("alice-secret-1") == "alice" and keys.identify("bob-secret-key-1") == "bob"
    assert keys.identify("unnamed-secret-key-2").startswith("key-")
    assert keys.identify("alice-secret-") is None and keys.identify(None) is None
    assert not ApiKeys.load(Auth(keys_env="UNSET_VAR"), {}).enabled


def test_short_or_missing_key_sources_fail_without_echoing_the_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        ApiKeys.load(Auth(keys_env="K"), {"K": "dev:abc"})
    assert "fewer than 8 characters" in str(caught.value) and "abc" not in str(caught.value)
    with pytest.raises(ConfigError, match="no such file"):
        ApiKeys.load(Auth(keys_env="", keys_file=str(tmp_path / "missing.txt")), {})


def test_keys_are_read_from_the_header_forms_clients_use():
    assert bearer_or_header("Bearer k-123", None) == "k-123"
    assert bearer_or_header("bearer  k-123 ", None) == "k-123"
    assert bearer_or_header(None, "k-456") == "k-456"
    assert bearer_or_header("Basic dXNlcg==", None) is None and bearer_or_header("", "") is None


def test_request_ids_keep_safe_caller_ids_and_replace_others():
    assert request_id("trace-1.a:b") == "trace-1.a:b"
    assert len(request_id("bad id with spaces")) == 32 and len(request_id(None)) == 32
    assert request_id("x" * 65) != "x" * 65


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate_per_caller():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests_per_second=2, burst=3), clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # another caller has its own bucket
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") > 0


def test_per_key_rates_override_the_default_and_zero_means_unlimited():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(requests_per_second=0, per_key={"trial": 1.0}), clock=clock)
    assert all(limiter.acquire("free") == 0.0 for _ in range(100))
    assert [limiter.acquire("trial") == 0.0 for _ in range(3)] == [True, True, False]  # burst max(1, 2 x 1)


def test_access_control_checks_the_key_before_the_rate():
    keys = ApiKeys([("alice", "alice-secret-1")])
    access = AccessControl(keys, RateLimiter(RateLimit(requests_per_second=1, burst=1), clock=FakeClock()))
    assert access.check(None, "1.2.3.4").status == "unauthenticated"
    assert access.check("wrong-key-000", "1.2.3.4").status == "unauthenticated"
    assert access.check("alice-secret-1", "1.2.3.4").status == "ok"
    limited = access.check("alice-secret-1", "5.6.7.8")  # the bucket is the key's, whatever the address
    assert limited.status == "rate_limited" and "retry in" in limited.message and limited.retry_after > 0
    open_access = AccessControl(ApiKeys([]), RateLimiter(RateLimit()))
    assert open_access.check(None, "1.2.3.4").caller == "client:1.2.3.4"


# ---- what is served -----------------------------------------------------------------------------------------------------
def _model_folder(root: Path) -> Path:
    folder = root / "run" / "model"
    folder.mkdir(parents=True)
    (root / "run" / "run.json").write_text("{}")
    (folder / "agnews_model.json").write_text(json.dumps({"label_names": ["a", "b"], "max_length": 16}))
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    return folder


def test_model_card_of_a_model_folder_hashes_every_file(tmp_path):
    folder = _model_folder(tmp_path)
    card = model_card(folder, ["a", "b"], 16, "torch")
    assert (card.id, card.kind, card.max_length) == ("run", "model", 16)
    assert {f["path"]: f["sha256"] for f in card.files}["model.safetensors"] == sha256_file(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 63)  # one byte changes: a new version
    assert model_card(folder, ["a", "b"], 16, "torch").version != card.version


def test_model_card_of_an_export_names_the_variant_served(tmp_path):
    folder = tmp_path / "run" / "export"
    folder.mkdir(parents=True)
    (folder / "export.json").write_text(json.dumps({"files": {"fp32": "model.onnx", "int8": "model.int8.onnx"}, "default": "int8"}))
    (folder / "model.onnx").write_bytes(b"fp32")
    (folder / "model.int8.onnx").write_bytes(b"int8")
    card = model_card(folder, ["a"], 8, "onnx")
    assert (card.kind, card.variant) == ("export", "int8")
    assert model_card(folder, ["a"], 8, "onnx", variant="fp32").variant == "fp32"
    assert sorted(f["path"] for f in card.files) == ["export.json", "model.int8.onnx", "model.onnx"]


def test_model_card_of_a_bundle_lists_members_with_the_manifest_checksums(tmp_path):
    member = tmp_path / "member"
    member.mkdir()
    (member / "agnews_model.json").write_text(json.dumps({"label_names": ["a", "b"]}))
    (member / "model.onnx").write_bytes(b"onnx-bytes")
    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "run.json").write_text("{}")
    manifest = write_bundle(
        tmp_path / "ens" / "bundle", ["a", "b"],
        [MemberSource("m1", "onnx", {"agnews_model.json": member / "agnews_model.json", "model.onnx": member / "model.onnx"},
                      {"max_length": 32})],
        {"method": "mean", "params": {}},
    )
    card = model_card(tmp_path / "ens" / "bundle", ["a", "b"], 32, "ensemble")
    assert (card.id, card.kind) == ("ens", "bundle")
    assert card.version == sha256_file(tmp_path / "ens" / "bundle" / "manifest.json")[:16]
    assert card.members[0]["name"] == "m1" and card.members[0]["max_length"] == 32
    assert card.members[0]["files"] == [{k: f[k] for k in ("path", "sha256", "bytes")} for f in manifest["members"][0]["files"]]


def test_auto_backend_serves_an_onnx_export_when_the_run_has_one(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    assert choose_backend(run, "auto") == "auto"  # model/ only: the Predictor picks torch
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text("{}")
    assert choose_backend(run, "auto") == "onnx"
    assert choose_backend(run, "torch") == "torch"
    (run / "bundle").mkdir()
    (run / "bundle" / "manifest.json").write_text("{}")
    assert choose_backend(run, "auto") == "auto"  # a bundle: ORT members through the Predictor's auto


# ---- gRPC stubs and layering ---------------------------------------------------------------------------------------------
def test_committed_grpc_stubs_match_the_proto():
    from google.protobuf import descriptor_pb2

    from agnews.serving import protos
    from agnews.serving._proto import classifier_pb2, classifier_pb2_grpc

    fresh = descriptor_pb2.FileDescriptorSet.FromString(protos.descriptor_set()).file[0]
    for message in fresh.message_type:  # protoc fills in JSON names; the embedded descriptor leaves them implicit
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto()
    classifier_pb2.DESCRIPTOR.CopyToProto(committed)
    assert committed == fresh, "agnews/serving/_proto is stale: run `python -m agnews.serving.protos`"
    assert {"Classify", "ClassifyBatch", "ModelInfo"} <= set(dir(classifier_pb2_grpc.ClassifierServicer))


def test_serving_imports_neither_hydra_nor_lightning_nor_torch_up_front():
    code = (
        "import sys, agnews.serving.service, agnews.serving.grpc_server, agnews.serving.graphql_app, "
        "agnews.serving.launcher; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'hydra', 'omegaconf', 'lightning', 'pytorch_lightning', 'torch'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args, message", [
    (["run=/nonexistent/run"], "no such run, model, export or bundle directory"),
    ([], "nothing to serve: set run="),
    (["run=/tmp", "batching.max_batch_size=1"], "max_batch_size must be >= 2"),
])
def test_serve_command_refuses_bad_arguments_with_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "agnews.serve", *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
