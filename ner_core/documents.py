"""One input row of the bulk tagger -> the words to tag, or the reason it cannot be tagged.

Kept apart from Ray so the rules for what counts as a bad row are plain,
testable Python, and identical whichever format the row came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ner_core.spans import Span, char_spans, token_spans
from ner_core.text import Word, split_words


class BadRow(ValueError):
    """A row that cannot be tagged; the message is the reason written to ``_errors``."""


@dataclass(frozen=True)
class Document:
    """The words of one row, and how to express entity offsets for it."""

    words: list[str]
    text: str | None = None  # raw-text input: offsets are characters into this
    offsets: list[Word] | None = None

    def entities(self, spans: Sequence[Span]) -> list[dict]:
        """Character offsets for raw text, token indices ``[start, end)`` for pre-split input."""
        if self.text is not None and self.offsets is not None:
            return char_spans(spans, self.offsets, self.text)
        return token_spans(spans, self.words)


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_row(row: Mapping[str, Any], column: str, pre_split: bool) -> Any:
    """The value to tag in ``row[column]``, or BadRow saying why there is none.

    Cheap (type checks only), so readers can run it on parsed JSON before the
    row becomes Arrow, where a wrong type could no longer be told apart.
    """
    if column not in row:
        raise BadRow(f"no column {column!r} (columns: {', '.join(sorted(map(str, row))) or 'none'})")
    value = row[column]
    if value is None:
        raise BadRow(f"{column!r} is null")
    if not pre_split:
        if not isinstance(value, str):
            raise BadRow(f"{column!r} is {_type_name(value)}, expected a string")
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise BadRow(f"{column!r} is {_type_name(value)}, expected a list of strings")
    for i, token in enumerate(value):
        if not isinstance(token, str):
            raise BadRow(f"{column!r}[{i}] is {_type_name(token)}, expected a string")
    return value


def document_from_text(row: Mapping[str, Any], column: str) -> Document:
    """Raw text in ``row[column]`` split into words with character offsets."""
    value = check_row(row, column, pre_split=False)
    words = split_words(value)
    return Document([w.text for w in words], value, words)


def document_from_tokens(row: Mapping[str, Any], column: str) -> Document:
    """Pre-split words in ``row[column]`` (a list of strings), tagged as given."""
    return Document(list(check_row(row, column, pre_split=True)))
