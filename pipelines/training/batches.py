"""A training worker's windows, from its streamed shard to length-grouped, padded batches.

The shard arrives as Arrow batches with ``input_ids`` and ``labels`` list columns
(``pipelines.labelled_data.encode_for_training``). They stay arrays all the way: each list
column is held as its flat values plus one length per window, a pool of a few thousand
windows is shuffled and sorted by length (so a batch pads little), cut into batches, and
each batch is padded into one preallocated array. No Python object per window, and at most
one pool of windows in the worker, whatever the size of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ner_core.alignment import IGNORE_INDEX


@dataclass
class Batch:
    input_ids: np.ndarray  # (windows, padded length) int64
    attention_mask: np.ndarray
    labels: np.ndarray  # IGNORE_INDEX on padding
    tokens: int  # real (unpadded) positions


@dataclass
class _Windows:
    """Windows as flat arrays: ``lengths[i]`` values of ``ids``/``labels`` per window, in order."""

    lengths: np.ndarray
    ids: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_arrow(cls, batch: pa.Table) -> "_Windows":
        ids = batch.column("input_ids")
        return cls(
            pc.list_value_length(ids).to_numpy().astype(np.int64),
            pc.list_flatten(ids).to_numpy(),
            pc.list_flatten(batch.column("labels")).to_numpy(),
        )

    @classmethod
    def concat(cls, parts: list["_Windows"]) -> "_Windows":
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("lengths", "ids", "labels")))

    def __len__(self) -> int:
        return len(self.lengths)

    def split(self, n: int) -> tuple["_Windows", "_Windows"]:
        cut = int(self.lengths[:n].sum())
        return _Windows(self.lengths[:n], self.ids[:cut], self.labels[:cut]), _Windows(self.lengths[n:], self.ids[cut:], self.labels[cut:])


def length_grouped_batches(
    stream: Iterable[pa.Table],
    *,
    windows: int,
    batch_size: int,
    pool: int,
    rng: np.random.Generator,
    pad_id: int,
    width: Callable[[int], int] = int,
) -> Iterator[Batch]:
    """The first ``windows`` windows of ``stream`` in exactly ``ceil(windows / batch_size)`` batches.

    Windows are taken ``pool`` at a time (a multiple of ``batch_size``, so only the last
    batch is short), shuffled with ``rng`` and stably sorted by length, then cut into
    batches that are yielded in a shuffled order: ties in length and the batch order
    change with ``rng``. Raises ValueError when ``stream`` ends before ``windows``.
    Each batch is padded to ``width`` of its longest window: the
    device's ``ner_core.inference.batch_policy``, as in inference (exact by default).
    """
    if pool % batch_size:
        raise ValueError(f"pool ({pool}) must be a multiple of batch_size ({batch_size})")
    parts: list[_Windows] = []
    held = taken = 0
    source = iter(stream)
    while taken < windows:
        chunk = next(source, None)
        if chunk is None:
            raise ValueError(f"the shard ended after {taken + held} windows; this worker's share is {windows}")
        part = _Windows.from_arrow(chunk)
        part, _ = part.split(min(len(part), windows - taken - held))
        parts.append(part)
        held += len(part)
        while held >= pool or (held and taken + held == windows):
            ready, rest = _Windows.concat(parts).split(min(pool, held))
            parts, held, taken = [rest], held - len(ready), taken + len(ready)
            yield from _pool_batches(ready, batch_size, rng, pad_id, width)


def _pool_batches(w: _Windows, batch_size: int, rng: np.random.Generator, pad_id: int, width: Callable[[int], int]) -> Iterator[Batch]:
    starts = np.cumsum(w.lengths) - w.lengths
    order = rng.permutation(len(w))
    order = order[np.argsort(w.lengths[order], kind="stable")]
    cuts = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for k in rng.permutation(len(cuts)):
        rows = cuts[k]
        lengths = w.lengths[rows]
        padded = width(int(lengths.max()))
        mask = np.arange(padded) < lengths[:, None]
        # where each real position's value sits in the flat arrays, in row-major order of the batch
        source = np.repeat(starts[rows] - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
        ids = np.full((len(rows), padded), pad_id, dtype=np.int64)
        labels = np.full((len(rows), padded), IGNORE_INDEX, dtype=np.int64)
        ids[mask] = w.ids[source]
        labels[mask] = w.labels[source]
        yield Batch(ids, mask.astype(np.int64), labels, int(lengths.sum()))
