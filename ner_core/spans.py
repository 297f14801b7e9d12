"""Entity spans from IOB labels, as token ranges or character offsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ner_core.labels import entity_spans
from ner_core.text import Word


@dataclass(frozen=True)
class Span:
    """An entity over tokens ``[start, end)``."""

    type: str
    start: int
    end: int


def extract_spans(tags: Sequence[str], scheme: str = "IOB2") -> list[Span]:
    """Entities read leniently (conlleval / seqeval default): ``O I-PER`` still yields a PER."""
    return [Span(t, s, e) for t, s, e in entity_spans(tags, scheme)]


def char_spans(spans: Sequence[Span], words: Sequence[Word], text: str) -> list[dict]:
    """Spans as character offsets into ``text``; ``text[start:end]`` is the entity."""
    out = []
    for span in spans:
        start, end = words[span.start].start, words[span.end - 1].end
        out.append({"type": span.type, "start": start, "end": end, "text": text[start:end]})
    return out


def token_spans(spans: Sequence[Span], tokens: Sequence[str]) -> list[dict]:
    """Spans as token indices ``[start, end)`` for pre-split input."""
    return [
        {"type": s.type, "start": s.start, "end": s.end, "text": " ".join(tokens[s.start : s.end])} for s in spans
    ]
