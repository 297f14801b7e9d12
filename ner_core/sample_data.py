"""A small synthetic labelled corpus the project generates instead of shipping.

Why: the demo and the tests need labelled sentences that exist on every
machine (real corpora have licences and live outside the repository). The
sentences are template-built with PER/ORG/LOC/MISC entities, deterministic
for a seed, in CoNLL-style IOB2, and easy enough that a briefly fine-tuned
model reaches a visible F1.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence

PEOPLE = [
    "Angela Merkel", "John Smith", "Maria Garcia", "Li Wei", "Ahmed Hassan", "Olga Petrova",
    "James Brown", "Yuki Tanaka", "Pierre Dubois", "Anna Kowalski", "Carlos Silva", "Emma Johnson",
]
ORGS = [
    "Reuters", "Siemens", "the United Nations", "Microsoft", "Toyota", "Deutsche Bank",
    "the World Bank", "Volkswagen", "Nestle", "the European Commission", "Google", "Airbus",
]
PLACES = [
    "Paris", "Berlin", "New York", "Tokyo", "Brazil", "Lagos", "Moscow", "Sydney",
    "Cairo", "Mexico City", "London", "Seoul",
]
MISC = ["French", "German", "Japanese", "Olympic", "Christmas", "Euro", "English", "World Cup"]
VERBS = ["visited", "met officials in", "spoke about", "opened an office in", "left", "praised"]
FILLERS = ["on Monday", "last week", "in March", "again", "this year", "yesterday"]

_TEMPLATES = [
    ("PER", "visited", "LOC", "FILL"),
    ("ORG", "opened an office in", "LOC", "FILL"),
    ("PER", "of", "ORG", "spoke about the", "MISC", "market"),
    ("The", "MISC", "delegation", "met", "PER", "in", "LOC"),
    ("ORG", "said", "PER", "will", "lead", "the", "LOC", "team"),
    ("Prices", "rose", "FILL"),
]


def _labelled(phrase: str, etype: str | None) -> list[tuple[str, str]]:
    words = phrase.split()
    if etype is None:
        return [(w, "O") for w in words]
    # "the United Nations": a leading lowercase article stays outside the entity
    out: list[tuple[str, str]] = []
    if words[0] == "the":
        out.append(("the", "O"))
        words = words[1:]
    out.extend((w, ("B-" if i == 0 else "I-") + etype) for i, w in enumerate(words))
    return out


def make_sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``n`` labelled sentences as (tokens, IOB2 tags), the same for the same seed."""
    rng = random.Random(seed)
    pools = {"PER": PEOPLE, "ORG": ORGS, "LOC": PLACES, "MISC": MISC, "FILL": FILLERS}
    sentences = []
    for _ in range(n):
        pairs: list[tuple[str, str]] = []
        for slot in rng.choice(_TEMPLATES):
            if slot == "FILL":
                pairs += _labelled(rng.choice(FILLERS), None)
            elif slot in pools:
                pairs += _labelled(rng.choice(pools[slot]), slot)
            else:
                pairs += _labelled(slot, None)
        pairs.append((".", "O"))
        sentences.append(([t for t, _ in pairs], [g for _, g in pairs]))
    return sentences


def to_conll(sentences: Iterable[tuple[Sequence[str], Sequence[str]]]) -> str:
    """CoNLL two-column text (``token TAG``), a blank line after each sentence."""
    blocks = ["\n".join(f"{t} {g}" for t, g in zip(tokens, tags)) for tokens, tags in sentences]
    return "\n\n".join(blocks) + "\n"


def write_conll(path: str | os.PathLike, sentences: Iterable[tuple[Sequence[str], Sequence[str]]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(to_conll(sentences))


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Raw sentences (entities included) to tag: the labelled sentences joined back to text."""
    return [" ".join(tokens[:-1]) + "." for tokens, _ in make_sentences(n, seed)]
