"""Stage 2 of tagging (Ray Data tasks): rows -> words (+ character offsets) -> subword windows.

Where it runs is ``--preprocess``: in CPU tasks beside GPU actors, so the
tokenizer's work never stands between two forward passes on the GPU; in the
actor itself on CPU, where tasks beside it would take cores from the model's
threads (torch's threads wait for the slowest, so one busy core stalls them all).
Rows that cannot be tagged (no text, a column of the wrong type, a name that
clashes with an output column) become error rows here and skip the model.

Windows travel to the actor as three list columns per row (``__win_ids``,
``__win_words``, ``__win_span``); the actor turns them back into ``Window``
objects (``tag_actor._windows``): that Python round trip costs about 3% of the
actor's time next to the model (cProfile, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import pyarrow as pa

from ner_core.alignment import Window, encode_batch
from ner_core.documents import BadRow, Document, document_from_text, document_from_tokens
from pipelines.tag_config import TagPlan
from pipelines.tag_input import ERROR, INTERNAL_PREFIX, OUTPUT_COLUMNS, RAW, raw_row
from pipelines.tag_model import cached_tokenizer

WINDOW_COLUMNS = ("__win_ids", "__win_words", "__win_span")
WORD_COLUMNS = ("__text", "__starts", "__ends")  # raw text rows: the text and each word's character span


def _documents(batch: pa.Table, plan: TagPlan, errors: list, raws: list) -> list[Document | None]:
    """One ``Document`` per row, or None where the row is an error (its reason put in ``errors``)."""
    column = plan.column
    clashes = [c for c in OUTPUT_COLUMNS if c in batch.column_names and not (plan.pretokenized and c == column)]
    values = batch.column(column).to_pylist() if column in batch.column_names else None
    present = [c for c in batch.column_names if not c.startswith(INTERNAL_PREFIX)]
    docs: list[Document | None] = []
    for i in range(batch.num_rows):
        doc = None
        if errors[i] is None:
            try:
                if clashes:
                    raise BadRow(f"input column {clashes[0]!r} clashes with an output column of the same name")
                row = {column: values[i]} if values is not None else dict.fromkeys(present)
                doc = document_from_tokens(row, column) if plan.pretokenized else document_from_text(row, column)
            except BadRow as exc:
                errors[i], raws[i] = str(exc), raws[i] or raw_row(batch, i)
        docs.append(doc)
    return docs


def preprocess(batch: pa.Table, plan: TagPlan) -> pa.Table:
    """Adds ``tokens`` (the words), the words' character spans and the subword windows of each row."""
    errors = batch.column(ERROR).to_pylist()
    raws = batch.column(RAW).to_pylist()
    docs = _documents(batch, plan, errors, raws)
    good = [i for i, d in enumerate(docs) if d is not None]
    windows: list[list[Window]] = [[] for _ in docs]
    if good:
        tokenizer = cached_tokenizer(plan.model, plan.model_identity)
        encoded = encode_batch(tokenizer, [docs[i].words for i in good], max_length=plan.max_length, stride=plan.stride)
        for i, wins in zip(good, encoded):
            windows[i] = wins

    def offsets(d: Document | None, end: bool):
        if d is None or d.offsets is None:
            return None
        return [w.end if end else w.start for w in d.offsets]

    out = batch.drop_columns([c for c in ("tokens", ERROR, RAW) if c in batch.column_names])
    columns = {
        "tokens": pa.array([d.words if d is not None else None for d in docs], pa.list_(pa.string())),
        ERROR: pa.array(errors, pa.string()),
        RAW: pa.array(raws, pa.string()),
        "__text": pa.array([d.text if d is not None else None for d in docs], pa.string()),
        "__starts": pa.array([offsets(d, False) for d in docs], pa.list_(pa.int32())),
        "__ends": pa.array([offsets(d, True) for d in docs], pa.list_(pa.int32())),
        "__win_ids": pa.array([[w.input_ids for w in ws] for ws in windows], pa.list_(pa.list_(pa.int32()))),
        "__win_words": pa.array([[[-1 if x is None else x for x in w.word_ids] for w in ws] for ws in windows], pa.list_(pa.list_(pa.int32()))),
        "__win_span": pa.array([[[w.first_word, w.end_word] for w in ws] for ws in windows], pa.list_(pa.list_(pa.int32()))),
    }
    for name, values in columns.items():
        out = out.append_column(name, values)
    return out
