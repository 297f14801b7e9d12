"""CoNLL column reading: sentences, -DOCSTART-, errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ner_core.conll import ConllFormatError, parse_conll_text, read_conll

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_sentences_docstart_and_columns(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("-DOCSTART- O\n\nEU B-ORG\nrejects O\n\n\nPeter B-PER\r\nBlackburn I-PER")
    sentences = read_conll(path)
    assert [s.tokens for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert [s.line for s in sentences] == [3, 7]
    assert sentences[0].source == str(path)


def test_tab_separated_and_column_choice():
    text = "Paris\tNNP\tB-LOC\nis\tVBZ\tO\n"
    assert parse_conll_text(text)[0].tags == ["B-LOC", "O"]
    assert parse_conll_text(text, token_column=0, tag_column=2)[0].tokens == ["Paris", "is"]
    with pytest.raises(ConllFormatError, match="malformed tag 'NNP'"):
        parse_conll_text(text, tag_column=1)


def test_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("EU B-ORG\nrejects O\n\nGerman B-MISC extra\n")
    with pytest.raises(ConllFormatError, match=r"bad.txt:4: expected 2 columns, found 3"):
        read_conll(path)
    path.write_text("EU B-ORG\nrejects BAD\n")
    with pytest.raises(ConllFormatError, match=r"bad.txt:2: malformed tag 'BAD'"):
        read_conll(path)
    path.write_text("\n\n")
    with pytest.raises(ConllFormatError, match="no sentences"):
        read_conll(path)
    path.write_bytes(b"EU B-ORG\n\xff\xfe O\n")
    with pytest.raises(ConllFormatError, match=r"bad.txt:2: cannot decode"):
        read_conll(path)
    path.write_text("onlyonecolumn\n")
    with pytest.raises(ConllFormatError, match=r":1: expected at least 2 columns"):
        read_conll(path)


@pytest.mark.parametrize("corpus,first", [("conll2003", "EU"), ("wnut17", "@paulwalk")])
def test_reads_shared_corpora_in_place(corpus, first):
    path = SHARED / corpus / "train.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    head = "".join(path.open(encoding="utf-8").readlines()[:200])
    sentences = parse_conll_text(head, str(path))
    assert sentences[0].tokens[0] == first
    assert all(len(s.tokens) == len(s.tags) for s in sentences)


def test_document_context_stays_inside_its_document():
    from ner_core.conll import document_contexts

    text = "-DOCSTART- O\n\nRain O\nfell O\n\nIn O\nParis B-LOC\n\n-DOCSTART- O\n\nSun O\n"
    sentences = parse_conll_text(text)
    assert [s.document for s in sentences] == [0, 0, 1]
    assert document_contexts(sentences, 5) == [([], ["In", "Paris"]), (["Rain", "fell"], []), ([], [])]
    assert document_contexts(sentences, 1) == [([], ["In"]), (["fell"], []), ([], [])]
    # no -DOCSTART- (e.g. WNUT posts): sentences are unrelated, so no context
    assert document_contexts(parse_conll_text("a O\n\nb O\n"), 5) == [([], []), ([], [])]


def test_documents_found_again_from_reuters_datelines():
    """A CoNLL-2003 copy without -DOCSTART- lines: each story starts at the headline before its dateline."""
    from ner_core.conll import format_documents, infer_documents

    stories = [
        "EU rejects German call to boycott British lamb .",
        "Peter Blackburn",  # byline: belongs to the story below it
        "BRUSSELS 1996-08-22",
        "The European Commission said on Thursday it disagreed .",
        "Rare Hendrix song draft sells for almost $ 17,000 .",
        "LONDON 1996-08-22",
        "A rare early draft was sold on Thursday .",
        "Kindercare says debt buy to hit Q1 results .",
        "MONTGOMERY , Ala .",  # a dateline the file split in two
        "1996-08-22",
        "Kindercare said it would buy back debt .",
    ]
    text = "\n".join("".join(f"{w} O\n" for w in s.split()) for s in stories)
    found = infer_documents(parse_conll_text(text))
    assert [s.document for s in found] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    # written back with -DOCSTART- lines, the file reads as the same documents, word for word
    again = parse_conll_text(format_documents(found))
    assert [(s.tokens, s.document) for s in again] == [(s.tokens, s.document) for s in found]
    # a file that marks its documents keeps its own boundaries
    marked = parse_conll_text("-DOCSTART- O\n\n" + text)
    assert infer_documents(marked) == marked
    assert {s.document for s in marked} == {0}
    # no dateline anywhere (WNUT's posts): no documents, rather than one that holds the whole file
    assert {s.document for s in infer_documents(parse_conll_text("a O\n\nb O\n"))} == {None}
