"""Label schemes (IOB1, IOB2, IOBES): parsing, conversion, validation, repair, label maps.

Everything converts through entity spans read leniently, the way conlleval
(and seqeval's default mode) reads them, so any input, however messy, maps to
one well-defined set of entities, and every IOB2/IOBES output is valid by
construction. Reading rules, whatever the scheme:

- ``B-X`` and ``S-X`` always start an entity; ``S-X`` and ``E-X`` end one.
- ``I-X``/``E-X`` continue a running ``X`` entity; after ``O``, after another
  type, or after an entity closed by ``E-``/``S-`` they start a new one. This
  is how IOB1 is meant to be read, and how IOB1 remnants in "IOB2" corpora
  (CoNLL-2003 has a few hundred) are counted by conlleval.
- In IOB1, ``B-X`` only appears right after an ``X`` entity, to split the two.

Untyped tags (plain ``B``, ``I``, ``O``, and ``E``, ``S`` for IOBES) are
tags whose entity type is the empty string ``""``: they follow the same rules,
and ``join_tag("B", "") == "B"`` turns them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SCHEMES = ("IOB1", "IOB2", "IOBES")
_PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}
_ALL_PREFIXES = ("B", "I", "E", "S")


class InvalidTagError(ValueError):
    """A tag that is not ``O`` or ``<prefix>-<TYPE>``."""


class UnknownLabelError(ValueError):
    """A tag (or label id) outside a model's label set."""


def check_scheme(scheme: str) -> str:
    """Return ``scheme`` if it is one of ``SCHEMES``; a typo must not silently mean IOB2."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return scheme


def split_tag(tag: str) -> tuple[str, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``; untyped ``"B"`` -> ``("B", "")``; ``"O"`` -> ``("O", None)``.

    Splits on the first '-' only, because types may contain dashes
    (WNUT's ``I-creative-work``).
    """
    if tag == "O":
        return "O", None
    if not isinstance(tag, str):
        raise InvalidTagError(f"malformed tag {tag!r}: tags are strings")
    if tag in _ALL_PREFIXES:
        return tag, ""
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in _ALL_PREFIXES or not etype:
        raise InvalidTagError(
            f"malformed tag {tag!r}: expected 'O', an untyped B/I/E/S, or B-/I-/E-/S- followed by a type"
        )
    return prefix, etype


def join_tag(prefix: str, etype: str | None) -> str:
    """The inverse of ``split_tag``: ``("B", "PER")`` -> ``"B-PER"``; ``("B", "")`` -> ``"B"``."""
    if prefix == "O":
        return "O"
    return f"{prefix}-{etype}" if etype else prefix


def entity_spans(tags: Sequence[str], scheme: str = "IOB2") -> list[tuple[str, int, int]]:
    """Entities as ``(type, start, end)`` token ranges, read leniently (see module docstring).

    ``scheme`` is only checked: the conlleval reading handles every prefix the
    same way in every scheme, which is what makes conversion total.
    """
    check_scheme(scheme)
    spans: list[tuple[str, int, int]] = []
    cur_type: str | None = None  # type of the running (open) entity, None when outside
    cur_start = 0
    for i, tag in enumerate(tags):
        prefix, etype = split_tag(tag)
        if prefix == "O":
            if cur_type is not None:
                spans.append((cur_type, cur_start, i))
                cur_type = None
            continue
        if cur_type is None or etype != cur_type or prefix in ("B", "S"):
            if cur_type is not None:
                spans.append((cur_type, cur_start, i))
            cur_type, cur_start = etype, i
        if prefix in ("E", "S"):
            spans.append((cur_type, cur_start, i + 1))
            cur_type = None
    if cur_type is not None:
        spans.append((cur_type, cur_start, len(tags)))
    return spans


def spans_to_tags(spans: Iterable[tuple[str, int, int]], length: int, scheme: str = "IOB2") -> list[str]:
    """A valid ``scheme`` sequence of ``length`` tags for non-overlapping ``(type, start, end)`` spans."""
    check_scheme(scheme)
    tags = ["O"] * length
    previous: tuple[str, int] | None = None  # (type, end) of the span just written
    for etype, start, end in sorted(spans, key=lambda s: s[1]):
        if not 0 <= start < end <= length:
            raise ValueError(f"span {etype} [{start}, {end}) does not fit in {length} tags")
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span {etype} [{start}, {end}) overlaps another span")
        for i in range(start, end):
            tags[i] = join_tag("I", etype)
        if scheme == "IOB2":
            tags[start] = join_tag("B", etype)
        elif scheme == "IOBES":
            if end - start == 1:
                tags[start] = join_tag("S", etype)
            else:
                tags[start], tags[end - 1] = join_tag("B", etype), join_tag("E", etype)
        elif previous == (etype, start):  # IOB1: B- only between two adjacent same-type entities
            tags[start] = join_tag("B", etype)
        previous = (etype, end)
    return tags


def convert_scheme(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Convert a tag sequence from ``source`` to ``target``; IOB2/IOBES output is always valid."""
    check_scheme(target)
    return spans_to_tags(entity_spans(tags, source), len(tags), target)


def find_invalid(tags: Sequence[str], scheme: str = "IOB2") -> list[tuple[int, str]]:
    """``(index, reason)`` for each position that breaks ``scheme``, in order; ``[]`` when valid.

    One entry per offending position (several reasons are joined with "; "),
    so a caller can point at the exact token line of a CoNLL file.
    Malformed tags raise ``InvalidTagError``: they are not a scheme question.
    """
    check_scheme(scheme)
    parsed = [split_tag(t) for t in tags]
    allowed = _PREFIXES[scheme]
    problems: dict[int, list[str]] = {}

    def flag(i: int, reason: str) -> None:
        problems.setdefault(i, []).append(reason)

    for i, (prefix, etype) in enumerate(parsed):
        prev_prefix, prev_type = parsed[i - 1] if i else ("O", None)
        # "inside" = the previous tag leaves an entity of this type open for continuation
        continues = prev_type == etype and prev_prefix in (("B", "I") if scheme == "IOBES" else allowed)
        where = f"after {tags[i - 1]}" if i else "at the start"
        kind = f"{etype} entity" if etype else "entity"  # untyped tags have type ""
        if prefix != "O" and prefix not in allowed:
            flag(i, f"{tags[i]}: prefix {prefix} is not part of {scheme}")
        elif scheme == "IOB2" and prefix == "I" and not continues:
            flag(i, f"{tags[i]} {where} does not continue {'a' if etype else 'an'} {kind} (expected {join_tag('B', etype)})")
        elif scheme == "IOB1" and prefix == "B" and not continues:
            flag(i, f"{tags[i]} {where}: in IOB1, B only separates two adjacent {etype + ' ' if etype else ''}entities (expected {join_tag('I', etype)})")
        elif scheme == "IOBES" and prefix in ("I", "E") and not continues:
            flag(i, f"{tags[i]} {where} does not continue an open {kind}")
        if scheme == "IOBES" and prefix in ("B", "I"):
            nxt = parsed[i + 1] if i + 1 < len(parsed) else ("O", None)
            if not (nxt[0] in ("I", "E") and nxt[1] == etype):
                follower = f"followed by {tags[i + 1]}" if i + 1 < len(tags) else "at the end"
                flag(i, f"{tags[i]} {follower} is never closed by {join_tag('E', etype)}")
    return [(i, "; ".join(reasons)) for i, reasons in sorted(problems.items())]


def is_valid(tags: Sequence[str], scheme: str = "IOB2") -> bool:
    """Whether ``tags`` is a valid ``scheme`` sequence."""
    return not find_invalid(tags, scheme)


def repair(tags: Sequence[str], scheme: str = "IOB2") -> list[str]:
    """The valid ``scheme`` sequence with the same lenient reading.

    Valid input comes back unchanged; otherwise only the offending prefixes
    change (IOB2: ``O I-PER`` -> ``O B-PER``, ``B-LOC I-PER`` -> ``B-LOC B-PER``;
    IOBES: ``B-PER I-PER`` -> ``B-PER E-PER``).
    """
    return convert_scheme(tags, scheme, scheme)


def label_list(entity_types: Iterable[str], scheme: str = "IOB2") -> list[str]:
    """``O`` first, then each type (sorted, so the order is reproducible) with every prefix of the scheme.

    Prefixes go in the order B, I (IOBES: B, I, E, S), so untyped IOB2 data
    (type ``""``) gets ``["O", "B", "I"]`` and CoNLL gets ``O, B-LOC, I-LOC, B-MISC, ...``.
    """
    check_scheme(scheme)
    types = set(entity_types)
    for etype in types:
        if not isinstance(etype, str):
            raise InvalidTagError(f"entity type {etype!r} must be a string")
    return ["O"] + [join_tag(p, t) for t in sorted(types) for p in _PREFIXES[scheme]]


def labels_from_sequences(seqs: Iterable[Sequence[str]], scheme: str = "IOB2") -> list[str]:
    """The complete label list for the entity types seen.

    Complete means every prefix of every type, even ones the data never uses
    (a corpus without ``I-MISC`` must still give the model an ``I-MISC`` output).
    """
    types = {etype for seq in seqs for tag in seq for _, etype in [split_tag(tag)] if etype is not None}
    return label_list(types, scheme)


@dataclass(frozen=True)
class LabelMap:
    """The label set of a model: ids <-> tags, in the order of the classifier's outputs."""

    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if not labels:
            raise ValueError("a label map needs at least one label")
        duplicates = sorted({t for t in labels if labels.count(t) > 1})
        if duplicates:
            raise ValueError(f"duplicate labels {duplicates} in {list(labels)}")
        if "O" not in labels:
            raise ValueError(f"label map {list(labels)} has no 'O' label")
        for tag in labels:
            split_tag(tag)
        # Not a dataclass field: equality and hashing stay on ``labels`` alone.
        object.__setattr__(self, "_index", {tag: i for i, tag in enumerate(labels)})

    @property
    def label2id(self) -> dict[str, int]:
        """A fresh dict (callers such as HF configs may mutate it)."""
        return dict(self._index)  # type: ignore[attr-defined]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def entity_types(self) -> list[str]:
        """The entity types, sorted."""
        return sorted({etype for t in self.labels for _, etype in [split_tag(t)] if etype is not None})

    def encode(self, tags: Iterable[str]) -> list[int]:
        index = self._index  # type: ignore[attr-defined]
        try:
            return [index[t] for t in tags]
        except KeyError as exc:
            raise UnknownLabelError(f"unknown tag {exc.args[0]!r}; known labels: {list(self.labels)}") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        out = []
        n = len(self.labels)
        for i in ids:
            k = int(i)
            if not 0 <= k < n:  # a negative id (e.g. -100) must not wrap around to the last label
                raise UnknownLabelError(f"label id {k} outside 0..{n - 1} ({n} labels)")
            out.append(self.labels[k])
        return out

    @classmethod
    def from_id2label(cls, mapping: Mapping[int | str, str]) -> LabelMap:
        """From an HF config's ``id2label`` (keys are ints, or strs after a JSON round trip)."""
        by_id: dict[int, str] = {}
        for key, tag in mapping.items():
            try:
                by_id[int(key)] = tag
            except (TypeError, ValueError):
                raise ValueError(f"id2label key {key!r} is not an integer id") from None
        if sorted(by_id) != list(range(len(by_id))) or len(by_id) != len(mapping):
            raise ValueError(f"id2label keys must be exactly 0..{len(mapping) - 1}, got {sorted(mapping, key=str)}")
        return cls(tuple(by_id[i] for i in range(len(by_id))))


class LabelMismatchError(ValueError):
    """A saved classification head whose labels cannot serve the training data's labels."""


def is_default_label_names(id2label: Mapping[int | str, str]) -> bool:
    """HF's placeholder names ``LABEL_0..LABEL_{n-1}``: a head saved without label names.

    ``BertForTokenClassification.from_pretrained(..., num_labels=3)`` with no
    ``id2label`` saves exactly these.
    """
    return bool(id2label) and all(str(name) == f"LABEL_{int(i)}" for i, name in id2label.items())


def resolve_head_labels(saved_id2label: Mapping[int | str, str], data_labels: Sequence[str], head: str) -> LabelMap:
    """The label map for fine-tuning a saved classification head on data with ``data_labels``.

    The ``run_ner.py`` convention: a head with HF's placeholder names
    (``LABEL_k``) is kept, weights and all, when its size equals the number of
    data labels, and output ``k`` is named after the ``k``-th data label
    (``label_list`` order: ``O``, then ``B``, ``I`` per type); other sizes are
    an error naming both. A head with real names keeps its mapping by name,
    and its label set must equal the data's. ``head`` names the checkpoint in
    errors. Called before any training, so a mismatch costs seconds.
    """
    saved = {int(k): str(v) for k, v in saved_id2label.items()}
    data = list(data_labels)
    if is_default_label_names(saved):
        if len(saved) != len(data):
            raise LabelMismatchError(
                f"{head} has {len(saved)} unnamed outputs (LABEL_0..LABEL_{len(saved) - 1}) "
                f"but the training data has {len(data)} labels {data}"
            )
        return LabelMap(tuple(data))
    names = sorted(saved.values())
    if sorted(set(names)) != sorted(set(data)) or len(names) != len(set(names)):
        raise LabelMismatchError(f"{head} predicts labels {names} but the training data has labels {sorted(data)}")
    return LabelMap.from_id2label(saved)
