"""seqeval entity-level metrics."""

from __future__ import annotations

import pytest

from ner_core.metrics import evaluate_tags, format_report


def test_strict_entity_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-ORG"]]
    m = evaluate_tags(gold, pred)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["support"] == 3
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["PER"]["f1"] == 1.0
    assert "overall" in format_report(m)


def test_strict_rejects_invalid_prediction_that_lenient_accepts():
    gold = [["B-PER", "I-PER"]]
    pred = [["I-PER", "I-PER"]]
    assert evaluate_tags(gold, pred)["f1"] == 0.0
    assert evaluate_tags(gold, pred, mode=None)["f1"] == 1.0


def test_length_mismatch_names_sentence():
    with pytest.raises(ValueError, match="sentence 1"):
        evaluate_tags([["O"], ["O", "O"]], [["O"], ["O"]])
    assert evaluate_tags([], [])["f1"] == 0.0
