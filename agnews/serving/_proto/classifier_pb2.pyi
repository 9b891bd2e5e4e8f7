from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassProbability(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "probabilities")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    label: str
    probabilities: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    def __init__(self, label: _Optional[str] = ..., probabilities: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("prediction", "model")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    model: ModelRef
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("predictions", "model")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    model: ModelRef
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FileChecksum(_message.Message):
    __slots__ = ("path", "sha256", "bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    bytes: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("name", "format", "max_length", "files")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: str
    max_length: int
    files: _containers.RepeatedCompositeFieldContainer[FileChecksum]
    def __init__(self, name: _Optional[str] = ..., format: _Optional[str] = ..., max_length: _Optional[int] = ..., files: _Optional[_Iterable[_Union[FileChecksum, _Mapping]]] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model", "kind", "backend", "label_names", "max_length", "members", "files", "max_texts", "max_chars", "variant")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHARS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    kind: str
    backend: str
    label_names: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    files: _containers.RepeatedCompositeFieldContainer[FileChecksum]
    max_texts: int
    max_chars: int
    variant: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., kind: _Optional[str] = ..., backend: _Optional[str] = ..., label_names: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., files: _Optional[_Iterable[_Union[FileChecksum, _Mapping]]] = ..., max_texts: _Optional[int] = ..., max_chars: _Optional[int] = ..., variant: _Optional[str] = ...) -> None: ...
