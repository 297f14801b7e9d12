"""Word-case markers: an uncased tokenizer gets the capitalisation back as extra tokens."""

from __future__ import annotations

import pytest
import torch

from ner_core.alignment import IGNORE_INDEX, encode_words, merge_window_predictions
from ner_core.casing import TITLE, UPPER, case_marker_ids, word_case
from ner_core.inference import InferenceSettings
from ner_core.predictor import Predictor
from ner_core.labels import LabelMap
from ner_core.tagger import build_tagger, load_tagger, load_tokenizer, save_tagger
from tests.conftest import CONLL_LABELS


@pytest.mark.parametrize(
    "word,case",
    [
        ("Paris", TITLE), ("McDonald", TITLE), ("Smith-Jones", TITLE), ("A", TITLE), ("3M", TITLE), ("Über", TITLE),
        ("EU", UPPER), ("U.S.", UPPER), ("NASA's", TITLE), ("ÜBER", UPPER),
        ("paris", None), ("iPhone", None), ("1996", None), (",", None), ("東京", None), ("", None),
    ],
)  # fmt: skip
def test_word_case(word, case):
    assert word_case(word) == case


@pytest.fixture(scope="module")
def cased_tokenizer(minilm_path):
    return load_tokenizer(minilm_path, case_markers=True)


def test_markers_are_added_once_and_saved_with_the_tokenizer(minilm_path, cased_tokenizer, tmp_path):
    plain = load_tokenizer(minilm_path)
    assert case_marker_ids(plain) is None
    ids = case_marker_ids(cased_tokenizer)
    assert sorted(ids.values()) == [len(plain), len(plain) + 1]
    load_tokenizer(minilm_path, case_markers=True)  # adding again changes nothing
    assert len(cased_tokenizer) == len(plain) + 2
    cased_tokenizer.save_pretrained(tmp_path)
    assert case_marker_ids(load_tokenizer(tmp_path)) == ids


def test_marker_precedes_its_word_and_takes_no_label(cased_tokenizer):
    words = ["EU", "rejects", "German", "call", "Übermensch"]
    (window,) = encode_words(cased_tokenizer, words, [5, 0, 3, 0, 7], max_length=32)
    tokens = cased_tokenizer.convert_ids_to_tokens(window.input_ids)
    assert tokens[:6] == ["[CLS]", UPPER, "eu", "rejects", TITLE, "german"]
    assert tokens[tokens.index("call") + 1] == TITLE
    for pos, tok in enumerate(tokens):
        if tok in (TITLE, UPPER):
            assert window.word_ids[pos] is None and window.labels[pos] == IGNORE_INDEX
    labelled = [(w, lab) for w, lab in zip(window.word_ids, window.labels) if lab != IGNORE_INDEX]
    assert labelled == [(0, 5), (1, 0), (2, 3), (3, 0), (4, 7)]
    assert merge_window_predictions([window], [window.labels], 5) == [5, 0, 3, 0, 7]


def test_windows_count_markers_and_keep_every_word(cased_tokenizer):
    words = [("Word" if i % 3 else "WORD") + str(i) for i in range(200)] + ["A" * 300]
    labels = [i % 4 for i in range(201)]
    for max_length in (3, 4, 9, 32):  # 3: room for one token, so no marker
        windows = encode_words(cased_tokenizer, words, labels, max_length=max_length, stride=4 if max_length > 6 else None)
        assert all(len(w.input_ids) <= max_length for w in windows)
        assert merge_window_predictions(windows, [w.labels for w in windows], len(words)) == labels


def test_tagger_with_markers_round_trips(tiny_dirs, cased_tokenizer, tmp_path):
    """Both architectures grow their embeddings for the markers; the saved directory tags the same."""
    labels = LabelMap(tuple(CONLL_LABELS))
    docs = [["Alice", "met", "the", "EU", "delegation", "in", "Zürich"], ["nothing", "here"]]
    for arch, decoder in (("encoder-decoder", tiny_dirs["bert"]), ("encoder", None)):
        torch.manual_seed(0)
        model = build_tagger(arch, tiny_dirs["distilbert"], decoder, labels=labels, vocab_size=len(cased_tokenizer))
        embeddings = [model.encoder, model.decoder] if arch == "encoder-decoder" else [model]
        assert [m.get_input_embeddings().num_embeddings for m in embeddings] == [len(cased_tokenizer)] * len(embeddings)
        before = Predictor(model, cased_tokenizer, InferenceSettings(max_length=16, stride=4)).predict_ids(docs)
        save_tagger(model, cased_tokenizer, tmp_path / arch)
        reloaded = Predictor(load_tagger(tmp_path / arch), load_tokenizer(tmp_path / arch), InferenceSettings(max_length=16, stride=4))
        assert case_marker_ids(reloaded.tokenizer) is not None
        assert reloaded.predict_ids(docs) == before
