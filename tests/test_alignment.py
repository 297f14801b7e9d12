"""Word/subword alignment and sliding windows on the real MiniLM tokenizer."""

from __future__ import annotations

import pytest

from ner_core.alignment import IGNORE_INDEX, encode_batch, encode_words, merge_window_predictions, pad_windows


def _first_subword_labels(window):
    return [(w, lab) for w, lab in zip(window.word_ids, window.labels) if lab != IGNORE_INDEX]


def test_labels_on_first_subword_only(tokenizer):
    words = ["Antidisestablishmentarianism", "in", "Zürich"]
    (window,) = encode_words(tokenizer, words, [1, 0, 2], max_length=64)
    assert window.input_ids[0] == tokenizer.cls_token_id and window.input_ids[-1] == tokenizer.sep_token_id
    assert window.word_ids.count(0) > 3  # many subwords
    assert _first_subword_labels(window) == [(0, 1), (1, 0), (2, 2)]
    assert len(window.labels) == len(window.input_ids) == len(window.attention_mask)


def test_empty_and_single_word(tokenizer):
    assert encode_words(tokenizer, [], [], max_length=16) == []
    assert merge_window_predictions([], [], 0) == []
    (window,) = encode_words(tokenizer, ["Paris"], [3], max_length=16)
    assert merge_window_predictions([window], [[9, 3, 9]], 1) == [3]


def test_words_the_tokenizer_drops_become_unk(tokenizer):
    words = ["Paris", "\u200b", "\u0301", "France"]
    assert tokenizer(words, is_split_into_words=True, add_special_tokens=False).word_ids() .count(1) == 0
    (window,) = encode_words(tokenizer, words, [1, 0, 0, 1], max_length=16)
    assert [w for w, _ in _first_subword_labels(window)] == [0, 1, 2, 3]
    assert window.input_ids[window.word_ids.index(1)] == tokenizer.unk_token_id
    assert merge_window_predictions([window], [window.labels], 4) == [1, 0, 0, 1]


def test_unicode_words(tokenizer):
    words = ["Café", "東京", "🙂", "e\u0301"]
    (window,) = encode_words(tokenizer, words, [1, 2, 0, 1], max_length=32)
    assert merge_window_predictions([window], [window.labels], 4) == [1, 2, 0, 1]


def test_long_document_windows_keep_every_word(tokenizer):
    words = [f"word{i}" if i % 7 else "internationalization" for i in range(300)]
    labels = [i % 5 for i in range(300)]
    windows = encode_words(tokenizer, words, labels, max_length=32, stride=8)
    assert len(windows) > 10
    assert all(len(w.input_ids) <= 32 for w in windows)
    # consecutive windows overlap, and never start inside a word
    for prev, nxt in zip(windows, windows[1:]):
        assert nxt.first_word < prev.end_word
        assert nxt.first_word > prev.first_word
    # predictions equal to the gold labels give back the gold labels, one per word
    assert merge_window_predictions(windows, [w.labels for w in windows], 300) == labels


def test_merge_prefers_the_window_with_most_context(tokenizer):
    words = [f"w{i}" for i in range(40)]
    windows = encode_words(tokenizer, words, max_length=22, stride=10)
    # mark each window's predictions with its index: the middle of an overlap picks the later window
    preds = [[k] * len(w.input_ids) for k, w in enumerate(windows)]
    merged = merge_window_predictions(windows, preds, 40)
    assert merged[0] == 0 and merged[-1] == len(windows) - 1
    assert merged == sorted(merged)


def test_word_longer_than_window_is_truncated_not_dropped(tokenizer):
    words = ["a", "x" * 200 + "internationalization" * 10, "b"]
    windows = encode_words(tokenizer, words, [1, 2, 1], max_length=12, stride=2)
    assert all(len(w.input_ids) <= 12 for w in windows)
    assert merge_window_predictions(windows, [w.labels for w in windows], 3) == [1, 2, 1]


def test_batch_matches_single_and_validates(tokenizer):
    docs = [["EU", "rejects", "German", "call"], [], ["Peter"]]
    batched = encode_batch(tokenizer, docs, max_length=16)
    assert [len(w) for w in batched] == [1, 0, 1]
    assert batched[0][0].input_ids == encode_words(tokenizer, docs[0], max_length=16)[0].input_ids
    with pytest.raises(ValueError, match="stride"):
        encode_words(tokenizer, ["a"], max_length=8, stride=-1)
    # a stride larger than the window is capped at half a window, so windows still advance
    long_doc = [f"w{i}" for i in range(50)]
    assert merge_window_predictions(
        encode_words(tokenizer, long_doc, list(range(50)), max_length=8, stride=100),
        [w.labels for w in encode_words(tokenizer, long_doc, list(range(50)), max_length=8, stride=100)],
        50,
    ) == list(range(50))
    with pytest.raises(ValueError, match="document 0: 2 words but 1 labels"):
        encode_batch(tokenizer, [["a", "b"]], [[0]])


def test_pad_windows(tokenizer):
    windows = [encode_words(tokenizer, ["a"], [1])[0], encode_words(tokenizer, ["a", "b", "c"], [1, 0, 1])[0]]
    batch = pad_windows(windows, tokenizer.pad_token_id, pad_to_multiple_of=8)
    assert [len(r) for r in batch["input_ids"]] == [8, 8]
    assert batch["attention_mask"][0] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["labels"][0][3:] == [IGNORE_INDEX] * 5
