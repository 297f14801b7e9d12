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


DOCUMENT_SOURCES = ("markers", "datelines")


def check_documents(documents: str) -> str:
    """``documents`` if it names a way to find documents (see ``infer_documents``)."""
    if documents not in DOCUMENT_SOURCES:
        raise ValueError(f"documents must be one of {', '.join(DOCUMENT_SOURCES)}, got {documents!r}")
    return documents


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[A-Z][a-z]+(?:[-'.][A-Za-z]+)*\.?$")


def _is_dateline(tokens: Sequence[str]) -> bool:
    """``BRUSSELS 1996-08-22``, ``COMMACK , New York 1996-08-21``: where a Reuters story's body starts."""
    return 1 <= len(tokens) <= 8 and bool(_DATE.match(tokens[-1]))


def _is_byline(tokens: Sequence[str]) -> bool:
    """``Peter Blackburn``: a reporter's name between a headline and its dateline.

    Headlines end in a full stop and body sentences are longer; a byline is two
    to four capitalised names with nothing else.
    """
    return 2 <= len(tokens) <= 4 and all(_NAME.match(t) for t in tokens)


def infer_documents(sentences: Sequence[Sentence]) -> list[Sentence]:
    """Sentences with ``document`` set from Reuters datelines, for copies of CoNLL-2003 without ``-DOCSTART-``.

    Document context needs document boundaries, and this project's CoNLL-2003
    train and dev files lost theirs (see ``../shared/data/conll2003/SOURCE.md``).
    Nearly every Reuters story opens with a headline, sometimes a byline, then
    a dateline (``LONDON 1996-08-30``), so a document is taken to start at the
    headline before each dateline. A wrong boundary costs little: it only
    changes which neighbouring words a sentence reads as unlabelled context.
    Files that already have markers, and files with no dateline at all (not
    Reuters news: their sentences are not known to belong together), are
    returned unchanged.
    """
    datelines = [i for i, sent in enumerate(sentences) if i > 0 and _is_dateline(sent.tokens)]
    if not datelines or any(s.document is not None for s in sentences):
        return list(sentences)
    starts = [0]
    for i in datelines:
        sent = sentences[i]
        start = i - 1  # the headline
        if len(sent.tokens) == 1 and start - 1 >= starts[-1]:
            start -= 1  # a bare date after its place (``MONTGOMERY , Ala .``), which the file split off
        if start - 1 >= starts[-1] and _is_byline(sentences[start].tokens):
            start -= 1  # headline, byline, dateline
        if start > starts[-1]:
            starts.append(start)
    ends = starts[1:] + [len(sentences)]
    return [
        Sentence(sent.tokens, sent.tags, sent.source, sent.line, document)
        for document, (a, b) in enumerate(zip(starts, ends))
        for sent in sentences[a:b]
    ]


def format_documents(sentences: Sequence[Sentence]) -> str:
    """Two-column CoNLL text (``token tag``), a ``-DOCSTART- O`` line opening each known document."""
    out: list[str] = []
    document: int | None = None
    for sent in sentences:
        if sent.document is not None and sent.document != document:
            out.append(f"{DOCSTART} O\n\n")
            document = sent.document
        out.append("".join(f"{token} {tag}\n" for token, tag in zip(sent.tokens, sent.tags)) + "\n")
    return "".join(out)


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
