"""Word-case markers: give an uncased tokenizer back the capitalisation it throws away.

Why: uncased encoders (all-MiniLM-L6-v2, bert-base-uncased, ...) lowercase
every word, yet capitalisation is one of the strongest cues for names
("Bush" vs "bush", "US" vs "us"). With markers on, each word whose case
carries information is preceded by one extra token, ``[CASE_TITLE]``
("Paris", "McDonald", "I") or ``[CASE_UPPER]`` ("EU", "NASA"); lowercase
words and words without letters get none.

The markers are special tokens added to the tokenizer (the model's embedding
matrix grows by two rows), and the tokenizer is saved with the model, so
``encode_batch`` finds them there: training, evaluation and bulk tagging all
encode the same way without a separate setting to keep in sync. A marker
takes no label (-100) and carries no word id; the word's label stays on its
own first subword.
"""

from __future__ import annotations

TITLE = "[CASE_TITLE]"
UPPER = "[CASE_UPPER]"
MARKERS = (TITLE, UPPER)


def word_case(word: str) -> str | None:
    """The marker a word gets, or None.

    Looks at letters only: "U.S." is UPPER, "Smith-Jones" TITLE, "A" and "3M"
    TITLE (one capital letter is not an acronym), "iPhone" None (it starts
    lowercase), "1996" None.
    """
    letters = [c for c in word if c.isalpha()]
    if not letters or not any(c.isupper() for c in letters):
        return None
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return UPPER
    return TITLE if letters[0].isupper() else None


def _marker_ids(tokenizer) -> list[int | None]:
    """Each marker's token id, None where the tokenizer lacks it.

    (convert_tokens_to_ids is a map lookup; get_vocab() would copy the whole
    vocabulary on every encode_batch call.)
    """
    ids = tokenizer.convert_tokens_to_ids(list(MARKERS))
    return [None if i == tokenizer.unk_token_id else i for i in ids]


def add_case_markers(tokenizer) -> None:
    """Add the marker tokens (idempotent; same ids every time for the same base tokenizer)."""
    missing = [m for m, i in zip(MARKERS, _marker_ids(tokenizer)) if i is None]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


def case_marker_ids(tokenizer) -> dict[str, int] | None:
    """``{marker: token id}`` when the tokenizer carries the markers, else None."""
    ids = _marker_ids(tokenizer)
    return None if None in ids else dict(zip(MARKERS, ids))
