"""Per-word label probabilities -> IOB2 labels, token scores and scored entities, as arrays.

The decoding half of ``ner_core.predictor``, kept pure (numpy only) so its rules are
testable on hand-made probabilities. A batch of documents is one flat run of words
with ``word_offsets`` (document ``d`` holds words ``word_offsets[d]:word_offsets[d+1]``).

- A word's label is the most probable one (with a CRF head: its Viterbi path's); a word's
  score is that label's probability.
- IOB2 repair changes only a prefix (``O I-PER`` -> ``O B-PER``) and keeps the score:
  the model chose the type, the repair only says where the entity starts.
- An entity's score is the **minimum** of its words' scores. A span is right only if
  every one of its words is, and the least sure word bounds that: the minimum is the
  tightest bound on the joint probability whatever the words' dependence (the mean
  would let one sure word hide an unsure one).
- ``min_score``: an entity under it is dropped and its words become ``O``, each with the
  probability of ``O`` as its score, so labels, scores and entities always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ner_core.labels import LabelMap, split_tag


@dataclass(frozen=True)
class LabelTable:
    """A label map as lookup arrays: prefix kind and entity-type index per label id."""

    labels: LabelMap
    is_begin: np.ndarray  # bool per label: B-X
    is_inside: np.ndarray  # bool per label: I-X
    type_of: np.ndarray  # int per label: index into ``types``, -1 for O
    begin_of: np.ndarray  # int per label: the B- label of its type (itself for O and B)
    types: tuple[str, ...]
    outside: int  # id of O

    @classmethod
    def of(cls, labels: LabelMap) -> "LabelTable":
        parts = [split_tag(t) for t in labels.labels]
        if any(p not in ("O", "B", "I") for p, _ in parts):
            raise ValueError(f"labels {list(labels.labels)} are not IOB2 (B-, I-, O): decode them with ner_core.labels.repair")
        types = tuple(sorted({t for _, t in parts if t is not None}))
        type_of = np.array([-1 if t is None else types.index(t) for _, t in parts], np.int64)
        index = labels.label2id
        begin_of = np.array(
            [index.get(f"B-{t}" if t else "B", i) if p == "I" else i for i, (p, t) in enumerate(parts)], np.int64
        )
        return cls(
            labels,
            np.array([p == "B" for p, _ in parts]),
            np.array([p == "I" for p, _ in parts]),
            type_of,
            begin_of,
            types,
            index["O"],
        )


@dataclass
class Decoded:
    """Labels, scores and entities of a batch of documents, flat (see the module docstring)."""

    word_offsets: np.ndarray  # int64, n_docs + 1
    label_ids: np.ndarray  # int64 per word
    scores: np.ndarray  # float32 per word
    entity_doc: np.ndarray  # int64 per entity: its document
    entity_type: np.ndarray  # int64 per entity: index into LabelTable.types
    entity_start: np.ndarray  # int64 per entity: first word, within its document
    entity_end: np.ndarray  # int64 per entity: one past its last word, within its document
    entity_score: np.ndarray  # float32 per entity

    def entity_offsets(self) -> np.ndarray:
        """Entities of document ``d``: ``entity_offsets[d]:entity_offsets[d+1]`` (they come in document order)."""
        return np.searchsorted(self.entity_doc, np.arange(len(self.word_offsets)), side="left")


def repair_iob2(label_ids: np.ndarray, word_offsets: np.ndarray, table: LabelTable) -> np.ndarray:
    """Valid IOB2: an ``I-X`` at a document's start, after ``O`` or after another type becomes ``B-X``."""
    ids = np.asarray(label_ids, np.int64)
    if not len(ids):
        return ids.copy()
    prev_type = np.empty_like(ids)
    prev_type[0] = -1
    prev_type[1:] = table.type_of[ids[:-1]]
    prev_type[word_offsets[:-1][word_offsets[:-1] < len(ids)]] = -1  # a document's first word follows nothing
    broken = table.is_inside[ids] & (prev_type != table.type_of[ids])
    return np.where(broken, table.begin_of[ids], ids)


def _entities(ids: np.ndarray, scores: np.ndarray, word_offsets: np.ndarray, table: LabelTable):
    """(doc, type, global start, global end, score) per entity of a repaired sequence."""
    starts = np.flatnonzero(table.is_begin[ids])
    if not len(starts):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty, np.zeros(0, np.float32)
    # an entity runs from its B- up to the next word that is not an I- (repaired: I- always continues)
    stops = np.append(np.flatnonzero(~table.is_inside[ids]), len(ids))  # B- and O words, then the end
    ends = stops[np.searchsorted(stops, starts, side="right")]
    doc = np.searchsorted(word_offsets, starts, side="right") - 1  # repair made every document start a stop
    bounds = np.empty(2 * len(starts), np.int64)
    bounds[0::2], bounds[1::2] = starts, ends
    padded = np.append(scores, np.float32(1.0))  # reduceat needs every bound < len
    score = np.minimum.reduceat(padded, bounds)[0::2]
    return doc, table.type_of[ids[starts]], starts, ends, score.astype(np.float32)


def decode_probabilities(
    probs: np.ndarray, word_offsets: np.ndarray, table: LabelTable, min_score: float | None = None, label_ids: np.ndarray | None = None
) -> Decoded:
    """The labels, scores and entities of documents from their words' label probabilities ``[words, labels]``.

    ``label_ids``: the words' labels where something else chose them (a CRF's Viterbi path);
    default the most probable. Each word's score is its chosen label's probability.
    """
    word_offsets = np.asarray(word_offsets, np.int64)
    chosen = np.asarray(label_ids, np.int64) if label_ids is not None else (probs.argmax(-1) if len(probs) else np.zeros(0, np.int64))
    ids = repair_iob2(chosen, word_offsets, table)
    scores = probs[np.arange(len(ids)), chosen].astype(np.float32) if len(probs) else np.zeros(0, np.float32)
    doc, etype, start, end, escore = _entities(ids, scores, word_offsets, table)
    if min_score is not None and len(doc):
        weak = escore < min_score
        if weak.any():
            drop = np.zeros(len(ids) + 1, np.int64)
            np.add.at(drop, start[weak], 1)
            np.add.at(drop, end[weak], -1)
            dropped = np.cumsum(drop[:-1]) > 0
            ids = np.where(dropped, table.outside, ids)
            scores = np.where(dropped, probs[:, table.outside], scores).astype(np.float32)
            keep = ~weak
            doc, etype, start, end, escore = doc[keep], etype[keep], start[keep], end[keep], escore[keep]
    base = word_offsets[doc]
    return Decoded(word_offsets, ids, scores, doc, etype, start - base, end - base, escore)


def labels_of(decoded: Decoded, table: LabelTable) -> list[list[str]]:
    """Each document's labels as strings (for scoring and for callers that want lists)."""
    names = np.array(table.labels.labels, dtype=object)
    flat = names[decoded.label_ids].tolist()
    o = decoded.word_offsets.tolist()
    return [flat[o[d] : o[d + 1]] for d in range(len(o) - 1)]


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` over the last axis, in float32."""
    z = np.asarray(logits, np.float32) / np.float32(temperature)
    z = z - z.max(-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(-1, keepdims=True)
    return z


def word_spans(decoded: Decoded, d: int) -> Sequence[tuple[int, int, int, float]]:
    """Document ``d``'s entities as ``(type index, start word, end word, score)``."""
    lo, hi = np.searchsorted(decoded.entity_doc, [d, d + 1])
    return list(
        zip(
            decoded.entity_type[lo:hi].tolist(),
            decoded.entity_start[lo:hi].tolist(),
            decoded.entity_end[lo:hi].tolist(),
            decoded.entity_score[lo:hi].tolist(),
        )
    )
