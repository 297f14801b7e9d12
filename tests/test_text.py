"""Word splitting keeps offsets for every kind of text."""

from __future__ import annotations

from ner_core.text import join_words, split_words


def _texts(words):
    return [w.text for w in words]


def test_offsets_slice_back():
    text = "Angela Merkel visited Paris, France (2019)."
    words = split_words(text)
    assert _texts(words) == ["Angela", "Merkel", "visited", "Paris", ",", "France", "(", "2019", ")", "."]
    assert all(text[w.start : w.end] == w.text for w in words)


def test_unicode():
    text = "Café Zürich e\u0301tat 東京大学 🙂 ok"
    words = split_words(text)
    assert _texts(words) == ["Café", "Zürich", "e\u0301tat", "東", "京", "大", "学", "🙂", "ok"]
    assert all(text[w.start : w.end] == w.text for w in words)


def test_invisible_characters_separate_and_vanish():
    text = "\ufeffNew\u200bYork \u200d\u200b  \t\n"
    assert _texts(split_words(text)) == ["New", "York"]
    assert split_words("") == []
    assert split_words(" \u200b ") == []


def test_join_words_gives_offsets():
    text, words = join_words(["EU", "rejects", "German"])
    assert text == "EU rejects German"
    assert [(w.start, w.end) for w in words] == [(0, 2), (3, 10), (11, 17)]
    assert join_words([]) == ("", [])
