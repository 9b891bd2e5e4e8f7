"""What the Predictor accepts: a list of non-empty strings. Every rule has a message that says what to fix."""

from __future__ import annotations

from typing import Any, Sequence

from agnews.errors import AGNewsError


class InvalidInputError(AGNewsError, ValueError):
    """The texts given to a predictor break a rule (wrong type, empty, too long, not encodable as UTF-8)."""


def validate_texts(texts: Any, max_texts: int | None = None, max_chars: int | None = None) -> list[str]:
    """``texts`` as a list of str, or :class:`InvalidInputError` naming the first offending item.

    An empty list is valid (the result is empty). Over-long texts are *not* an error here unless ``max_chars`` is set:
    the tokenizer truncates them to the model's max length (the first ``max_length`` tokens are scored), as training
    did.
    """
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError("texts must be a list of strings, not a single string: wrap it as [text]")
    if type(texts).__module__ == "numpy" and getattr(texts, "ndim", None) == 1:  # a column of strings from numpy/pandas
        texts = texts.tolist()
    if not isinstance(texts, Sequence):
        raise InvalidInputError(f"texts must be a list of strings, got {type(texts).__name__}")
    if max_texts is not None and len(texts) > max_texts:
        raise InvalidInputError(f"{len(texts)} texts in one request; at most {max_texts} are accepted")
    out = []
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            hint = " (decode bytes to str first)" if isinstance(text, (bytes, bytearray)) else ""
            raise InvalidInputError(f"texts[{position}] is {type(text).__name__}, expected a string{hint}")
        if not text.strip():
            raise InvalidInputError(f"texts[{position}] is empty or only whitespace; send the text to classify")
        if max_chars is not None and len(text) > max_chars:
            raise InvalidInputError(f"texts[{position}] has {len(text)} characters; at most {max_chars} are accepted")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates, e.g. from a mis-decoded byte string
            raise InvalidInputError(f"texts[{position}] is not valid Unicode text ({exc.reason} at {exc.start})") from None
        out.append(str(text))  # a str subclass (numpy.str_) as plain str: tokenizers want exactly str
    return out
