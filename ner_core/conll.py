"""Reading CoNLL column files: one token per line, blank lines between sentences.

Errors name the file and line, because a bad line in a 200k-line training
file must be findable in seconds. Columns are separated by runs of spaces or
tabs only (not every Unicode space): WNUT tokens may contain odd characters
such as U+200B or U+FEFF, and those belong to the token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ner_core.labels import InvalidTagError, split_tag

DOCSTART = "-DOCSTART-"
_COLUMN_SEP = re.compile(r"[ \t]+")


@dataclass
class Sentence:
    tokens: list[str]
    tags: list[str]
    source: str
    line: int  # 1-based line of the first token, so errors found later can point back
    document: int | None = None  # which -DOCSTART- document (0-based); None in files without them


class ConllFormatError(ValueError):
    """A problem in a labelled file, located as ``source:line``."""

    def __init__(self, source: str, line: int, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason = source, line, reason

    def __reduce__(self):
        # Raised inside Ray tasks: must survive pickling to reach the driver intact.
        return (self.__class__, (self.source, self.line, self.reason))


def _columns_needed(column: int) -> int:
    """How many columns a line needs for ``column`` (which may count from the end)."""
    return column + 1 if column >= 0 else -column


def iter_conll(
    lines: Iterable[str], source: str = "<string>", token_column: int = 0, tag_column: int = -1
) -> Iterator[Sentence]:
    """Sentences from CoNLL lines (tab- or space-separated; ``-DOCSTART-`` lines skipped).

    The first non-blank line fixes the column count (CoNLL-2003 here has 2
    columns, the original 4; WNUT has 2, tab-separated): a line with another
    count is an error naming the line, as is a malformed tag. A document
    boundary (``-DOCSTART-``) also ends a sentence. Lines may end in ``\\n`` or
    ``\\r\\n``; the last sentence needs no blank line after it.
    """
    needed = max(2, _columns_needed(token_column), _columns_needed(tag_column))
    columns: int | None = None
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    document: int | None = None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n").strip(" \t")
        if not line:
            if tokens:
                yield Sentence(tokens, tags, source, first_line, document)
                tokens, tags = [], []
            continue
        parts = _COLUMN_SEP.split(line)
        if parts[0] == DOCSTART:
            if tokens:
                yield Sentence(tokens, tags, source, first_line, document)
                tokens, tags = [], []
            document = 0 if document is None else document + 1
            continue
        if columns is None:
            if len(parts) < needed:
                raise ConllFormatError(
                    source,
                    lineno,
                    f"expected at least {needed} columns (token column {token_column}, tag column {tag_column}), "
                    f"found {len(parts)}: {line!r}",
                )
            columns = len(parts)
            if token_column % columns == tag_column % columns:
                raise ValueError(f"token_column={token_column} and tag_column={tag_column} are the same column of {columns}")
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
        yield Sentence(tokens, tags, source, first_line, document)


def document_contexts(sentences: Sequence[Sentence], words: int) -> list[tuple[list[str], list[str]]]:
    """For each sentence, up to ``words`` words before and after it in its own document.

    Only sentences of the same ``-DOCSTART-`` document are context; a file
    without document markers (WNUT: unrelated posts) gives no context at all,
    since its neighbouring sentences are not about the same thing.
    """
    out: list[tuple[list[str], list[str]]] = []
    for i, sent in enumerate(sentences):
        left: list[str] = []
        right: list[str] = []
        if sent.document is not None and words > 0:
            j = i - 1
            while j >= 0 and len(left) < words and sentences[j].document == sent.document:
                left = list(sentences[j].tokens) + left
                j -= 1
            j = i + 1
            while j < len(sentences) and len(right) < words and sentences[j].document == sent.document:
                right += sentences[j].tokens
                j += 1
        out.append((left[-words:] if left else [], right[:words]))
    return out


def parse_conll_text(
    text: str, source: str = "<string>", token_column: int = 0, tag_column: int = -1
) -> list[Sentence]:
    """Sentences of a whole file's text; an empty file is an error, not an empty data set.

    Splits on ``\\n`` only: ``str.splitlines`` would also break inside tokens
    at U+2028, U+0085 and friends, shifting every line number after them.
    """
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not part of the first token
    sentences = list(iter_conll(text.split("\n"), source, token_column, tag_column))
    if not sentences:
        raise ConllFormatError(source, 0, "no sentences (empty file?)")
    return sentences


def decode_conll_bytes(data: bytes, source: str, encoding: str = "utf-8") -> str:
    """Bytes -> text; undecodable bytes are reported with their line number."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConllFormatError(source, line, f"cannot decode as {encoding}: {exc.reason} at byte {exc.start}") from None


def read_conll(
    path: str | os.PathLike, token_column: int = 0, tag_column: int = -1, encoding: str = "utf-8"
) -> list[Sentence]:
    """All sentences of a local CoNLL file (``source`` is the path as given)."""
    source = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_conll_text(decode_conll_bytes(data, source, encoding), source, token_column, tag_column)
