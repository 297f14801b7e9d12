"""Word splitting keeps offsets for every kind of text."""

from __future__ import annotations

from ner_core.text import join_naturally, join_words, split_words


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


# The rules below are CoNLL-2003's tokenisation (read off its train and dev files): raw text
# split this way shows a CoNLL-trained tagger the words it was trained on.


def _split(text):
    words = split_words(text)
    assert all(text[w.start : w.end] == w.text for w in words)
    return _texts(words)


def test_conll_keeps_hyphenated_words_dates_and_scores_whole():
    assert _split("AL-AIN 1996-12-06") == ["AL-AIN", "1996-12-06"]
    assert _split("Bistrita beat Valletta 2-1 in a well-known one-day match.") == [
        "Bistrita", "beat", "Valletta", "2-1", "in", "a", "well-known", "one-day", "match", ".",
    ]  # fmt: skip
    assert _split("U.S.-led talks, a multi- ethnic society") == ["U.S.-led", "talks", ",", "a", "multi-", "ethnic", "society"]


def test_conll_keeps_numbers_with_their_inner_punctuation():
    assert _split("Profit rose 3.5 percent to 1,000 million at 10:30, up 1/2.") == [
        "Profit", "rose", "3.5", "percent", "to", "1,000", "million", "at", "10:30", ",", "up", "1/2", ".",
    ]  # fmt: skip
    assert _split("Tel +44 171, batting .500, 5%") == ["Tel", "+44", "171", ",", "batting", ".500", ",", "5", "%"]
    assert _split("C$5 or US$ 3") == ["C$", "5", "or", "US$", "3"]


def test_conll_keeps_abbreviations_and_initials_with_their_periods():
    assert _split("U.S. and U.N. officials met S.AFRICA's M. Atherton of Acme Inc. on Sept. 3 at 9 a.m.") == [
        "U.S.", "and", "U.N.", "officials", "met", "S.AFRICA", "'s", "M.", "Atherton", "of", "Acme", "Inc.",
        "on", "Sept.", "3", "at", "9", "a.m", ".",
    ]  # fmt: skip
    assert _split("Agassi (U.S.) vs. Sampras") == ["Agassi", "(", "U.S.", ")", "vs.", "Sampras"]


def test_conll_writes_the_full_stop_after_a_final_abbreviation_as_its_own_word():
    # CoNLL-2003: "... proposed link-up by the U.S ." -- the sentence's period, not the abbreviation's.
    assert _split("A link-up proposed by the U.S.") == ["A", "link-up", "proposed", "by", "the", "U.S", "."]
    assert _split('"We are with Acme Co."') == ['"', "We", "are", "with", "Acme", "Co", ".", '"']
    assert _split("It ended... Then") == ["It", "ended", "...", "Then"]


def test_conll_keeps_ampersand_names_whole():
    assert _split("AT&T and S&P 500") == ["AT&T", "and", "S&P", "500"]


def test_conll_splits_clitics_the_penn_treebank_way():
    assert _split("We don't think it's Zürich's, and I'm sure they're gone") == [
        "We", "do", "n't", "think", "it", "'s", "Zürich", "'s", ",", "and", "I", "'m", "sure", "they", "'re", "gone",
    ]  # fmt: skip
    assert _split("SILVA'S team can't win") == ["SILVA", "'S", "team", "ca", "n't", "win"]
    assert _split("O'Brien's d'Italia, Microsoft Corp.'s") == ["O'Brien", "'s", "d'Italia", ",", "Microsoft", "Corp.", "'s"]
    assert _split("don\u2019t") == ["do", "n\u2019t"]  # the typographic apostrophe too


def test_conll_splits_punctuation_off_word_edges_but_keeps_a_dash_whole():
    assert _split('"Hello, (AP) Paris." -- Reuters') == ['"', "Hello", ",", "(", "AP", ")", "Paris", ".", '"', "--", "Reuters"]
    assert _split("Farmers' Union") == ["Farmers", "'", "Union"]


def test_conll_keeps_the_period_of_a_list_number_opening_a_line():
    assert _split("1. Michael Johnson (U.S.) 19.32\n2. Frankie Fredericks") == [
        "1.", "Michael", "Johnson", "(", "U.S.", ")", "19.32", "2.", "Frankie", "Fredericks",
    ]  # fmt: skip
    assert _split("Shares rose 5. Then 6 fell.") == ["Shares", "rose", "5", ".", "Then", "6", "fell", "."]


def test_join_naturally_writes_tokens_as_text_that_splits_back():
    tokens = ["(", "AP", ")", "U.S.", "officials", "do", "n't", "say", '"', "no", '"', "to", "Farmers", "'", "C$", "5", "."]
    text, words = join_naturally(tokens)
    assert text == '(AP) U.S. officials don\'t say "no" to Farmers\' C$5.'
    assert [text[w.start : w.end] for w in words] == tokens
    assert _split(text) == tokens
