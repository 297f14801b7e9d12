"""Reading CoNLL column files: one token per line, blank lines between sentences.

Errors name the file and line, because a bad line in a 200k-line training
file must be findable in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ner_core.labels import InvalidTagError, split_tag


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    source: str
    line: int  # 1-based line of the first token


class ConllFormatError(ValueError):
    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason

    def __reduce__(self):
        # Raised inside Ray tasks: must survive pickling to reach the driver intact.
        return (self.__class__, (self.source, self.line, self.reason))


def iter_conll(
    lines: Iterable[str], source: str = "<string>", token_column: int = 0, tag_column: int = -1
) -> Iterator[Sentence]:
    """Sentences from CoNLL lines (tab- or space-separated; ``-DOCSTART-`` skipped).

    The first non-blank line fixes the column count; a line with another count
    is an error, as is a malformed tag.
    """
    columns: int | None = None
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                yield Sentence(tokens, tags, source, first_line)
                tokens, tags = [], []
            continue
        parts = line.split()
        if parts[0] == "-DOCSTART-":
            continue
        if columns is None:
            columns = len(parts)
            needed = max(token_column if token_column >= 0 else -token_column - 1, tag_column if tag_column >= 0 else -tag_column - 1) + 1
            if columns < max(2, needed):
                raise ConllFormatError(source, lineno, f"expected at least {max(2, needed)} columns (token and tag), found {columns}")
        elif len(parts) != columns:
            raise ConllFormatError(source, lineno, f"expected {columns} columns, found {len(parts)}: {line!r}")
        tag = parts[tag_column]
        try:
            split_tag(tag)
        except InvalidTagError as exc:
            raise ConllFormatError(source, lineno, str(exc)) from None
        if not tokens:
            first_line = lineno
        tokens.append(parts[token_column])
        tags.append(tag)
    if tokens:
        yield Sentence(tokens, tags, source, first_line)


def parse_conll_text(text: str, source: str = "<string>", token_column: int = 0, tag_column: int = -1) -> list[Sentence]:
    """Sentences of a whole file's text; an empty file is an error, not an empty data set."""
    sentences = list(iter_conll(text.splitlines(), source, token_column, tag_column))
    if not sentences:
        raise ConllFormatError(source, 0, "no sentences (empty file?)")
    return sentences


def decode_conll_bytes(data: bytes, source: str, encoding: str = "utf-8") -> str:
    """Bytes -> text; undecodable bytes are reported with their line number."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConllFormatError(source, line, f"cannot decode as {encoding}: {exc.reason}") from None


def read_conll(path: str | os.PathLike, token_column: int = 0, tag_column: int = -1, encoding: str = "utf-8") -> list[Sentence]:
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_conll_text(decode_conll_bytes(data, os.fspath(path), encoding), os.fspath(path), token_column, tag_column)
