"""Splitting raw text into words while keeping character offsets.

Why not the tokenizer's own pre-tokenizer: tagging output must give entity
offsets into the caller's text, and labels one per *word* whatever the
model's subword vocabulary. Why these rules: a tagger trained on CoNLL-style
data (CoNLL-2003, Reuters, PTB-like tokenisation) has only ever seen those
tokens; cutting ``AL-AIN`` into ``AL - AIN`` or ``U.S.`` into ``U . S .``
shows it words it never saw, and it tags them worse. The rules below were
read off the CoNLL-2003 train and dev files (never test):

- a run of letters/digits/underscore (Unicode ``\\w``) is one word, with any
  combining marks inside or after it (``"e\\u0301tat"``, Devanagari vowel signs);
- runs joined by ``-``, ``.``, ``&`` or an apostrophe stay one word (``AL-AIN``,
  ``1996-12-06``, ``2-1``, ``3.5``, ``S.AFRICA``, ``AT&T``, ``O'Brien``), and so
  do digits joined by ``,`` ``:`` or ``/`` (``1,000``, ``10:30``, ``1/2``);
  a number may carry a leading ``+`` or ``.`` (``+44``, ``.500``), and a hyphen
  before a space stays on its word (``multi- ethnic``, ``6- 3``);
- clitics split off PTB-style: ``'s 're 've 'll 'm 'd`` (``Zürich's`` ->
  ``Zürich 's``) and ``n't`` (``don't`` -> ``do n't``);
- a period after an abbreviation stays on it (``U.S.``, ``M.``, ``a.m.``,
  ``Inc.``, ``vs.``) and so does a period after a list number at the start of
  a line (``1. Michael Johnson``), except at the very end of the text, where
  CoNLL has the sentence's own full stop (``...in the U.S.`` -> ``U.S .``);
- currency prefixes stay one word (``US$``, ``C$``), and runs of ``-``, ``.``
  or ``*`` are one word (``--``, ``...``);
- every CJK ideograph and every Hiragana/Katakana character is a word of its
  own (BERT-style tokenizers split them anyway, and CJK has no spaces);
- every other visible character (punctuation, symbols, emoji) is a word of
  its own, with its combining marks (``"❤\\ufe0f"`` stays together);
- whitespace and invisible format/control characters (categories Zs, Zl, Zp,
  Cc, Cf: U+200B, U+200D, U+FEFF, soft hyphen...) only separate words, and a
  combining mark with no base (at the start, or after a separator) is dropped.

On the CoNLL-2003 sentences written back as text (``join_naturally``),
``split_words`` gives the original words back for 99.6% of train and 99.7%
of dev sentences (46-49% with one word per letter/digit run); the rest are
oddities such as ``Tel+44``, ``1=80`` or ```LOST``.

The character classes come from ``unicodedata`` once per process (about a
tenth of a second, on first use), then splitting is one compiled regex scan
plus a look at the character after a word followed by a period.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

# Han ideographs (BMP, compatibility, extensions B..I), Hiragana, Katakana (+ phonetic
# extensions, half-width forms). Hangul is left out: Korean separates words with spaces.
_CJK_RANGES = (
    (0x3040, 0x30FF),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFF9F),
    (0x20000, 0x2FA1F),
    (0x30000, 0x323AF),
)
# Combining marks and format characters live in planes 0, 1 and 14 only.
_SCANNED = (range(0x20000), range(0xE0000, 0xE1000))
_MARKS = ("Mn", "Mc", "Me")
_SEPARATORS = ("Cf", "Cc", "Zs", "Zl", "Zp")


def _char_class(code_points: list[int]) -> str:
    """Regex character-class body (ranges of ``\\U`` escapes) for sorted code points."""
    parts = []
    start = prev = None
    for cp in code_points + [-2]:
        if prev is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            parts.append(f"\\U{start:08x}" if start == prev else f"\\U{start:08x}-\\U{prev:08x}")
        start = prev = cp
    return "".join(parts)


# An apostrophe is ASCII ' or the typographic U+2019 that word processors put in "don’t".
_APOS = "['\u2019]"
# PTB clitics split off the word before them; case-insensitive ("'S" in headlines).
_CLITIC = rf"(?i:{_APOS}(?:s|re|ve|ll|m|d)|n{_APOS}t)(?!\w)"
# Words whose period is part of them (attested in CoNLL-2003 train/dev, plus the
# usual titles and months); case matters: "Dr." is an abbreviation, "dr." is not.
_ABBREVIATIONS = frozenset(
    "vs Inc Corp Ltd Co Bros St ST Mt Mr Mrs Ms Dr Jr Sr Gen Lt Col Capt Sgt Rev Prof Gov Sen Rep "
    "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Calif Fla Ariz Colo Conn Mass Mich Minn Okla Tenn Tex".split()
)
# Initials and dotted abbreviations whose last period is still to come: "M", "U.S", "a.m", "Iraq-U.N".
_DOTTED = re.compile(r"(?:[\w.]*-)?(?:[^\W\d_]\.)*[^\W\d_]")
# What may follow a sentence's full stop to the end of the text: spaces and closing quotes.
_SENTENCE_END = re.compile(r"[\s\"'\u201d]*\Z")


@cache
def _word_pattern() -> re.Pattern[str]:
    marks: list[int] = []
    separators: list[int] = []
    for block in _SCANNED:
        for cp in block:
            category = unicodedata.category(chr(cp))
            if category in _MARKS:
                marks.append(cp)
            elif category in _SEPARATORS:
                separators.append(cp)
    mark, sep = _char_class(marks), _char_class(separators)
    cjk = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in _CJK_RANGES)
    # Letters/digits with their marks, stopping before the "n't" of "don't" (PTB: "do n't").
    char = rf"[^\W{cjk}][{mark}]*"
    run = rf"{char}(?:(?!(?i:n{_APOS}t)(?!\w)){char})*"
    # What may sit between two runs of one word: "AL-AIN", "U.S.-led", "3.5", "AT&T",
    # "O'Brien" (but not the apostrophe of a clitic), and "1,000" "10:30" "1/2" between digits.
    joiner = rf"(?:\.?-|[.&]|(?!{_CLITIC}){_APOS}|(?<=\d)[,:/](?=\d))"
    return re.compile(
        rf"(?<=[\w.])(?P<clitic>{_CLITIC})"  # "n't", "'s"; also after "Corp."
        rf"|(?P<currency>[A-Z]{{1,3}}\$)"  # "US$", "C$"
        # "+44", ".500"; a hyphen before a space stays on its word: "multi- ethnic", "6- 3"
        rf"|(?P<word>(?:(?<![\w.])[+.](?=\d))?{run}(?:{joiner}{run})*(?:-(?!\S))?)"
        rf"|[{cjk}][{mark}]*"  # one ideograph / kana
        rf"|-{{2,}}|\.{{2,}}|\*{{2,}}"  # "--", "...", "**"
        rf"|[^\s\w{sep}{mark}][{mark}]*"  # one punctuation mark, symbol or emoji
    )


@dataclass(frozen=True, slots=True)
class Word:
    """A word and where it sits: ``original[start:end] == text``."""

    text: str
    start: int
    end: int


def _keeps_period(text: str, start: int, end: int) -> bool:
    """Whether the ``.`` at ``text[end]`` belongs to the word ``text[start:end]``.

    It does after an abbreviation or initial (``U.S.``, ``M.``, ``Inc.``) and
    after a list number opening a line (``1. Michael Johnson``), but never at
    the end of the text: there it is the sentence's full stop, which CoNLL
    writes as a token of its own (``U.S .``). Nor before more periods: ``...``
    is a token.
    """
    after = end + 1
    if text.startswith(".", after) or _SENTENCE_END.match(text, after):
        return False
    word = text[start:end]
    if word in _ABBREVIATIONS or _DOTTED.fullmatch(word):
        return True
    line_start = text.rfind("\n", 0, start) + 1
    return len(word) <= 3 and word.isdigit() and text[after].isspace() and not text[line_start:start].strip()


def split_words(text: str) -> list[Word]:
    """Words of ``text`` with offsets: ``text[w.start:w.end] == w.text`` for every word."""
    words: list[Word] = []
    taken = 0  # end of the last word: a period it took is also the scan's next match, skipped
    for match in _word_pattern().finditer(text):
        start, end = match.span()
        if start < taken:
            continue
        if match.lastgroup == "word" and text.startswith(".", end) and _keeps_period(text, start, end):
            end += 1
        words.append(Word(text[start:end], start, end))
        taken = end
    return words


def join_words(words: Sequence[str]) -> tuple[str, list[Word]]:
    """Pre-split tokens joined with single spaces, with each token's offsets in the joined text.

    The inverse of ``split_words`` for input that arrives already tokenised
    (CoNLL files, benchmarks): entity spans can then be given as characters too.
    """
    out: list[Word] = []
    pos = 0
    for w in words:
        out.append(Word(w, pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), out


# Tokens written against the word before them ("Paris.", "don't", "5%"), and after which
# the next word follows directly ("(AP", "$5", "US$5"). Clitics and "..." attach left too.
_ATTACH_LEFT = frozenset(".,;:!?)]}%")
_ATTACH_RIGHT = frozenset("([{$")
_ATTACH_LEFT_PATTERN = re.compile(rf"{_CLITIC}|\.{{2,}}")


def join_naturally(words: Sequence[str]) -> tuple[str, list[Word]]:
    """Pre-split tokens written back as a person would type them, with each token's offsets.

    ``["(", "AP", ")", "U.S.", "officials", "do", "n't", "say", "."]`` becomes
    ``"(AP) U.S. officials don't say."``: no space before closing punctuation,
    clitics and a closing quote, none after an opening bracket, quote or ``$``;
    a lone ``'`` after a word ending in ``s`` is the plural possessive
    (``Farmers' Union``). Straight double quotes alternate open/close.

    Used to measure the tagger on raw text against its own training data
    (``benchmarks/raw_text_f1.py``): ``split_words`` of the result should give
    the tokens back.
    """
    out: list[Word] = []
    parts: list[str] = []
    pos = 0
    quote_open = False
    glue_next = True  # no space before the first word
    for w in words:
        glue = glue_next or w in _ATTACH_LEFT or bool(_ATTACH_LEFT_PATTERN.fullmatch(w))
        glue_next = w in _ATTACH_RIGHT or w.endswith("$")
        if w == '"':
            glue = glue or quote_open  # a closing quote hugs the word before it
            glue_next = not quote_open  # an opening one hugs the word after it
            quote_open = not quote_open
        elif w == "'" and out and out[-1].text[-1:] in ("s", "S"):
            glue = True
        if not glue:
            parts.append(" ")
            pos += 1
        out.append(Word(w, pos, pos + len(w)))
        parts.append(w)
        pos += len(w)
    return "".join(parts), out
