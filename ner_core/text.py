"""Splitting raw text into words while keeping character offsets.

Why not the tokenizer's own pre-tokenizer: tagging output must give entity
offsets into the caller's text, and labels one per *word* whatever the
model's subword vocabulary. The rules stay close to CoNLL's tokenisation:

- a run of letters/digits/underscore (Unicode ``\\w``) is one word, with any
  combining marks inside or after it (``"e\\u0301tat"``, Devanagari vowel signs);
- every CJK ideograph and every Hiragana/Katakana character is a word of its
  own (BERT-style tokenizers split them anyway, and CJK has no spaces);
- every other visible character (punctuation, symbols, emoji) is a word of
  its own, with its combining marks (``"❤\\ufe0f"`` stays together);
- whitespace and invisible format/control characters (categories Zs, Zl, Zp,
  Cc, Cf: U+200B, U+200D, U+FEFF, soft hyphen...) only separate words, and a
  combining mark with no base (at the start, or after a separator) is dropped.

The character classes come from ``unicodedata`` once per process (about a
tenth of a second, on first use), then splitting is one compiled regex scan.
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
    return re.compile(
        rf"(?:[^\W{cjk}][{mark}]*)+"  # letters/digits with their marks
        rf"|[{cjk}][{mark}]*"  # one ideograph / kana
        rf"|[^\s\w{sep}{mark}][{mark}]*"  # one punctuation mark, symbol or emoji
    )


@dataclass(frozen=True, slots=True)
class Word:
    """A word and where it sits: ``original[start:end] == text``."""

    text: str
    start: int
    end: int


def split_words(text: str) -> list[Word]:
    """Words of ``text`` with offsets: ``text[w.start:w.end] == w.text`` for every word."""
    return [Word(m.group(), m.start(), m.end()) for m in _word_pattern().finditer(text)]


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
