"""Word/subword alignment and sliding windows on the real MiniLM tokenizer."""

from __future__ import annotations

import pytest

from ner_core.alignment import IGNORE_INDEX, encode_batch, encode_words, merge_window_predictions, pad_windows, padded_length


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
    # an overlap as long as the window is refused, not silently shortened: what is asked is what runs
    long_doc = [f"w{i}" for i in range(50)]
    with pytest.raises(ValueError, match="stride 100 must be >= 0 and shorter than the window"):
        encode_words(tokenizer, long_doc, list(range(50)), max_length=8, stride=100)
    # the default overlap fits any window, so windows still advance
    windows = encode_words(tokenizer, long_doc, list(range(50)), max_length=8)
    assert merge_window_predictions(windows, [w.labels for w in windows], 50) == list(range(50))
    with pytest.raises(ValueError, match="document 0: 2 words but 1 labels"):
        encode_batch(tokenizer, [["a", "b"]], [[0]])


def test_pad_windows(tokenizer):
    windows = [encode_words(tokenizer, ["a"], [1])[0], encode_words(tokenizer, ["a", "b", "c"], [1, 0, 1])[0]]
    batch = pad_windows(windows, tokenizer.pad_token_id)
    assert [len(r) for r in batch["input_ids"]] == [5, 5]
    assert batch["attention_mask"][0] == [1, 1, 1, 0, 0]
    assert batch["labels"][0][3:] == [IGNORE_INDEX] * 2
    # bf16 on CPU: a few lengths per doubling, so a long run batches in a few dozen shapes
    assert [len(r) for r in pad_windows(windows, tokenizer.pad_token_id, lengths_per_octave=8)["input_ids"]] == [5, 5]


def test_padded_lengths_come_in_a_few_shapes_per_doubling_and_pad_little():
    exact = range(1, 513)
    rounded = [padded_length(n, lengths_per_octave=8) for n in exact]
    assert rounded[:16] == list(range(1, 17))  # short windows stay exact
    assert [padded_length(n, lengths_per_octave=8) for n in (17, 23, 33, 100, 128, 129)] == [18, 24, 36, 104, 128, 144]
    assert all(r >= n and (r - n) <= n / 8 for n, r in zip(exact, rounded))  # never more than an eighth of padding
    assert len(set(rounded)) == 16 + 8 * 5  # 1..16, then 8 lengths in each of 17-32, 33-64, ..., 257-512
    assert padded_length(23) == 23  # exact without a rounding


def test_document_context_is_read_but_never_labelled(tokenizer):
    """FLERT-style context: neighbouring sentences fill the window around the sentence, label-free."""
    before, words, after = ["We", "flew", "to", "France", "."], ["Paris", "is", "nice"], ["It", "rained", "."]
    (plain,) = encode_words(tokenizer, words, [1, 0, 0], max_length=32)
    (window,) = encode_batch(tokenizer, [words], [[1, 0, 0]], max_length=32, contexts=[(before, after)], context_length=4)[0:1][0]
    tokens = tokenizer.convert_ids_to_tokens(window.input_ids)
    assert tokens == ["[CLS]", "flew", "to", "france", ".", "paris", "is", "nice", "it", "rained", ".", "[SEP]"]
    # the sentence's own words keep their ids and labels; context has neither
    assert _first_subword_labels(window) == _first_subword_labels(plain) == [(0, 1), (1, 0), (2, 0)]
    assert [w for w, t in zip(window.word_ids, tokens) if t in ("flew", "rained")] == [None, None]
    # no context asked for, or none given: the plain window
    assert encode_batch(tokenizer, [words], [[1, 0, 0]], max_length=32, contexts=[(before, after)])[0] == [plain]
    assert encode_batch(tokenizer, [words], [[1, 0, 0]], max_length=32, contexts=[None], context_length=4)[0] == [plain]


def test_document_context_only_takes_spare_room_and_only_flanks_the_sentence(tokenizer):
    """A long sentence's own words come first: context fills what its first/last windows leave."""
    words = [f"w{i}" for i in range(25)]  # 2 subwords each: 50, in windows of 22
    context = (["left"] * 50, ["right"] * 50)
    windows = encode_batch(tokenizer, [words], max_length=24, stride=4, contexts=[context], context_length=40)[0]
    plain = encode_batch(tokenizer, [words], max_length=24, stride=4)[0]
    assert [(w.first_word, w.end_word) for w in windows] == [(w.first_word, w.end_word) for w in plain]
    assert len(windows) > 2 and all(len(w.input_ids) <= 24 for w in windows)
    left_id, right_id = tokenizer.convert_tokens_to_ids(["left", "right"])
    assert windows[0].input_ids == plain[0].input_ids  # full: no room for context
    assert all(w.input_ids == p.input_ids for w, p in zip(windows[1:-1], plain[1:-1]))  # middle: never
    assert right_id in windows[-1].input_ids and left_id not in windows[-1].input_ids
    assert len(windows[-1].input_ids) == 24  # the spare room is used up
    # every word still predicted exactly once, from the sentence's own positions
    preds = [[k % 3 for k in range(len(w.input_ids))] for w in windows]
    assert len(merge_window_predictions(windows, preds, len(words))) == len(words)
