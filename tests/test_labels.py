"""Label schemes: conversion, validation, repair, label maps."""

from __future__ import annotations

import pytest

from ner_core.labels import (
    InvalidTagError,
    LabelMap,
    UnknownLabelError,
    convert_scheme,
    find_invalid,
    is_valid,
    label_list,
    labels_from_sequences,
    repair,
    split_tag,
)


def test_split_tag():
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("O") == ("O", None)
    assert split_tag("I-creative-work") == ("I", "creative-work")
    for bad in ("", "X-PER", "B-", "PER"):
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
