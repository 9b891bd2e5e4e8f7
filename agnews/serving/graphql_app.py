"""GraphQL over the predictor core: ``classify(texts)`` and ``model``, with depth, token and alias limits.

Mounted in the BentoML service at ``/graphql``; also runs alone::

    python -m agnews.serving.graphql_app run=<run dir or bundle> port=3001

Bad texts come back as a GraphQL error whose message says what to fix (the same rules and words as HTTP and gRPC).
"""

from __future__ import annotations

import signal
import sys
from typing import Callable

import anyio
import strawberry
from strawberry.asgi import GraphQL
from strawberry.extensions import MaskErrors, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.types import Info

from agnews.serving.core import ClassifierCore
from agnews.serving.schema import RequestError, check_texts
from agnews.serving.settings import ServeSettings


@strawberry.type
class ClassProbability:
    label: str
    probability: float


@strawberry.type
class ModelRef:
    id: str
    version: str


@strawberry.type
class Prediction:
    label: str
    probabilities: list[ClassProbability]
    model: ModelRef


@strawberry.type
class FileChecksum:
    path: str
    sha256: str
    bytes: float  # GraphQL's Int is 32-bit; a file may be larger


@strawberry.type
class Member:
    name: str
    format: str
    max_length: int | None
    files: list[FileChecksum]


@strawberry.type
class ModelInfo:
    model: ModelRef
    kind: str
    backend: str
    variant: str | None
    label_names: list[str]
    max_length: int | None
    members: list[Member]
    files: list[FileChecksum]
    max_texts: int
    max_chars: int


def _files(entries: list[dict]) -> list[FileChecksum]:
    return [FileChecksum(path=f["path"], sha256=f["sha256"], bytes=float(f["bytes"])) for f in entries]


def _core(info: Info) -> ClassifierCore:
    core = info.context["core"]
    if core is None:
        raise RequestError("the model is still loading; retry in a few seconds")
    return core


@strawberry.type
class Query:
    @strawberry.field(description="Label and per-class probabilities of each text, in order.")
    async def classify(self, info: Info, texts: list[str]) -> list[Prediction]:
        core = _core(info)
        texts = check_texts(texts, core.settings.limits)
        # the model runs in a worker thread: the event loop keeps serving other requests meanwhile
        rows = await anyio.to_thread.run_sync(core.predictions, texts)
        ref = ModelRef(**core.card.ref())
        return [
            Prediction(
                label=row["label"],
                probabilities=[ClassProbability(label=k, probability=v) for k, v in row["probabilities"].items()],
                model=ref,
            )
            for row in rows
        ]

    @strawberry.field(description="What is served: labels, members, checksums, max length, request limits.")
    def model(self, info: Info) -> ModelInfo:
        data = _core(info).model_info()
        return ModelInfo(
            model=ModelRef(**data["model"]),
            kind=data["kind"],
            backend=data["backend"],
            variant=data["variant"],
            label_names=data["label_names"],
            max_length=data["max_length"],
            members=[
                Member(name=m["name"], format=m["format"], max_length=m.get("max_length"), files=_files(m["files"]))
                for m in data["members"]
            ],
            files=_files(data["files"]),
            max_texts=data["limits"]["max_texts"],
            max_chars=data["limits"]["max_chars"],
        )


class _Schema(strawberry.Schema):
    def process_errors(self, errors, execution_context=None) -> None:
        # a client's mistake (bad texts, a too deep query) is answered, not logged as a server error with a traceback
        unexpected = [e for e in errors if e.original_error is not None and not isinstance(e.original_error, RequestError)]
        super().process_errors(unexpected, execution_context)


def build_schema(settings: ServeSettings) -> strawberry.Schema:
    limits = settings.graphql
    return _Schema(
        query=Query,
        extensions=[
            QueryDepthLimiter(max_depth=limits.max_depth),
            MaxTokensLimiter(max_token_count=limits.max_tokens),
            MaxAliasesLimiter(max_alias_count=limits.max_aliases),
            # unexpected failures say "Unexpected error." (details go to the log); request errors keep their message
            MaskErrors(should_mask_error=lambda error: error.original_error is not None
                       and not isinstance(error.original_error, RequestError)),
        ],
    )


class ClassifierGraphQL(GraphQL):
    """The strawberry ASGI app; ``core_provider`` returns the loaded core (None while loading)."""

    def __init__(self, settings: ServeSettings, core_provider: Callable[[], ClassifierCore | None]):
        super().__init__(build_schema(settings), graphql_ide="graphiql", allow_queries_via_get=False)
        self.core_provider = core_provider

    async def get_context(self, request, response) -> dict:
        return {"core": self.core_provider(), "request": request, "response": response}


def standalone_app(settings: ServeSettings, core: ClassifierCore):
    """The GraphQL app alone, behind the same access middleware, at ``/graphql``."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from agnews.serving.http_access import AccessMiddleware

    app = Starlette(routes=[Mount("/graphql", app=ClassifierGraphQL(settings, lambda: core))])
    return AccessMiddleware(app, settings)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from agnews.serving.access import setup_logging

    settings = ServeSettings.from_args(sys.argv[1:] if argv is None else argv)
    setup_logging(settings.log_level)
    core = ClassifierCore.load(settings)
    # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal; this no-op handler turns that into a normal exit 0
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(
        standalone_app(settings, core), host=settings.host, port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s), log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
