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


def test_confusion_matrix_counts_wrong_types_missed_and_spurious_entities():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O"], ["B-PER", "O"]]
    pred = [["B-ORG", "I-ORG", "O", "O"], ["B-ORG", "I-ORG", "O", "B-LOC"], ["B-PER", "O"]]
    m = evaluate_tags(gold, pred)
    c = m["confusion"]
    assert c["labels"] == ["LOC", "ORG", "PER", "(none)"]
    cell = {(g, p): n for g, row in zip(c["labels"], c["matrix"]) for p, n in zip(c["labels"], row) if n}
    assert cell == {
        ("PER", "ORG"): 1,  # right span, wrong type
        ("LOC", "(none)"): 1,  # missed
        ("ORG", "ORG"): 1,
        ("PER", "PER"): 1,
        ("(none)", "LOC"): 1,  # spurious
    }
    # the diagonal is the strict true positives, so it agrees with the per-type table
    for i, name in enumerate(c["labels"][:-1]):
        assert c["matrix"][i][i] == round(m["per_type"][name]["recall"] * m["per_type"][name]["support"])


def test_confusion_reads_entities_as_strictly_as_the_scores():
    # "I-PER I-PER" is no entity in strict IOB2: the gold PER counts as missed, nothing as spurious
    c = evaluate_tags([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])["confusion"]
    assert c == {"labels": ["PER", "(none)"], "matrix": [[0, 1], [0, 0]]}
    assert evaluate_tags([], [])["confusion"] == {"labels": ["(none)"], "matrix": [[0]]}
