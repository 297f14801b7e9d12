"""Stage 2 of tagging: rows -> words (+ character offsets) -> subword windows.

Where it runs is ``--preprocess``: in CPU tasks beside GPU actors, so the
tokenizer's work never stands between two forward passes on the GPU; in the
actor itself on CPU, where tasks beside it would take cores from the model's
threads (torch's threads wait for the slowest, so one busy core stalls them all).
Rows that cannot be tagged (no text, a column of the wrong type, a name that
clashes with an output column) become error rows here and skip the model.

``prepare`` gives a batch's rows as ``Prepared`` (documents and windows, Python
objects). In the actor they go straight to the model. From a task they travel as
Arrow columns (``to_columns``: the words, their character spans and three list
columns of windows) and the actor reads them back (``from_columns``): a round trip
that cost about 3% of the actor's time when the actor made it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ner_core.alignment import WindowArrays
from ner_core.documents import BadRow, Document, document_from_text, document_from_tokens
from ner_core.predictor import WindowEncoder
from ner_core.text import Word
from pipelines.tagging.config import TagPlan
from pipelines.tagging.reader import ERROR, INTERNAL_PREFIX, RAW, check_output_clash, raw_row
from pipelines.tagging.model import cached_tokenizer

WINDOW_COLUMNS = ("__win_ids", "__win_words", "__win_first", "__win_end")
WORD_COLUMNS = ("__text", "__starts", "__ends")  # raw text rows: the text and each word's character span


@dataclass
class Prepared:
    """One batch's rows ready for the model, row for row.

    ``docs[i]`` is None for an error row, whose reason is ``errors[i]`` and whose input is
    kept as JSON in ``raws[i]``. ``windows`` are those of the good rows (``good()``), in order.
    """

    docs: list[Document | None]
    windows: WindowArrays
    errors: list[str | None]
    raws: list[str | None]

    def good(self) -> list[int]:
        """The rows that go to the model."""
        return [i for i, d in enumerate(self.docs) if d is not None]

    def tokens(self) -> pa.Array:
        """The ``tokens`` output column: each row's words (null for an error row)."""
        return pa.array([d.words if d is not None else None for d in self.docs], pa.list_(pa.string()))


def prepare(batch: pa.Table, plan: TagPlan) -> Prepared:
    """Each row's words (and character offsets for raw text) and subword windows."""
    errors = batch.column(ERROR).to_pylist()
    raws = batch.column(RAW).to_pylist()
    docs = _documents(batch, plan, errors, raws)
    encoder = WindowEncoder(cached_tokenizer(plan.model, plan.model_identity), plan.inference)
    return Prepared(docs, encoder.encode([d.words for d in docs if d is not None]), errors, raws)
def _documents(batch: pa.Table, plan: TagPlan, errors: list, raws: list) -> list[Document | None]:
    """One ``Document`` per row, or None where the row is an error (its reason put in ``errors``)."""
    column = plan.column
    values = batch.column(column).to_pylist() if column in batch.column_names else None
    present = [c for c in batch.column_names if not c.startswith(INTERNAL_PREFIX)]
    docs: list[Document | None] = []
    for i in range(batch.num_rows):
        doc = None
        if errors[i] is None:
            try:
                check_output_clash(batch.column_names, column, plan.pretokenized)
                row = {column: values[i]} if values is not None else dict.fromkeys(present)
                doc = document_from_tokens(row, column) if plan.pretokenized else document_from_text(row, column)
            except BadRow as exc:
                errors[i], raws[i] = str(exc), raws[i] or raw_row(batch, i)
        docs.append(doc)
    return docs


def input_columns(batch: pa.Table) -> pa.Table:
    """The batch without the columns preprocessing and tagging (re)write."""
    return batch.drop_columns([c for c in ("tokens", *WINDOW_COLUMNS, *WORD_COLUMNS, ERROR, RAW) if c in batch.column_names])


def preprocess(batch: pa.Table, plan: TagPlan) -> pa.Table:
    """The Ray Data task: the batch with its ``Prepared`` rows added as columns."""
    return to_columns(batch, prepare(batch, plan))


def to_columns(batch: pa.Table, prepared: Prepared) -> pa.Table:
    """``batch`` plus ``tokens``, the words' character spans and the windows, as Arrow columns."""
    docs, w = prepared.docs, prepared.windows

    def offsets(d: Document | None, end: bool):
        if d is None or d.offsets is None:
            return None
        return [x.end if end else x.start for x in d.offsets]

    # windows per row (0 for an error row), then positions per window: two levels of list offsets
    per_row = np.zeros(len(docs), np.int64)
    per_row[prepared.good()] = np.bincount(w.doc, minlength=len(prepared.good()))
    rows = pa.array(np.concatenate(([0], np.cumsum(per_row))).astype(np.int32))
    positions = pa.array(w.offsets.astype(np.int32))

    def nested(values: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(rows, pa.ListArray.from_arrays(positions, pa.array(values, pa.int32())))

    out = input_columns(batch)
    columns = {
        "tokens": prepared.tokens(),
        ERROR: pa.array(prepared.errors, pa.string()),
        RAW: pa.array(prepared.raws, pa.string()),
        "__text": pa.array([d.text if d is not None else None for d in docs], pa.string()),
        "__starts": pa.array([offsets(d, False) for d in docs], pa.list_(pa.int32())),
        "__ends": pa.array([offsets(d, True) for d in docs], pa.list_(pa.int32())),
        "__win_ids": nested(w.input_ids),
        "__win_words": nested(w.word_ids),
        "__win_first": pa.ListArray.from_arrays(rows, pa.array(w.first_word, pa.int32())),
        "__win_end": pa.ListArray.from_arrays(rows, pa.array(w.end_word, pa.int32())),
    }
    for name, values in columns.items():
        out = out.append_column(name, values)
    return out


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """A list column's per-row lengths (0 for null) and its values, whatever its chunks and slicing."""
    arr = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, arr.flatten()


def from_columns(batch: pa.Table) -> Prepared:
    """The ``Prepared`` rows back from ``to_columns``'s Arrow columns, the windows as arrays."""
    errors = batch.column(ERROR).to_pylist()
    tokens = batch.column("tokens").to_pylist()
    texts = batch.column("__text").to_pylist()
    starts, ends = batch.column("__starts").to_pylist(), batch.column("__ends").to_pylist()
    docs: list[Document | None] = []
    for i in range(batch.num_rows):
        if errors[i] is not None or tokens[i] is None:
            docs.append(None)
            continue
        offsets = None if texts[i] is None else [Word(t, s, e) for t, s, e in zip(tokens[i], starts[i], ends[i])]
        docs.append(Document(tokens[i], texts[i], offsets))
    per_row, inner = _flat(batch.column("__win_ids"))
    lengths = pc.list_value_length(inner).to_numpy().astype(np.int64)
    good = [i for i, d in enumerate(docs) if d is not None]
    windows = WindowArrays(
        inner.flatten().to_numpy().astype(np.int32),
        batch.column("__win_words").combine_chunks().flatten().flatten().to_numpy().astype(np.int32),
        np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        np.repeat(np.arange(len(good), dtype=np.int64), per_row[good]),
        _flat(batch.column("__win_first"))[1].to_numpy().astype(np.int64),
        _flat(batch.column("__win_end"))[1].to_numpy().astype(np.int64),
        np.array([len(docs[i].words) for i in good], np.int64),
    )
    return Prepared(docs, windows, errors, batch.column(RAW).to_pylist())
