"""Label schemes: conversion, validation, repair, label maps."""

from __future__ import annotations

import pytest

from ner_core.labels import (
    InvalidTagError,
    LabelMap,
    LabelMismatchError,
    UnknownLabelError,
    convert_scheme,
    entity_spans,
    find_invalid,
    is_default_label_names,
    is_valid,
    label_list,
    labels_from_sequences,
    repair,
    resolve_head_labels,
    split_tag,
)


def test_split_tag():
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("O") == ("O", None)
    assert split_tag("I-creative-work") == ("I", "creative-work")
    for bad in ("", "X-PER", "B-", "PER", "X"):
        with pytest.raises(InvalidTagError):
            split_tag(bad)


def test_iob1_to_iob2_reads_like_conlleval():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert convert_scheme(iob1, "IOB1", "IOB2") == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "I-ORG"]


def test_iob2_iobes_round_trip():
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-LOC", "B-ORG"]
    iobes = convert_scheme(iob2, "IOB2", "IOBES")
    assert iobes == ["B-PER", "E-PER", "O", "S-LOC", "B-LOC", "I-LOC", "E-LOC", "S-ORG"]
    assert convert_scheme(iobes, "IOBES", "IOB2") == iob2
    assert convert_scheme(iob2, "IOB2", "IOB1") == ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-LOC", "I-ORG"]
    assert convert_scheme(convert_scheme(iob2, "IOB2", "IOB1"), "IOB1", "IOB2") == iob2


def test_find_invalid_and_repair():
    bad = ["O", "I-PER", "B-LOC", "I-PER"]
    assert [i for i, _ in find_invalid(bad, "IOB2")] == [1, 3]
    assert repair(bad, "IOB2") == ["O", "B-PER", "B-LOC", "B-PER"]
    assert is_valid(repair(bad, "IOB2"), "IOB2")
    assert find_invalid(["B-PER", "I-PER"], "IOBES")  # never closed
    assert repair(["B-PER", "I-PER"], "IOBES") == ["B-PER", "E-PER"]
    assert find_invalid(["S-LOC", "B-PER", "E-PER"], "IOBES") == []
    assert find_invalid(["E-PER"], "IOBES")[0][0] == 0


def test_edge_sequences():
    assert convert_scheme([], "IOB2", "IOBES") == []
    assert repair(["I-X"], "IOB2") == ["B-X"]
    assert find_invalid([], "IOB2") == []


def test_label_lists_and_map():
    assert label_list(["PER", "LOC"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert labels_from_sequences([["B-MISC", "O"], ["B-PER"]]) == ["O", "B-MISC", "I-MISC", "B-PER", "I-PER"]
    assert label_list(["PER"], "IOBES") == ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    labels = LabelMap(("O", "B-PER", "I-PER"))
    assert labels.encode(["B-PER", "O"]) == [1, 0]
    assert labels.decode([2, 0]) == ["I-PER", "O"]
    assert labels.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
    assert labels.entity_types == ["PER"]
    assert LabelMap.from_id2label({"1": "B-PER", "0": "O", "2": "I-PER"}) == labels
    with pytest.raises(UnknownLabelError, match="B-LOC"):
        labels.encode(["B-LOC"])
    with pytest.raises(ValueError, match="duplicate"):
        LabelMap(("O", "O"))
    with pytest.raises(ValueError, match="no 'O'"):
        LabelMap(("B-PER",))
    with pytest.raises(ValueError, match="0..1"):
        LabelMap.from_id2label({0: "O", 2: "B-PER"})


def test_untyped_iob_tags_are_entities_without_a_type():
    """Plain B/I/O data (no types): entities of type "", in every scheme."""
    assert split_tag("B") == ("B", "") and split_tag("I") == ("I", "") and split_tag("O") == ("O", None)
    assert entity_spans(["B", "I", "O", "B", "B"]) == [("", 0, 2), ("", 3, 4), ("", 4, 5)]
    assert convert_scheme(["I", "I", "O", "I", "B"], "IOB1", "IOB2") == ["B", "I", "O", "B", "B"]
    assert convert_scheme(["B", "I", "O", "B"], "IOB2", "IOBES") == ["B", "E", "O", "S"]
    assert find_invalid(["O", "I"], "IOB2") == [(1, "I after O does not continue an entity (expected B)")]
    assert repair(["O", "I", "I"]) == ["O", "B", "I"]
    assert label_list([""]) == ["O", "B", "I"]
    assert labels_from_sequences([["O", "B", "I", "O"]]) == ["O", "B", "I"]
    assert labels_from_sequences([["S", "O"]], "IOBES") == ["O", "B", "I", "E", "S"]
    assert LabelMap(("O", "B", "I")).entity_types == [""]


def test_untyped_tags_score_at_entity_level():
    from ner_core.metrics import evaluate_tags

    result = evaluate_tags([["B", "I", "O", "B"]], [["B", "I", "O", "O"]])
    assert (result["precision"], result["recall"], result["support"]) == (1.0, 0.5, 2)


def test_a_head_saved_without_label_names_takes_the_datas_names():
    """run_ner.py's convention: LABEL_0..2 on a 3-way head become O, B, I (label_list order)."""
    unnamed = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert is_default_label_names(unnamed) and not is_default_label_names({0: "O", 1: "B", 2: "I"})
    assert resolve_head_labels(unnamed, ["O", "B", "I"], "decoder d").labels == ("O", "B", "I")
    with pytest.raises(LabelMismatchError, match=r"decoder d has 3 unnamed outputs .* training data has 9 labels"):
        resolve_head_labels(unnamed, label_list(["LOC", "MISC", "ORG", "PER"]), "decoder d")


def test_a_named_head_keeps_its_mapping_and_must_match_the_data():
    saved = {0: "B", 1: "I", 2: "O"}
    assert resolve_head_labels(saved, ["O", "B", "I"], "decoder d").labels == ("B", "I", "O")
    with pytest.raises(LabelMismatchError, match=r"predicts labels \['B', 'I', 'O'\] but the training data has labels \['B-PER', 'I-PER', 'O'\]"):
        resolve_head_labels(saved, ["O", "B-PER", "I-PER"], "decoder d")
