"""Serving settings: one frozen tree, built from ``conf/serve.yaml`` (through Hydra), ``key=value`` arguments, or the
JSON the launcher hands its BentoML worker in ``AGNEWS_SERVE_SETTINGS``.

It holds no secret: API keys are named by *where* they are (an environment variable, a file), never by value, so the
settings can be logged and passed between processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from agnews.errors import ConfigError

SETTINGS_ENV = "AGNEWS_SERVE_SETTINGS"
BACKENDS = ("auto", "torch", "onnx", "tensorrt")


@dataclass(frozen=True)
class Limits:
    """What one request may carry; the same rules for HTTP, gRPC and GraphQL."""

    max_texts: int = 64
    max_chars: int = 10_000
    # Bytes of an HTTP body; null: derived from max_texts and max_chars (4 bytes a character + JSON overhead).
    max_body_bytes: int | None = None

    def body_limit(self) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_texts * (self.max_chars * 4 + 16) + 64 * 1024


@dataclass(frozen=True)
class Batching:
    """BentoML adaptive batching of ``/classify_batch`` requests (``@bentoml.api(batchable=True)``)."""

    enabled: bool = True
    # Texts per merged batch (BentoML requires >= 2). A request with more texts is split into chunks of this size that
    # queue one after another, so keep it >= limits.max_texts unless max_latency_ms covers several batches.
    max_batch_size: int = 64
    # BentoML's deadline, not the batching window (that one adapts to traffic): a request (or chunk) still queued after
    # this long is answered 503. Keep it well above the time of a few full batches.
    max_latency_ms: int = 5000


@dataclass(frozen=True)
class Auth:
    """Optional API keys: ``name:key`` or ``key`` entries, comma-separated in the variable, one a line in the file.
    With no key configured anywhere, authentication is off."""

    keys_env: str = "AGNEWS_API_KEYS"
    keys_file: str | None = None


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per API key (per client address when authentication is off), in each serving process."""

    requests_per_second: float = 0.0  # 0: no limit
    burst: int | None = None  # null: max(1, 2 x requests_per_second)
    # Key name -> requests per second for that key instead (burst: max(1, 2 x that rate)); 0 lifts the limit.
    per_key: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphQLLimits:
    max_depth: int = 5
    max_tokens: int = 1000
    max_aliases: int = 4


@dataclass(frozen=True)
class GrpcSettings:
    workers: int = 8  # RPCs handled at once
    max_concurrent_rpcs: int = 64  # beyond this, RESOURCE_EXHAUSTED instead of an unbounded queue


@dataclass(frozen=True)
class ServeSettings:
    # A run directory (its bundle/, export/ or model/ is served), or a bundle/, export/ or model/ folder.
    run: str | None = None
    # Inside a Bento: the BentoML model-store tag made by `python -m agnews.serving.bento_model` (served instead of run).
    bento_model: str | None = None
    # auto: ONNX Runtime when the run has an ONNX export or a bundle, else torch on model/.
    backend: str = "auto"
    variant: str | None = None  # ONNX file of the export (fp32, optimized, int8, ...); null: the export's default
    precision: str = "fp32"  # torch backend: fp32 or bf16
    device: str = "cpu"
    model_batch_size: int = 64  # texts per forward pass inside the predictor
    # Intra-op threads of the model in each serving process (torch, ONNX Runtime); null: the library's default (all
    # cores). The HTTP worker and the gRPC server each run the model, so one thread each keeps them from fighting over
    # the cores (spinning thread pools make latency collapse on a busy machine).
    threads: int | None = 1
    host: str = "127.0.0.1"
    port: int = 3000
    grpc_port: int | None = 50051  # null: no gRPC server
    workers: int = 1  # BentoML HTTP worker processes (each loads the model)
    # Seconds that requests in flight at SIGTERM/SIGINT get to finish before the servers stop.
    shutdown_grace_s: float = 20.0
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)
    auth: Auth = field(default_factory=Auth)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    graphql: GraphQLLimits = field(default_factory=GraphQLLimits)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.limits.max_texts < 1 or self.limits.max_chars < 1:
            problems.append("limits.max_texts and limits.max_chars must be >= 1")
        if self.batching.max_batch_size < 2:
            problems.append("batching.max_batch_size must be >= 2 (BentoML's minimum)")
        if self.batching.max_latency_ms < 1:
            problems.append("batching.max_latency_ms must be >= 1")
        for name, port in (("port", self.port), ("grpc_port", self.grpc_port)):
            if port is not None and not 0 <= port <= 65535:
                problems.append(f"{name} must be a TCP port (0-65535), got {port}")
        if self.rate_limit.requests_per_second < 0 or any(
            not isinstance(v, (int, float)) or v < 0 for v in self.rate_limit.per_key.values()
        ):
            problems.append("rate_limit.requests_per_second must be >= 0 (0 turns the limit off)")
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be >= 1 (or null for the library default)")
        if self.workers < 1 or self.grpc.workers < 1:
            problems.append("workers and grpc.workers must be >= 1")
        if problems:
            raise ConfigError("invalid serving settings: " + "; ".join(problems))

    # ---- conversions ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServeSettings":
        return _build(cls, data, "")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServeSettings | None":
        """The settings the launcher put in ``AGNEWS_SERVE_SETTINGS``, or None when it is unset."""
        raw = (environ if environ is not None else os.environ).get(SETTINGS_ENV)
        if not raw:
            return None
        try:
            return cls.from_dict(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{SETTINGS_ENV} is not valid JSON ({exc})") from None

    @classmethod
    def from_args(cls, args: Sequence[str], base: "ServeSettings | None" = None) -> "ServeSettings":
        """``["run=/path", "port=3000", "batching.enabled=false", ...]`` applied over ``base`` (default: defaults)."""
        data = (base or cls()).to_dict()
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep or not key:
                raise ConfigError(f"expected key=value, got {arg!r} (e.g. run=outputs/train/runs/<run> port=3000)")
            _set_dotted(data, key.strip(), _parse_scalar(value.strip()))
        return cls.from_dict(data)


def _parse_scalar(value: str) -> Any:
    """YAML-like scalars: null, true/false, numbers; anything else stays a string (paths, names)."""
    lowered = value.lower()
    if lowered in ("null", "none", "~", ""):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            raise ConfigError(f"unknown setting {key!r}: {part!r} is not a settings group")
        target = target[part]
    if parts[-1] not in target:
        known = ", ".join(sorted(target))
        raise ConfigError(f"unknown setting {key!r}; known here: {known}")
    target[parts[-1]] = value


def _build(kind: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"settings {prefix.rstrip('.') or 'root'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting(s) {[prefix + k for k in unknown]}; known: {sorted(prefix + k for k in fields)}")
    values = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            values[name] = _build(type(default), value or {}, f"{prefix}{name}.")
        else:
            values[name] = _coerce(name, value, fields[name].type, prefix)
    return kind(**values)


def _coerce(name: str, value: Any, annotation: Any, prefix: str) -> Any:
    """Check a scalar against its annotation (the annotations are strings under ``from __future__``)."""
    text = str(annotation)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"setting {prefix}{name} cannot be null")
    if text.startswith("bool"):
        if isinstance(value, bool):
            return value
    elif text.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif text.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif text.startswith("str"):
        return str(value)
    elif text.startswith("dict"):
        if isinstance(value, Mapping):
            return dict(value)
    else:
        return value
    raise ConfigError(f"setting {prefix}{name} must be {text.split(' ')[0]}, got {value!r}")
