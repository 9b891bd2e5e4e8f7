"""The gRPC adapter (grpcio; BentoML >= 1.2 services serve HTTP only) over the same predictor core and request rules.

``agnews.v1.Classifier`` (``proto/agnews/v1/classifier.proto``) plus the standard health service
(``grpc.health.v1.Health``) and server reflection. Runs inside ``python -m agnews.serve`` or alone::

    python -m agnews.serving.grpc_server run=<run dir or bundle> grpc_port=50051

Status codes: INVALID_ARGUMENT for bad input (including bytes that are not a valid message, e.g. invalid UTF-8, and
fields this server does not know), UNAUTHENTICATED, RESOURCE_EXHAUSTED (rate limit, too many RPCs at once, message
too large), UNAVAILABLE while shutting down. Every call gets an ``x-request-id`` in its initial metadata.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agnews.errors import ConfigError
from agnews.serving._proto import classifier_pb2 as pb
from agnews.serving.access import API_KEY_HEADER, REQUEST_ID_HEADER, AccessControl, bearer_or_header, log_event, request_id
from agnews.serving.core import ClassifierCore
from agnews.serving.schema import RequestError, check_text, check_texts
from agnews.serving.settings import ServeSettings

log = logging.getLogger("agnews.serving")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Classifier"].full_name  # agnews.v1.Classifier


@dataclass(frozen=True)
class _Undecodable:
    """What the deserializer hands on when the bytes are not a valid message (the handler answers INVALID_ARGUMENT)."""

    reason: str


def _deserializer(message_type):
    def deserialize(data: bytes):
        try:
            message = message_type.FromString(data)
        except DecodeError as exc:
            return _Undecodable(f"the request is not a valid {message_type.DESCRIPTOR.full_name} ({exc}); send UTF-8 text "
                                f"in the fields of {SERVICE_NAME}'s .proto")
        unknown = unknown_fields.UnknownFieldSet(message)
        if len(unknown):
            numbers = sorted({field.field_number for field in unknown})
            return _Undecodable(
                f"the request has fields {message_type.DESCRIPTOR.full_name} does not define (field numbers {numbers}) or "
                "fields of the wrong type; regenerate your client from agnews/v1/classifier.proto"
            )
        return message

    return deserialize


class ClassifierServicer:
    """The three RPCs; each goes through :meth:`_call` (request id, access check, validation, logging)."""

    def __init__(self, core: ClassifierCore, settings: ServeSettings, access: AccessControl | None = None):
        self.core = core
        self.settings = settings
        self.limits = settings.limits
        self.access = access or AccessControl.from_settings(settings.auth, settings.rate_limit)

    def _call(self, method: str, request, context: grpc.ServicerContext, handle):
        started = time.perf_counter()
        metadata = {key.lower(): value for key, value in context.invocation_metadata() if isinstance(value, str)}
        rid = request_id(metadata.get(REQUEST_ID_HEADER))
        context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
        outcome = {"code": "OK", "caller": None, "texts": None, "error": None}
        try:
            peer = context.peer() or "unknown"
            client = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer
            decision = self.access.check(bearer_or_header(metadata.get("authorization"), metadata.get(API_KEY_HEADER)), client)
            outcome["caller"] = decision.caller
            if decision.status == "unauthenticated":
                return self._abort(context, outcome, grpc.StatusCode.UNAUTHENTICATED, decision.message)
            if decision.status == "rate_limited":
                context.set_trailing_metadata((("retry-after", f"{decision.retry_after:.3f}"),))
                return self._abort(context, outcome, grpc.StatusCode.RESOURCE_EXHAUSTED, decision.message)
            if isinstance(request, _Undecodable):
                return self._abort(context, outcome, grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            try:
                return handle(request, outcome)
            except RequestError as exc:
                return self._abort(context, outcome, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except Exception:  # noqa: BLE001 - any other failure: a clean INTERNAL with the id, details in the log
                log.exception("request %s (%s) failed", rid, method)
                return self._abort(context, outcome, grpc.StatusCode.INTERNAL, f"unexpected error (request id {rid}); see the server log")
        finally:
            log_event(
                event="request", protocol="grpc", request_id=rid, method=method, status=outcome["code"],
                caller=outcome["caller"], texts=outcome["texts"], error=outcome["error"],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    @staticmethod
    def _abort(context, outcome, code: grpc.StatusCode, message: str):
        outcome["code"], outcome["error"] = code.name, message[:200]
        context.set_code(code)
        context.set_details(message)
        return None  # grpc sends the status set above; no response message

    def _prediction(self, row: dict) -> pb.Prediction:
        return pb.Prediction(
            label=row["label"],
            probabilities=[pb.ClassProbability(label=k, probability=v) for k, v in row["probabilities"].items()],
        )

    def _ref(self) -> pb.ModelRef:
        return pb.ModelRef(**self.core.card.ref())

    def Classify(self, request, context):
        def handle(request, outcome):
            text = check_text(request.text, self.limits)
            outcome["texts"] = 1
            return pb.ClassifyResponse(prediction=self._prediction(self.core.predictions([text])[0]), model=self._ref())

        return self._call("Classify", request, context, handle)

    def ClassifyBatch(self, request, context):
        def handle(request, outcome):
            texts = check_texts(list(request.texts), self.limits)
            outcome["texts"] = len(texts)
            rows = self.core.predictions(texts)
            return pb.ClassifyBatchResponse(predictions=[self._prediction(r) for r in rows], model=self._ref())

        return self._call("ClassifyBatch", request, context, handle)

    def ModelInfo(self, request, context):
        def handle(request, outcome):
            info = self.core.model_info()

            def files(entries):
                return [pb.FileChecksum(path=f["path"], sha256=f["sha256"], bytes=int(f["bytes"])) for f in entries]

            return pb.ModelInfoResponse(
                model=pb.ModelRef(**info["model"]),
                kind=info["kind"],
                backend=info["backend"],
                label_names=info["label_names"],
                max_length=info["max_length"] or 0,
                members=[
                    pb.Member(name=m["name"], format=m["format"], max_length=m.get("max_length") or 0, files=files(m["files"]))
                    for m in info["members"]
                ],
                files=files(info["files"]),
                max_texts=info["limits"]["max_texts"],
                max_chars=info["limits"]["max_chars"],
                variant=info["variant"] or "",
            )

        return self._call("ModelInfo", request, context, handle)


def _handlers(servicer: ClassifierServicer) -> grpc.GenericRpcHandler:
    def unary(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=_deserializer(request_type), response_serializer=response_type.SerializeToString
        )

    return grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Classify": unary(servicer.Classify, pb.ClassifyRequest, pb.ClassifyResponse),
        "ClassifyBatch": unary(servicer.ClassifyBatch, pb.ClassifyBatchRequest, pb.ClassifyBatchResponse),
        "ModelInfo": unary(servicer.ModelInfo, pb.ModelInfoRequest, pb.ModelInfoResponse),
    })


class GrpcServer:
    """A started server: ``port`` (the bound one: ask for 0 to get a free port), ``stop(grace)``."""

    def __init__(self, core: ClassifierCore, settings: ServeSettings, port: int | None = None):
        port = settings.grpc_port if port is None else port
        if port is None:
            raise ValueError("grpc_port is null: no gRPC server to start")
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc.workers, thread_name_prefix="agnews-grpc"),
            maximum_concurrent_rpcs=settings.grpc.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", settings.limits.body_limit()),
                # fail on a port in use instead of silently sharing it with another server
                ("grpc.so_reuseport", 0),
            ],
        )
        self.server.add_generic_rpc_handlers((_handlers(ClassifierServicer(core, settings)),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{settings.host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address} ({exc}); is the port in use? (grpc_port=...)") from None
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC %s listening on %s:%d (health, reflection)", SERVICE_NAME, settings.host, self.port)

    def stop(self, grace: float) -> threading.Event:
        """Refuse new RPCs now (health NOT_SERVING), let those in flight finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        return self.server.stop(grace)

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


def main(argv: list[str] | None = None) -> None:
    from agnews.serving.access import setup_logging

    settings = ServeSettings.from_args(sys.argv[1:] if argv is None else argv)
    setup_logging(settings.log_level)
    server = GrpcServer(ClassifierCore.load(settings), settings)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: stopping gRPC (grace %.0f s)", signal.Signals(signum).name, settings.shutdown_grace_s)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stopping.wait()
    server.stop(settings.shutdown_grace_s).wait()


if __name__ == "__main__":
    main()
