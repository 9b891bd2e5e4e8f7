"""The BentoML service: ``/classify``, ``/classify_batch`` (adaptive batching), ``/model``, GraphQL at ``/graphql``;
BentoML adds ``/livez``, ``/readyz``, ``/metrics`` and the OpenAPI schema (``/docs.json``).

Settings are read when this module is imported (BentoML's decorators take them at class definition): from
``AGNEWS_SERVE_SETTINGS`` (JSON, set by ``python -m agnews.serve``), else from BentoML arguments
(``bentoml serve agnews.serving.service:AGNewsClassifier --arg run=<run dir> --arg batching.enabled=false``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
from typing import Annotated

import bentoml
from pydantic import Field, StringConstraints

from agnews.serving.access import setup_logging
from agnews.serving.bento_model import stored_run_path
from agnews.serving.core import ClassifierCore
from agnews.serving.graphql_app import ClassifierGraphQL
from agnews.serving.http_access import AccessMiddleware
from agnews.serving.schema import ModelInfo, Prediction
from agnews.serving.settings import ServeSettings

log = logging.getLogger("agnews.serving")


def _settings() -> ServeSettings:
    from_env = ServeSettings.from_env()
    if from_env is not None:
        return from_env
    arguments = vars(bentoml.use_arguments())
    return ServeSettings.from_args([f"{key}={value}" for key, value in arguments.items()])


SETTINGS = _settings()
setup_logging(SETTINGS.log_level)

# The request types, with the configured limits, so that the OpenAPI schema states them (the access middleware has
# already enforced them, with messages, before a request reaches these handlers).
Text = Annotated[str, StringConstraints(min_length=1, max_length=SETTINGS.limits.max_chars, pattern=r"\S")]
Texts = Annotated[list[Text], Field(min_length=1, max_length=SETTINGS.limits.max_texts)]


def _stop_listening() -> int:
    """Shut down this worker's listening sockets, so that new connections are refused (RST) at once while the
    requests in flight finish. Without it they would queue unanswered: BentoML's arbiter holds the same socket open
    until every worker has drained. Returns how many sockets were shut."""
    shut = 0
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.shutdown(socket.SHUT_RD)  # stops the listener itself, in every process that shares it
                shut += 1
        except OSError:
            pass
        finally:
            sock.close()  # closes the duplicate only
    return shut


def _refuse_new_connections_on_sigterm() -> None:
    """Chain before uvicorn's SIGTERM handler (installed by the time the service instance is created)."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        log.info("SIGTERM: refusing new connections (%d listening socket(s) shut), finishing requests in flight",
                 _stop_listening())
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. an in-process test client): nothing to chain
        pass


class _Loaded:
    """The core of this worker process, for the GraphQL app (mounted before the service instance exists)."""

    core: ClassifierCore | None = None


graphql = ClassifierGraphQL(SETTINGS, lambda: _Loaded.core)


def _error_response(description: str):
    from bentoml._internal.service.openapi.specification import MediaType, Reference, Response

    # BentoML's InvalidArgument schema: {"error": str, ...}; every error body here is {"error", "request_id"}
    return Response(description=description, content={"application/json": MediaType(schema=Reference("#/components/schemas/InvalidArgument"))})


class _DocumentedService(bentoml.Service):
    """BentoML's OpenAPI spec plus what the access middleware answers (401, 413, 415, 429), the 503 of adaptive
    batching's deadline, and the GraphQL endpoint."""

    @property
    def openapi_spec(self):
        from bentoml._internal.service.openapi.specification import PathItem

        spec = super().openapi_spec
        extra = {
            "400": "Invalid input; `error` says what to fix",
            "401": "Missing or unknown API key (when keys are configured): send `Authorization: Bearer <key>` or `X-API-Key`",
            "413": "Request body too large",
            "415": "Content-Type is not application/json",
            "429": "Rate limit of this API key exceeded; see the Retry-After header",
            "503": "Queued past batching.max_latency_ms (overloaded)",
        }
        for route in ("/classify", "/classify_batch", "/model"):
            operation = spec.paths[route].post
            for code, text in extra.items():
                operation["responses"][int(code)] = _error_response(text)
        spec.paths["/graphql"] = PathItem(post={
            "tags": ["Service APIs"],
            "description": "GraphQL: `classify(texts: [String!]!)` and `model`; the schema is served by introspection "
                           "and GraphiQL (GET /graphql in a browser).",
            "operationId": "agnews_classifier__graphql",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["query"],
                "properties": {"query": {"type": "string"}, "variables": {"type": "object"}, "operationName": {"type": "string"}},
            }}}},
            "responses": {200: {"description": "GraphQL result: `data` and/or `errors`", "content": {"application/json": {
                "schema": {"type": "object"}}}}, **{int(c): _error_response(t) for c, t in extra.items() if c != "503"}},
        })
        return spec


@bentoml.asgi_app(graphql, path="/graphql")
@bentoml.service(
    name="agnews_classifier",
    service_class=_DocumentedService,
    workers=SETTINGS.workers,
    traffic={"timeout": 60},
    # agnews.serving.access logs each request as one JSON line (with its request id); BentoML's own line would repeat it
    logging={"access": {"enabled": False}},
    http={"host": SETTINGS.host, "port": SETTINGS.port},
)
class AGNewsClassifier:
    if SETTINGS.bento_model:  # declared, so that `bentoml build` packs the model into the Bento
        stored_model = bentoml.models.BentoModel(SETTINGS.bento_model)

    def __init__(self) -> None:
        settings = SETTINGS
        if settings.bento_model:
            settings = dataclasses.replace(settings, run=str(stored_run_path(self.stored_model)))
        self.core = ClassifierCore.load(settings)
        self.ref = self.core.card.ref()
        _Loaded.core = self.core
        _refuse_new_connections_on_sigterm()

    @bentoml.api(route="/classify")
    def classify(self, text: Text) -> Prediction:
        """Classify one text: its label, per-class probabilities and the model id/version."""
        return Prediction(**self.core.predictions([text])[0], model=self.ref)

    @bentoml.api(
        route="/classify_batch",
        batchable=SETTINGS.batching.enabled,
        max_batch_size=SETTINGS.batching.max_batch_size,
        max_latency_ms=SETTINGS.batching.max_latency_ms,
    )
    def classify_batch(self, texts: Texts) -> list[Prediction]:
        """Classify texts, answered in order. With adaptive batching on, concurrent requests are merged into one
        forward pass (up to the configured batch size and latency)."""
        return [Prediction(**row, model=self.ref) for row in self.core.predictions(texts)]

    @bentoml.api(route="/model")
    def model(self) -> ModelInfo:
        """What is served: model id/version, labels, members and checksums, max length, request limits."""
        return ModelInfo(**self.core.model_info())


AGNewsClassifier.add_asgi_middleware(AccessMiddleware, settings=SETTINGS)
