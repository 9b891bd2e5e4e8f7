"""The HTTP front door (a pure ASGI middleware): request ids, API keys, rate limits, body validation, access logs.

It wraps the BentoML app (``Service.add_asgi_middleware``) and the standalone GraphQL app alike. On the JSON API routes
it reads the body once, validates it with the shared request model (:func:`agnews.serving.schema.parse_body`) and
answers a bad one itself with 400/413/415 and a message, so BentoML's handler (and its batch) only ever sees valid
requests; the body is then replayed unchanged. BentoML's own probes and docs (``/livez``, ``/readyz``, ``/metrics``,
``/docs.json``) stay open.
"""

from __future__ import annotations

import json
import time
from typing import Any, Awaitable, Callable

from pydantic import BaseModel

from agnews.serving.access import (
    API_KEY_HEADER,
    REQUEST_ID_HEADER,
    AccessControl,
    bearer_or_header,
    log_event,
    request_id,
)
from agnews.serving.schema import ClassifyBatchRequest, ClassifyRequest, RequestError, parse_body
from agnews.serving.settings import ServeSettings

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# POST routes whose JSON body is checked here, with the request model each takes.
VALIDATED_ROUTES: dict[str, type[BaseModel] | None] = {
    "/classify": ClassifyRequest,
    "/classify_batch": ClassifyBatchRequest,
    "/model": None,
}
GRAPHQL_PATH = "/graphql"
# Probes and scrapes are not logged (they would drown the record of real requests).
UNLOGGED_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


def _is_protected(path: str) -> bool:
    return path in VALIDATED_ROUTES or path == GRAPHQL_PATH or path.startswith(GRAPHQL_PATH + "/")


class AccessMiddleware:
    def __init__(self, app, settings: ServeSettings, access: AccessControl | None = None):
        self.app = app
        self.settings = settings
        self.limits = settings.limits
        self.body_limit = settings.limits.body_limit()
        # Built here, in the serving process: the keys are read from its environment, never passed as arguments.
        self.access = access or AccessControl.from_settings(settings.auth, settings.rate_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = request_id(headers.get(REQUEST_ID_HEADER))
        path = scope.get("path", "")
        state = {"status": 0, "caller": None, "texts": None, "error": None}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode())]}
            await send(message)

        try:
            if not _is_protected(path):
                await self.app(scope, receive, send_with_id)
                return
            client = (scope.get("client") or ("unknown", 0))[0]
            decision = self.access.check(bearer_or_header(headers.get("authorization"), headers.get(API_KEY_HEADER)), client)
            state["caller"] = decision.caller
            if decision.status == "unauthenticated":
                await self._error(send_with_id, 401, decision.message, rid, [(b"www-authenticate", b'Bearer realm="agnews"')])
                return
            if decision.status == "rate_limited":
                retry = str(max(1, round(decision.retry_after + 0.5))).encode()
                await self._error(send_with_id, 429, decision.message, rid, [(b"retry-after", retry)])
                return
            # The caller's id reaches the app too (BentoML's context, GraphQL resolvers, the access log agree).
            scope = {**scope, "headers": [*[(k, v) for k, v in scope.get("headers", []) if k.lower() != b"x-request-id"],
                                          (b"x-request-id", rid.encode())]}
            if path == GRAPHQL_PATH:
                scope = {**scope, "path": GRAPHQL_PATH + "/", "raw_path": (GRAPHQL_PATH + "/").encode()}  # no 307 hop
            if path in VALIDATED_ROUTES and scope.get("method") == "POST":
                receive = await self._validated(scope, receive, send_with_id, headers, path, rid, state)
                if receive is None:
                    return
            elif path.startswith(GRAPHQL_PATH) and scope.get("method") == "POST":
                body = await self._read_body(receive, headers, send_with_id, rid, state)
                if body is None:
                    return
                problem = _graphql_body_problem(body, headers)
                if problem:
                    state["error"] = problem[:200]
                    await self._error(send_with_id, 400, problem, rid)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            if path not in UNLOGGED_PATHS:
                log_event(
                    event="request", protocol="graphql" if path.startswith(GRAPHQL_PATH) else "http", request_id=rid,
                    method=scope.get("method"), path=path, status=state["status"], caller=state["caller"],
                    texts=state["texts"], error=state["error"], duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )

    async def _validated(self, scope, receive, send, headers, path, rid, state):
        content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type not in ("application/json", ""):
            await self._error(send, 415, f"Content-Type {content_type!r} is not accepted; send application/json", rid)
            state["error"] = "content-type"
            return None
        body = await self._read_body(receive, headers, send, rid, state)
        if body is None:
            return None
        model = VALIDATED_ROUTES[path]
        if model is None:  # /model takes no input: an empty body or {}
            if body.strip() not in (b"", b"{}"):
                await self._error(send, 400, "this endpoint takes no input; send an empty body or {}", rid)
                state["error"] = "input"
                return None
            return _replay(b"{}", receive)
        try:
            texts = parse_body(body, model, self.limits)
        except RequestError as exc:
            state["error"] = str(exc)[:200]
            await self._error(send, 400, str(exc), rid)
            return None
        state["texts"] = len(texts)
        return _replay(body, receive)

    async def _read_body(self, receive, headers, send, rid, state) -> bytes | None:
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.body_limit:
            state["error"] = "body-too-large"
            await self._error(send, 413, f"the request body has {declared} bytes; at most {self.body_limit} are accepted", rid)
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                state["error"] = "client-disconnected"
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.body_limit:
                state["error"] = "body-too-large"
                await self._error(send, 413, f"the request body exceeds {self.body_limit} bytes; send fewer or shorter texts", rid)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _error(send: Send, status: int, message: str, rid: str, extra_headers: list | None = None) -> None:
        body = json.dumps({"error": message, "request_id": rid}).encode("utf-8")
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra_headers or [])],
        })
        await send({"type": "http.response.body", "body": body})


def _graphql_body_problem(body: bytes, headers: dict) -> str | None:
    """A GraphQL POST body that is not UTF-8 JSON gets a 400 with this message (strawberry parses the rest)."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return None  # strawberry answers other content types (e.g. multipart) itself
    try:
        json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}); send UTF-8 JSON"
    except json.JSONDecodeError as exc:
        return (f'the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); send '
                '{"query": "{ classify(texts: [\\"...\\"]) { label } }"}')
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel (which reports a real disconnect)."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
