"""Word <-> subword alignment and sliding windows.

Training labels go on each word's first subword (-100 elsewhere, so the loss
ignores them); predictions are read back at the same place. Documents longer
than the model's limit are cut into overlapping windows at word boundaries,
so no word is ever dropped, and each word's prediction is taken from the
window where it has the most context on both sides.

Document context (Schweter and Akbik 2020, "FLERT"): a sentence may come with
the words around it in its document (the sentences before and after). Those
words fill up to ``context_length`` subwords on each side of the sentence's
first and last window: the model reads them, but they carry no label and no
word id, so the loss and the predictions ignore them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ner_core.casing import case_marker_ids, word_case

IGNORE_INDEX = -100  # a position with no label (not a word's first subword, special, context): the loss skips it


@dataclass
class Window:
    input_ids: list[int]
    attention_mask: list[int]
    word_ids: list[int | None]  # per position; None for special tokens and case markers
    labels: list[int] | None  # per position: word label on first subwords, IGNORE_INDEX elsewhere
    first_word: int  # words [first_word, end_word) start inside this window
    end_word: int


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence (e.g. [CLS] ... [SEP])."""
    enc = tokenizer(["a"], is_split_into_words=True, add_special_tokens=True)
    ids, wids = enc["input_ids"], enc.word_ids()
    first = wids.index(0)
    last = len(wids) - 1 - wids[::-1].index(0)
    return list(ids[:first]), list(ids[last + 1 :])


DEFAULT_STRIDE = 64


def fitted_stride(room: int, stride: int = DEFAULT_STRIDE) -> int:
    """A default overlap that suits a window with ``room`` subwords for words: ``stride``, or half
    the room where that is not shorter than it (an overlap must leave the next window new words)."""
    return stride if stride < room else room // 2


def special_token_count(tokenizer) -> int:
    """How many positions of a window the tokenizer's special tokens take ([CLS] and [SEP]: 2)."""
    prefix, suffix = _special_tokens(tokenizer)
    return len(prefix) + len(suffix)


@dataclass
class WindowArrays:
    """The windows of a batch of documents, flat: window ``k`` holds positions
    ``offsets[k]:offsets[k+1]`` of ``input_ids`` and ``word_ids`` (-1: no word)."""

    input_ids: np.ndarray  # int32 per position
    word_ids: np.ndarray  # int32 per position
    offsets: np.ndarray  # int64, windows + 1
    doc: np.ndarray  # int64 per window: its document
    first_word: np.ndarray  # int64 per window: words [first_word, end_word) start inside it
    end_word: np.ndarray
    num_words: np.ndarray  # int64 per document

    def __len__(self) -> int:
        return len(self.doc)

    @classmethod
    def from_windows(cls, per_doc: Sequence[Sequence[Window]], num_words: Sequence[int]) -> WindowArrays:
        flat = [w for wins in per_doc for w in wins]
        lengths = np.fromiter((len(w.input_ids) for w in flat), np.int64, len(flat))
        total = int(lengths.sum())
        return cls(
            np.fromiter((t for w in flat for t in w.input_ids), np.int32, total),
            np.fromiter((-1 if x is None else x for w in flat for x in w.word_ids), np.int32, total),
            np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            np.repeat(np.arange(len(per_doc), dtype=np.int64), [len(wins) for wins in per_doc]),
            np.fromiter((w.first_word for w in flat), np.int64, len(flat)),
            np.fromiter((w.end_word for w in flat), np.int64, len(flat)),
            np.asarray(num_words, np.int64),
        )

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, docs: Sequence[int]) -> WindowArrays:
        """The windows of some documents only, renumbered in the order given."""
        keep = np.concatenate([np.flatnonzero(self.doc == d) for d in docs]) if len(docs) else np.zeros(0, np.int64)
        lengths = self.lengths()[keep]
        pos = np.concatenate([np.arange(self.offsets[k], self.offsets[k + 1]) for k in keep]) if len(keep) else np.zeros(0, np.int64)
        renumber = {d: i for i, d in enumerate(docs)}
        return WindowArrays(
            self.input_ids[pos],
            self.word_ids[pos],
            np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            np.array([renumber[d] for d in self.doc[keep].tolist()], np.int64),
            self.first_word[keep],
            self.end_word[keep],
            self.num_words[list(docs)],
        )

    def word_offsets(self) -> np.ndarray:
        """Document ``d``'s words are ``word_offsets[d]:word_offsets[d+1]`` of all documents' words."""
        return np.concatenate(([0], np.cumsum(self.num_words))).astype(np.int64)

    def window_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def word_starts(self) -> np.ndarray:
        """Per position: whether it is a word's first subword in its window (where labels are read)."""
        wid = self.word_ids.astype(np.int64)
        prev = np.empty_like(wid)
        prev[0:1] = -1
        prev[1:] = wid[:-1]
        prev[self.offsets[:-1][self.offsets[:-1] < len(wid)]] = -1  # a window's first position
        return (wid >= 0) & (wid != prev)

    def best_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(position, word across all documents) of each word's first subword in the window where
        it has the most context on both sides (the first such window on a tie)."""
        wid = self.word_ids.astype(np.int64)
        pos = np.flatnonzero(self.word_starts())
        win = self.window_of(pos)
        word = wid[pos]
        context = np.minimum(word - self.first_word[win], self.end_word[win] - 1 - word)
        glob = self.word_offsets()[self.doc[win]] + word
        order = np.lexsort((win, -context, glob))
        first = np.ones(len(order), bool)
        first[1:] = glob[order][1:] != glob[order][:-1]
        best = order[first]
        total = int(self.num_words.sum())
        if len(best) != total:
            seen = np.zeros(total, bool)
            seen[glob[best]] = True
            raise ValueError(f"no prediction for words {np.flatnonzero(~seen)[:10].tolist()} of {total}")
        return pos[best], glob[best]


def _subwords_per_word(ids: Sequence[int], word_ids: Sequence[int | None], num_words: int, unk_id: int) -> list[list[int]]:
    per_word: list[list[int]] = [[] for _ in range(num_words)]
    for tok, w in zip(ids, word_ids):
        if w is not None:
            per_word[w].append(tok)
    # A word the tokenizer maps to nothing (zero-width chars, stray marks...)
    # still needs a position to carry its label: it becomes [UNK].
    for pieces in per_word:
        if not pieces:
            pieces.append(unk_id)
    return per_word


def _window_bounds(lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [a, b) whose subword lengths fit ``budget``, overlapping by <= ``stride`` subwords."""
    n = len(lengths)
    bounds: list[tuple[int, int]] = []
    a = 0
    while a < n:
        total, b = 0, a
        while b < n and (b == a or total + lengths[b] <= budget):
            total += lengths[b]
            b += 1
        bounds.append((a, b))
        if b >= n:
            break
        # next window starts as far back as the overlap allows, but always advances
        k, overlap = b, 0
        while k - 1 > a and overlap + lengths[k - 1] <= stride:
            k -= 1
            overlap += lengths[k]
        a = k
    return bounds


def _context_pieces(tokenizer, contexts, markers, size: int) -> list[tuple[list[int], list[int]]]:
    """Each document's (left, right) context as subword ids: the last/first ``size`` of them.

    The words are tokenized in one call, with the same case markers as the
    sentence itself, then cut at the subword level (a word may lose its head on
    the left or its tail on the right: context needs no word boundaries).
    """
    sides: list[list[str]] = []
    for ctx in contexts:
        left, right = ctx if ctx is not None else ((), ())
        sides += [list(left), list(right)]
    flat = [i for i, words in enumerate(sides) if words]
    pieces: list[list[int]] = [[] for _ in sides]
    if flat and size > 0:
        encoded = tokenizer([sides[i] for i in flat], is_split_into_words=True, add_special_tokens=False)
        for row, i in enumerate(flat):
            ids, wids = encoded["input_ids"][row], encoded.word_ids(row)
            out: list[int] = []
            last = None
            for tok, w in zip(ids, wids):
                if w is not None and w != last and markers and (m := word_case(sides[i][w])):
                    out.append(markers[m])
                last = w
                out.append(tok)
            pieces[i] = out
    return [(pieces[2 * d][-size:] if size else [], pieces[2 * d + 1][:size]) for d in range(len(contexts))]


def encode_batch(
    tokenizer,
    batch_words: Sequence[Sequence[str]],
    batch_label_ids: Sequence[Sequence[int]] | None = None,
    max_length: int = 512,
    stride: int | None = None,
    contexts: Sequence[tuple[Sequence[str], Sequence[str]] | None] | None = None,
    context_length: int = 0,
) -> list[list[Window]]:
    """Windows for each document, tokenizing the whole batch in one call of the fast tokenizer.

    ``contexts``: per document, ``(words before, words after)`` from its
    surroundings (or None). Up to ``context_length`` of their subwords go on each
    side, within ``max_length``: the left context before the first window's
    words, the right context after the last window's; they take no labels.
    """
    prefix, suffix = _special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room beside {len(prefix) + len(suffix)} special tokens")
    stride = fitted_stride(budget) if stride is None else stride
    if not 0 <= stride < budget:
        # what is asked is what runs: a default is fitted (``fitted_stride``), an explicit value is not
        raise ValueError(f"stride {stride} must be >= 0 and shorter than the window ({budget} subwords of max_length {max_length})")
    if batch_label_ids is not None:
        if len(batch_label_ids) != len(batch_words):
            raise ValueError(f"{len(batch_label_ids)} label sequences for {len(batch_words)} documents")
        for i, (words, labels) in enumerate(zip(batch_words, batch_label_ids)):
            if len(words) != len(labels):
                raise ValueError(f"document {i}: {len(words)} words but {len(labels)} labels")

    non_empty = [i for i, words in enumerate(batch_words) if len(words)]
    encoded = (
        tokenizer([list(batch_words[i]) for i in non_empty], is_split_into_words=True, add_special_tokens=False)
        if non_empty
        else None
    )
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    markers = case_marker_ids(tokenizer)
    if contexts is not None and len(contexts) != len(batch_words):
        raise ValueError(f"{len(contexts)} contexts for {len(batch_words)} documents")
    around = _context_pieces(tokenizer, contexts, markers, context_length) if contexts is not None and context_length > 0 else None
    result: list[list[Window]] = [[] for _ in batch_words]
    for row, doc in enumerate(non_empty):
        words = batch_words[doc]
        pieces = _subwords_per_word(encoded["input_ids"][row], encoded.word_ids(row), len(words), unk)
        # A case marker (see ner_core.casing) goes before its word; the budget counts it.
        # (None when a window has room for one token only: the word itself comes first.)
        lead = [[markers[m]] if markers and budget > 1 and (m := word_case(word)) else [] for word in words]
        pieces = [p[: budget - len(m)] for p, m in zip(pieces, lead)]  # a word longer than a window keeps its head
        labels = batch_label_ids[doc] if batch_label_ids is not None else None
        lengths = [len(p) + len(m) for p, m in zip(pieces, lead)]
        for a, b in _window_bounds(lengths, budget, stride):
            left, right = _fit_context(around[doc] if around else None, budget - sum(lengths[a:b]), a == 0, b == len(words))
            ids = list(prefix) + left
            wids: list[int | None] = [None] * len(ids)
            lab = [IGNORE_INDEX] * len(ids) if labels is not None else None
            for w in range(a, b):
                ids.extend(lead[w])
                wids.extend([None] * len(lead[w]))
                ids.extend(pieces[w])
                wids.extend([w] * len(pieces[w]))
                if lab is not None:
                    lab.extend([IGNORE_INDEX] * len(lead[w]))
                    lab.append(int(labels[w]))
                    lab.extend([IGNORE_INDEX] * (len(pieces[w]) - 1))
            ids.extend(right + suffix)
            wids.extend([None] * (len(right) + len(suffix)))
            if lab is not None:
                lab.extend([IGNORE_INDEX] * (len(right) + len(suffix)))
            result[doc].append(Window(ids, [1] * len(ids), wids, lab, a, b))
    return result


def _fit_context(around, room: int, first: bool, last: bool) -> tuple[list[int], list[int]]:
    """The context that fits ``room`` spare positions: left only before a document's first
    window, right only after its last; when both compete, each gets half, and a side
    that needs less leaves the rest to the other."""
    if not around or room <= 0:
        return [], []
    left, right = (around[0] if first else []), (around[1] if last else [])
    n_left = min(len(left), max(room // 2, room - len(right)))
    n_right = min(len(right), room - n_left)
    return (left[len(left) - n_left :] if n_left else []), right[:n_right]


def encode_words(
    tokenizer,
    words: Sequence[str],
    label_ids: Sequence[int] | None = None,
    max_length: int = 512,
    stride: int | None = None,
) -> list[Window]:
    """Windows for one document (see ``encode_batch``)."""
    labels = [label_ids] if label_ids is not None else None
    return encode_batch(tokenizer, [words], labels, max_length, stride)[0]


def merge_window_predictions(windows: Sequence[Window], predictions: Sequence[Sequence[int]], num_words: int) -> list[int]:
    """One label id per word, read at its first subword in the window where it has most context
    (``WindowArrays.best_positions``, the rule the predictor uses)."""
    if not num_words:
        return []
    arrays = WindowArrays.from_windows([windows], [num_words])
    pos, word = arrays.best_positions()
    flat = np.fromiter((int(p) for pred in predictions for p in pred), np.int64)
    out = np.empty(num_words, np.int64)
    out[word] = flat[pos]
    return out.tolist()


def padded_length(length: int, lengths_per_octave: int | None = None) -> int:
    """The length a batch is padded to when its longest window has ``length`` subwords.

    ``lengths_per_octave`` (None: exact): lengths up to twice this value stay exact; above,
    each span between a power of two and the next holds this many lengths (with 8: exact to
    16, then even to 32, multiples of 4 to 64, of 8 to 128, of 16 to 256...). Batches then
    come in a few dozen shapes whatever the maximum length, and no window is padded by more
    than an eighth (far less padding than rounding up to a multiple of 8; docs/performance.md).
    """
    if lengths_per_octave:
        step = 1
        while length > 2 * lengths_per_octave * step:
            step *= 2
        length = -(-length // step) * step
    return length


def pad_windows(windows: Sequence[Window], pad_token_id: int, lengths_per_octave: int | None = None) -> dict[str, list[list[int]]]:
    """Right-pad a batch of windows to a common length (lists, so this stays torch-free); see ``padded_length``."""
    length = padded_length(max((len(w.input_ids) for w in windows), default=0), lengths_per_octave)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
    with_labels = bool(windows) and all(w.labels is not None for w in windows)
    if with_labels:
        out["labels"] = []
    for w in windows:
        pad = length - len(w.input_ids)
        out["input_ids"].append(w.input_ids + [pad_token_id] * pad)
        out["attention_mask"].append(w.attention_mask + [0] * pad)
        if with_labels:
            out["labels"].append(w.labels + [IGNORE_INDEX] * pad)  # type: ignore[operator]
    return out
