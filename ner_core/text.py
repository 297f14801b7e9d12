"""Splitting raw text into words while keeping character offsets.

Why not the tokenizer's pre-tokenizer: tagging output must give entity
offsets into the caller's text, and labels one per *word* whatever the
model's subword vocabulary. Rules, close to CoNLL's tokenisation:
runs of letters/digits (with their combining marks) are words; every other
visible character (punctuation, symbols, emoji) is a word of its own; each
CJK/kana character is a word (BERT vocabularies split them anyway);
whitespace and invisible format/control characters (U+200B, U+FEFF, ...)
only separate words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# CJK ideographs, kana, Hangul syllables are excluded from word runs so each stands alone.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f"
_WORD = re.compile(
    rf"(?:(?![{_CJK}])\w[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]*)+"
    rf"|[{_CJK}]"
    r"|[^\s\w]"
)


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cf", "Cc", "Zs", "Zl", "Zp", "Mn", "Me")


def split_words(text: str) -> list[Word]:
    """Words of ``text`` with offsets: ``text[w.start:w.end] == w.text``."""
    words = []
    for m in _WORD.finditer(text):
        token = m.group()
        if len(token) == 1 and _invisible(token):
            continue  # zero-width space, BOM, stray combining mark: separators, not words
        words.append(Word(token, m.start(), m.end()))
    return words


def join_words(words: Sequence[str]) -> tuple[str, list[Word]]:
    """Pre-split tokens joined with single spaces, with each token's offsets."""
    out, pos = [], 0
    for w in words:
        out.append(Word(w, pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), out
