"""A ``POST /v1/tag`` body -> the documents to tag, or a 4xx that names the field and the reason.

Plain Python, no Serve: every way a request can be wrong is checked here, before
anything reaches the model's batch, and has its own unit test.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ner_core.documents import BadRow, Document, check_row, document_from_text, document_from_tokens

SHAPES = ("text", "texts", "tokens")
FIELDS = frozenset(SHAPES) | {"min_score"}


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status`` with ``{"error": {"field", "reason"}}``."""

    def __init__(self, status: int, field: str | None, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.status, self.field, self.reason = status, field, reason

    def body(self) -> dict:
        return {"error": {"field": self.field, "reason": self.reason}}


@dataclass(frozen=True)
class Limits:
    max_chars: int
    max_docs: int
    max_body_bytes: int


@dataclass(frozen=True)
class TagRequest:
    documents: list[Document]
    min_score: float | None  # None: the server's --min-score


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_body(body: bytes, limits: Limits) -> TagRequest:
    """Raises ``RequestError``: 400 not JSON, 422 a missing, unknown or wrongly typed field, 413 too large."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, None, f"the body has {len(body):,} bytes, more than this server's limit of {limits.max_body_bytes:,}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(400, None, f"the body is not JSON: {str(exc)[:200]}") from None
    return parse_request(data, limits)


def parse_request(data: Any, limits: Limits) -> TagRequest:
    if not isinstance(data, dict):
        raise RequestError(422, None, f"the body is a JSON {_type(data)}, expected an object with one of {', '.join(SHAPES)}")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise RequestError(422, unknown[0], f"unknown field; expected one of {', '.join(SHAPES)} and optionally min_score")
    given = [s for s in SHAPES if s in data]
    if len(given) != 1:
        raise RequestError(422, None, f"expected exactly one of {', '.join(SHAPES)}, got {', '.join(given) or 'none'}")
    shape = given[0]
    return TagRequest(_documents(shape, data[shape], limits), _min_score(data.get("min_score")))


def _min_score(value: Any) -> float | None:
    if value is None:
        return None
    # bool is an int in Python, and "true" is no score
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise RequestError(422, "min_score", f"is {value!r}, expected a number between 0 and 1")
    return float(value)


def _documents(shape: str, value: Any, limits: Limits) -> list[Document]:
    values = [value] if shape == "text" else value
    names = [shape] if shape == "text" else None
    if shape != "text":
        if not isinstance(value, list):
            raise RequestError(422, shape, f"is {_type(value)}, expected a list")
        if not value:
            raise RequestError(422, shape, "is an empty list")
        if len(value) > limits.max_docs:
            raise RequestError(413, shape, f"has {len(value):,} documents, more than this server's limit of {limits.max_docs:,}")
        names = [f"{shape}[{i}]" for i in range(len(value))]
    docs = []
    for name, item in zip(names, values):
        try:
            check_row({name: item}, name, pre_split=shape == "tokens")
        except BadRow as exc:
            # BadRow says "'tokens[1]'[3] is int, ...": the field is everything before " is"
            field, _, reason = str(exc).partition(" is ")
            raise RequestError(422, field.replace("'", ""), f"is {reason}") from None
        # before the words are split: a text over the limit costs nothing more
        chars = len(item) if shape != "tokens" else sum(len(t) for t in item) + max(len(item) - 1, 0)
        if chars > limits.max_chars:
            raise RequestError(413, name, f"has {chars:,} characters, more than this server's limit of {limits.max_chars:,}")
        docs.append(document_from_tokens({name: item}, name) if shape == "tokens" else document_from_text({name: item}, name))
    return docs
