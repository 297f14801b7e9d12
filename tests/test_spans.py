"""Entity spans from labels, as token ranges and character offsets."""

from __future__ import annotations

from ner_core.spans import Span, char_spans, extract_spans, token_spans
from ner_core.text import split_words


def test_extract_spans_lenient_like_conlleval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    assert extract_spans(tags) == [Span("PER", 0, 2), Span("LOC", 3, 4), Span("LOC", 4, 5), Span("ORG", 5, 6)]
    assert extract_spans(["S-PER", "B-LOC", "E-LOC"], "IOBES") == [Span("PER", 0, 1), Span("LOC", 1, 3)]
    assert extract_spans([]) == []
    assert extract_spans(["O"]) == []


def test_char_spans_slice_back_to_text():
    text = "Yesterday  Angela Merkel met Zürich's mayor."
    words = split_words(text)
    tags = ["O"] * len(words)
    tags[1:3] = ["B-PER", "I-PER"]
    tags[4] = "B-LOC"
    ents = char_spans(extract_spans(tags), words, text)
    assert ents == [
        {"type": "PER", "start": 11, "end": 24, "text": "Angela Merkel"},
        {"type": "LOC", "start": 29, "end": 35, "text": "Zürich"},
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in ents)


def test_token_spans():
    assert token_spans([Span("ORG", 1, 3)], ["the", "World", "Bank"]) == [
        {"type": "ORG", "start": 1, "end": 3, "text": "World Bank"}
    ]
