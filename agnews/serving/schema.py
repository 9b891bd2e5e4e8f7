"""The one request model and validation layer of HTTP, gRPC and GraphQL, and the response shapes.

Every protocol ends in :func:`check_texts` (HTTP bodies first go through :func:`parse_body`, which turns a JSON body
into the request model with a message per problem). A rule that fails raises :class:`RequestError`, whose message says
what to fix; each adapter maps it to its protocol's "bad request" (HTTP 400, gRPC INVALID_ARGUMENT, a GraphQL error).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agnews.errors import AGNewsError
from agnews.inference import InvalidInputError, validate_texts
from agnews.serving.settings import Limits


class RequestError(AGNewsError, ValueError):
    """A request that breaks a rule of the API (shape, types, sizes, encoding); the message says what to fix."""


# ---- request models (the HTTP bodies; gRPC and GraphQL carry the same fields in their own type systems) -------------
class ClassifyRequest(BaseModel):
    """One text to classify."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(description="The news text (title and description) to classify.", examples=["Stocks rally as oil prices fall"])


class ClassifyBatchRequest(BaseModel):
    """Texts to classify, answered in order."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(description="The texts to classify (at least one).", examples=[["Stocks rally as oil prices fall"]])


EXAMPLES = {ClassifyRequest: '{"text": "Stocks rally as oil prices fall"}', ClassifyBatchRequest: '{"texts": ["Stocks rally"]}'}


# ---- response models ------------------------------------------------------------------------------------------------
class ModelRef(BaseModel):
    id: str = Field(description="The run (or bundle) that is served.")
    version: str = Field(description="Content hash of the served files (changes when any byte does).")


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float] = Field(description="Per-class probability, in the model's label order.")
    model: ModelRef


class FileChecksum(BaseModel):
    path: str
    sha256: str
    bytes: int


class Member(BaseModel):
    name: str
    format: str
    max_length: int | None = None
    files: list[FileChecksum] = []


class RequestLimits(BaseModel):
    max_texts: int
    max_chars: int


class ModelInfo(BaseModel):
    model: ModelRef
    kind: str = Field(description="bundle (an ensemble), model (transformers weights) or export (ONNX).")
    backend: str
    variant: str | None = Field(None, description="The ONNX file served from an export (e.g. int8).")
    label_names: list[str]
    max_length: int | None = Field(None, description="Tokens read per text; longer texts are truncated.")
    members: list[Member] = []
    files: list[FileChecksum] = Field([], description="A single model's files, or an ensemble's combiner files.")
    limits: RequestLimits
    batching: dict[str, Any] = {}


class ErrorBody(BaseModel):
    error: str
    request_id: str | None = None


# ---- validation -----------------------------------------------------------------------------------------------------
def check_texts(texts: Any, limits: Limits, field: str = "texts") -> list[str]:
    """The texts of one request, or :class:`RequestError`: a non-empty list of at most ``limits.max_texts`` strings,
    each non-blank, at most ``limits.max_chars`` characters, and encodable as UTF-8 (no lone surrogates)."""
    if isinstance(texts, (list, tuple)) and not texts:
        raise RequestError(f"{field} is empty: send at least one text to classify")
    try:
        return validate_texts(list(texts) if isinstance(texts, tuple) else texts, limits.max_texts, limits.max_chars)
    except InvalidInputError as exc:
        raise RequestError(str(exc).replace("texts", field, 1)) from None


def check_text(text: Any, limits: Limits) -> str:
    """One text (the single-text endpoints): the same rules, messages naming ``text``."""
    if not isinstance(text, str):
        raise RequestError(f"text is {type(text).__name__}, expected a string")
    try:
        return validate_texts([text], None, limits.max_chars)[0]
    except InvalidInputError as exc:
        raise RequestError(str(exc).replace("texts[0]", "text", 1)) from None


def request_texts(request: ClassifyRequest | ClassifyBatchRequest, limits: Limits) -> list[str]:
    if isinstance(request, ClassifyRequest):
        return [check_text(request.text, limits)]
    return check_texts(request.texts, limits)


def parse_body(raw: bytes, model: type[BaseModel], limits: Limits) -> list[str]:
    """An HTTP JSON body as the request ``model``, validated; its texts in order."""
    example = EXAMPLES.get(model, "")
    if len(raw) > limits.body_limit():
        raise RequestError(f"the request body has {len(raw)} bytes; at most {limits.body_limit()} are accepted")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"the request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); send UTF-8 JSON"
        ) from None
    if not decoded.strip():
        raise RequestError(f"the request body is empty; send JSON like {example}")
    try:
        payload = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); send JSON like {example}"
        ) from None
    if not isinstance(payload, dict):
        raise RequestError(f"the request body must be a JSON object like {example}, got a JSON {_json_type(payload)}")
    try:
        request = model.model_validate(payload)
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc, model, example)) from None
    return request_texts(request, limits)


def describe_validation_error(exc: ValidationError, model: type[BaseModel], example: str = "") -> str:
    """The first pydantic error, in words that say what to send instead."""
    error = exc.errors()[0]
    where = _location(error.get("loc", ()))
    kind = error.get("type", "")
    fields = ", ".join(model.model_fields)
    if kind == "missing":
        return f"{where} is missing; send JSON like {example}"
    if kind == "extra_forbidden":
        return f"{where} is not a field of this request; it takes only: {fields} (e.g. {example})"
    if kind == "string_type":
        return f"{where} is a JSON {_json_type(error.get('input'))}, expected a string"
    if kind == "list_type":
        return f"{where} is a JSON {_json_type(error.get('input'))}, expected a list of strings"
    return f"{where}: {error.get('msg', 'invalid')}"


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the request body"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
