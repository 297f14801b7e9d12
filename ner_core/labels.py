"""Label schemes (IOB1, IOB2, IOBES): parsing, conversion, validation, repair, label maps.

Everything converts through entity spans read leniently (the conlleval way),
so any input, however messy, maps to one well-defined set of entities, and
every output in IOB2/IOBES is valid by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

SCHEMES = ("IOB1", "IOB2", "IOBES")
_PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}


class InvalidTagError(ValueError):
    """A tag that is not ``O`` or ``<prefix>-<TYPE>``."""


class UnknownLabelError(ValueError):
    """A tag outside the model's label set."""


def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; expected one of {SCHEMES}")


def split_tag(tag: str) -> tuple[str, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", None)``. Splits on the first '-'."""
    if tag == "O":
        return "O", None
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not etype:
        raise InvalidTagError(f"malformed tag {tag!r}: expected 'O' or B-/I-/E-/S- followed by a type")
    return prefix, etype


def _spans(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end), read leniently.

    An entity starts at B-/S-, at any tag whose type differs from the running
    entity, and at I-/E- after O (IOB1 style). It ends after E-/S-, at O, or
    where the next entity starts. In IOB1, B-X only splits two adjacent X entities.
    """
    _check_scheme(scheme)
    spans: list[tuple[str, int, int]] = []
    cur_type: str | None = None
    cur_start = 0
    closed = True  # whether the running entity was closed by E-/S-
    for i, tag in enumerate(tags):
        prefix, etype = split_tag(tag)
        if prefix == "O":
            if cur_type is not None:
                spans.append((cur_type, cur_start, i))
            cur_type, closed = None, True
            continue
        starts = cur_type is None or closed or etype != cur_type or prefix in ("B", "S")
        if starts:
            if cur_type is not None:
                spans.append((cur_type, cur_start, i))
            cur_type, cur_start = etype, i
        closed = scheme == "IOBES" and prefix in ("E", "S")
        if closed:
            spans.append((cur_type, cur_start, i + 1))
            cur_type = None
    if cur_type is not None:
        spans.append((cur_type, cur_start, len(tags)))
    return spans


def spans_to_tags(spans: Iterable[tuple[str, int, int]], length: int, scheme: str = "IOB2") -> list[str]:
    """Emit a valid tag sequence of ``scheme`` for non-overlapping (type, start, end) spans."""
    _check_scheme(scheme)
    tags = ["O"] * length
    previous: tuple[str, int] | None = None  # (type, end) of the last span
    for etype, start, end in sorted(spans, key=lambda s: s[1]):
        for i in range(start, end):
            tags[i] = f"I-{etype}"
        if scheme == "IOB2":
            tags[start] = f"B-{etype}"
        elif scheme == "IOBES":
            if end - start == 1:
                tags[start] = f"S-{etype}"
            else:
                tags[start], tags[end - 1] = f"B-{etype}", f"E-{etype}"
        elif previous is not None and previous == (etype, start):  # IOB1: B only between same-type neighbours
            tags[start] = f"B-{etype}"
        previous = (etype, end)
    return tags


def convert_scheme(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Convert between schemes; IOB2/IOBES output is always valid."""
    return spans_to_tags(_spans(tags, source), len(tags), target)


def find_invalid(tags: Sequence[str], scheme: str = "IOB2") -> list[tuple[int, str]]:
    """(index, reason) for each position that breaks ``scheme``; empty when valid."""
    _check_scheme(scheme)
    problems: list[tuple[int, str]] = []
    allowed = _PREFIXES[scheme]
    prev_prefix, prev_type = "O", None
    for i, tag in enumerate(tags):
        prefix, etype = split_tag(tag)
        if prefix != "O" and prefix not in allowed:
            problems.append((i, f"{tag}: prefix {prefix}- is not part of {scheme}"))
        elif scheme == "IOB2" and prefix == "I" and (prev_prefix == "O" or prev_type != etype):
            problems.append((i, f"{tag} does not continue an entity of type {etype} (previous tag {tags[i - 1] if i else 'start'})"))
        elif scheme == "IOB1" and prefix == "B" and not (prev_prefix in ("B", "I") and prev_type == etype):
            problems.append((i, f"{tag}: in IOB1, B- only separates two adjacent {etype} entities"))
        elif scheme == "IOBES":
            open_entity = prev_prefix in ("B", "I")
            if prefix in ("I", "E") and not (open_entity and prev_type == etype):
                problems.append((i, f"{tag} does not continue an open {etype} entity"))
            elif prefix in ("B", "S", "O") and open_entity:
                problems.append((i, f"{tags[i - 1]} at {i - 1} is never closed by E-{prev_type}"))
        prev_prefix, prev_type = prefix, etype
    if scheme == "IOBES" and prev_prefix in ("B", "I"):
        problems.append((len(tags) - 1, f"{tags[-1]} ends the sequence without E-{prev_type}"))
    return problems


def is_valid(tags: Sequence[str], scheme: str = "IOB2") -> bool:
    return not find_invalid(tags, scheme)


def repair(tags: Sequence[str], scheme: str = "IOB2") -> list[str]:
    """The nearest valid sequence: read leniently, re-emit (``O I-PER`` -> ``O B-PER`` in IOB2)."""
    return convert_scheme(tags, scheme, scheme)


def label_list(entity_types: Iterable[str], scheme: str = "IOB2") -> list[str]:
    """``O`` first, then each type (sorted) with every prefix of the scheme."""
    _check_scheme(scheme)
    return ["O"] + [f"{p}-{t}" for t in sorted(set(entity_types)) for p in _PREFIXES[scheme]]


def labels_from_sequences(seqs: Iterable[Sequence[str]], scheme: str = "IOB2") -> list[str]:
    """The complete label list for the entity types seen (even prefixes never seen)."""
    types = {etype for seq in seqs for tag in seq for _, etype in [split_tag(tag)] if etype is not None}
    return label_list(types, scheme)


@dataclass(frozen=True)
class LabelMap:
    """The label set of a model: ids <-> tags, in the order of the classifier's outputs."""

    labels: tuple[str, ...]

    def __post_init__(self):
        labels = tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if not labels:
            raise ValueError("a label map needs at least one label")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels in {labels}")
        if "O" not in labels:
            raise ValueError(f"label map {labels} has no 'O' label")
        for tag in labels:
            split_tag(tag)

    @cached_property
    def label2id(self) -> dict[str, int]:
        return {tag: i for i, tag in enumerate(self.labels)}

    @cached_property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def entity_types(self) -> list[str]:
        return sorted({split_tag(t)[1] for t in self.labels if t != "O"})

    def encode(self, tags: Sequence[str]) -> list[int]:
        try:
            return [self.label2id[t] for t in tags]
        except KeyError as exc:
            raise UnknownLabelError(f"unknown tag {exc.args[0]!r}; known labels: {list(self.labels)}") from None

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.labels[int(i)] for i in ids]

    @classmethod
    def from_id2label(cls, mapping: Mapping[int | str, str]) -> "LabelMap":
        by_id = {int(k): v for k, v in mapping.items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        return cls(tuple(by_id[i] for i in range(len(by_id))))
