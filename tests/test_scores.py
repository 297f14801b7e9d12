"""Scores: every word's label probability, entity scores as the minimum of their words', a
``min_score`` that keeps labels and entities in agreement, and a temperature fitted on dev."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ner_core.calibration import entity_calibration, fit_temperature
from ner_core.decoding import LabelTable, decode_probabilities, labels_of, probabilities
from ner_core.documents import document_from_text, document_from_tokens
from ner_core.inference import InferenceSettings
from ner_core.labels import LabelMap, is_valid
from ner_core.predictor import Predictor, resolve_settings
from ner_core.tagger import build_tagger
from tests.conftest import CONLL_LABELS

LABELS = LabelMap(("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))


def one_hot(rows: list[tuple[int, float]]) -> np.ndarray:
    """Probabilities where each word puts ``p`` on its label and the rest evenly on the others."""
    out = np.zeros((len(rows), LABELS.num_labels), np.float32)
    for i, (label, p) in enumerate(rows):
        out[i] = (1 - p) / (LABELS.num_labels - 1)
        out[i, label] = p
    return out


def test_entity_score_is_the_lowest_of_its_words_and_repair_keeps_labels_valid():
    table = LabelTable.of(LABELS)
    # doc 0: "Anna Kowalski visited Paris": B-PER I-PER O B-LOC; doc 1 starts with I-LOC (repaired to B-LOC)
    probs = one_hot([(1, 0.9), (2, 0.6), (0, 0.99), (3, 0.8), (4, 0.7), (4, 0.95), (0, 0.9)])
    decoded = decode_probabilities(probs, np.array([0, 4, 7]), table)
    assert labels_of(decoded, table) == [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    assert decoded.scores.tolist() == pytest.approx([0.9, 0.6, 0.99, 0.8, 0.7, 0.95, 0.9])
    assert [table.types[t] for t in decoded.entity_type] == ["PER", "LOC", "LOC"]
    assert decoded.entity_doc.tolist() == [0, 0, 1]
    assert list(zip(decoded.entity_start.tolist(), decoded.entity_end.tolist())) == [(0, 2), (3, 4), (0, 2)]
    assert decoded.entity_score.tolist() == pytest.approx([0.6, 0.8, 0.7])


def test_min_score_drops_weak_entities_and_their_labels_together():
    table = LabelTable.of(LABELS)
    probs = one_hot([(1, 0.9), (2, 0.6), (0, 0.99), (3, 0.8)])
    decoded = decode_probabilities(probs, np.array([0, 4]), table, min_score=0.7)
    assert labels_of(decoded, table) == [["O", "O", "O", "B-LOC"]]
    assert decoded.entity_score.tolist() == pytest.approx([0.8])
    # the dropped words now say how sure the model is of O
    assert decoded.scores[:2].tolist() == pytest.approx([0.025, 0.1])


def test_temperature_fit_recovers_the_temperature_that_made_the_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20_000, 5)) * 4
    true_t = 2.5  # the labels follow softmax(logits / 2.5): the raw scores are overconfident
    p = probabilities(logits, true_t)
    gold = np.array([rng.choice(5, p=row / row.sum()) for row in p.astype(np.float64)])
    assert fit_temperature(logits, gold) == pytest.approx(true_t, rel=0.05)


def test_entity_calibration_bins_and_thresholds():
    table = LabelTable.of(LABELS)
    probs = one_hot([(1, 0.95), (0, 0.9), (3, 0.55), (0, 0.9)])  # PER right (0.95), LOC wrong (0.55)
    decoded = decode_probabilities(probs, np.array([0, 4]), table)
    calibration = entity_calibration([["B-PER", "O", "O", "O"]], decoded, table.types)
    assert calibration["entities"] == 2
    assert calibration["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)
    at = {row["threshold"]: row for row in calibration["thresholds"]}
    assert at[0.5]["precision"] == 0.5 and at[0.5]["recall"] == 1.0 and at[0.5]["kept"] == 1.0
    assert at[0.9]["precision"] == 1.0 and at[0.9]["kept"] == 0.5


def test_a_stride_as_long_as_the_window_is_refused_and_a_default_is_fitted():
    settings, notes = resolve_settings({"max_length": 128, "stride": 32}, specials=2, max_positions=64)
    assert (settings.max_length, settings.stride) == (64, 32)
    assert notes == ["max_length 128 is beyond the model's 64 positions: using 64"]
    settings, notes = resolve_settings({}, specials=2, max_positions=64)  # the default 64 does not fit 62
    assert (settings.max_length, settings.stride) == (64, 31) and "using 31" in notes[-1]
    with pytest.raises(ValueError, match="stride 62 is not shorter than the window"):
        resolve_settings({}, specials=2, max_positions=64, overrides={"stride": 62})


@pytest.fixture(scope="module")
def predictor(tiny_dirs, tokenizer):
    torch.manual_seed(0)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)))
    return Predictor(model, tokenizer, InferenceSettings(max_length=16, stride=4, batch_size=3, temperature=1.7))


def test_predicted_scores_are_probabilities_that_agree_with_labels_and_entities(predictor):
    docs = [document_from_text({"text": "Anna Kowalski of Volkswagen spoke in Berlin on Monday " * 6}, "text"), document_from_tokens({"t": ["EU", "rejects"]}, "t")]
    for min_score in (None, 0.2):
        for doc in predictor.tag_documents(docs, min_score=min_score):
            assert len(doc.labels) == len(doc.scores) == len(doc.tokens) and is_valid(doc.labels, "IOB2")
            assert all(0.0 <= s <= 1.0 for s in doc.scores)
            for e in doc.entities:
                assert min_score is None or e["score"] >= min_score
        words = predictor.tag_documents(docs[:1], min_score=min_score)[0]
        spans = [(e["start"], e["end"]) for e in words.entities]
        text = docs[0].text
        assert [text[a:b] for a, b in spans] == [e["text"] for e in words.entities]


def test_temperature_changes_scores_not_labels(predictor):
    words = [["Anna", "Kowalski", "visited", "Paris"], [f"w{i}" for i in range(30)]]
    hot = Predictor(predictor.model, predictor.tokenizer, InferenceSettings(max_length=16, stride=4, temperature=1.0))
    (a, pa_), (b, pb) = predictor.predict_arrays(words), hot.predict_arrays(words)
    assert a.label_ids.tolist() == b.label_ids.tolist()
    assert not np.allclose(pa_, pb)
    assert np.allclose(pa_.sum(-1), 1.0, atol=1e-5)


def test_a_crf_head_is_decoded_by_viterbi_with_its_marginals_as_scores(tiny_dirs, tokenizer):
    from ner_core.alignment import encode_batch
    from ner_core.crf import decode_words, word_start_mask

    torch.manual_seed(1)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)), head="crf").eval()
    with torch.no_grad():  # transitions large enough to matter in the path
        model.crf.transitions.normal_(0, 3.0)
    docs = [["Anna", "Kowalski", "visited", "Paris"], ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb"]]
    predictor = Predictor(model, tokenizer, InferenceSettings(max_length=32, stride=8))
    expected = []
    for words in docs:  # one window each: the CRF's own decoding of the plain forward pass
        (window,) = encode_batch(tokenizer, [words], max_length=32)[0:1][0]
        ids = torch.tensor([window.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        labels, _ = decode_words(model, logits, word_start_mask([window.word_ids], ids.shape[1]))
        expected.append([i for i in labels[0].tolist() if i >= 0])
    assert predictor.predict_ids(docs) == expected
    tagged = predictor.tag_documents([document_from_tokens({"t": d}, "t") for d in docs])
    assert all(is_valid(t.labels, "IOB2") and all(0 < s <= 1 for s in t.scores) for t in tagged)
