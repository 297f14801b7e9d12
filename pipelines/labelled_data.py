"""Labelled data (tokens + tags) into Ray Data: CoNLL, Parquet or JSONL, local or s3://.

Every format is read in Ray Data tasks from the files' bytes, so each row
keeps its source file and line/row number: a bad line fails the job with
``file:line: reason`` instead of a stack trace from deep inside a reader.
Tags are normalised to IOB2 in the same tasks; tokenization and label
alignment for training are a further ``map_batches`` step.
"""

from __future__ import annotations

import io
import json
import os
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from ner_core.alignment import encode_batch
from ner_core.conll import (
    ConllFormatError,
    check_documents,
    decode_conll_bytes,
    document_contexts,
    infer_documents,
    parse_conll_text,
)
from ner_core.labels import InvalidTagError, LabelMap, convert_scheme, find_invalid, labels_from_sequences, split_tag
from pipelines.storage import arrow_filesystem, expand_inputs, strip_scheme, is_s3

CONLL_EXTENSIONS = (".txt", ".conll", ".bio", ".iob", ".tsv", ".conllu")
FORMAT_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}

ROW_SCHEMA = pa.schema(
    [
        ("tokens", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
        ("source", pa.string()),
        ("line", pa.int64()),
        # words around the sentence in its document (CoNLL -DOCSTART- documents only); see
        # ner_core.alignment: the model reads them, they carry no labels
        ("context_left", pa.list_(pa.string())),
        ("context_right", pa.list_(pa.string())),
    ]
)


def file_format(path: str) -> str:
    return FORMAT_EXTENSIONS.get(os.path.splitext(path)[1].lower(), "conll")


def _rows_from_records(records, source: str) -> list[dict]:
    """Parquet/JSONL records -> rows; ``line`` is the 1-based row (JSONL: line) number."""
    rows = []
    for line, rec in records:
        if not isinstance(rec, dict) or "tokens" not in rec or "tags" not in rec:
            raise ConllFormatError(source, line, "a row needs list columns 'tokens' and 'tags'")
        tokens, tags = rec["tokens"], rec["tags"]
        if not isinstance(tokens, (list, np.ndarray)) or not isinstance(tags, (list, np.ndarray)):
            raise ConllFormatError(source, line, "'tokens' and 'tags' must be lists of strings")
        tokens, tags = [str(t) for t in tokens], [str(t) for t in tags]
        if len(tokens) != len(tags):
            raise ConllFormatError(source, line, f"{len(tokens)} tokens but {len(tags)} tags")
        for i, tag in enumerate(tags):
            try:
                split_tag(tag)
            except InvalidTagError as exc:
                raise ConllFormatError(source, line, f"token {i}: {exc}") from None
        rows.append({"tokens": tokens, "tags": tags, "source": source, "line": line, "context_left": [], "context_right": []})
    return rows


def _parse_file(row: dict, token_column: int, tag_column: int, context_words: int = 0, documents: str = "markers") -> list[dict]:
    source = row["path"]
    if not os.path.isabs(source) and not is_s3(source):
        source = "s3://" + source  # a PyFileSystem over s3fs reports bucket/key
    data: bytes = row["bytes"]
    fmt = file_format(source)
    if fmt == "conll":
        text = decode_conll_bytes(data, source)
        sentences = parse_conll_text(text, source, token_column, tag_column)
        if documents == "datelines":
            sentences = infer_documents(sentences)
        contexts = document_contexts(sentences, context_words)
        return [
            {"tokens": s.tokens, "tags": s.tags, "source": s.source, "line": s.line, "context_left": left, "context_right": right}
            for s, (left, right) in zip(sentences, contexts)
        ]
    if fmt == "jsonl":
        records = []
        for lineno, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                records.append((lineno, json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConllFormatError(source, lineno, f"not a JSON object: {exc}") from None
        rows = _rows_from_records(records, source)
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data), columns=["tokens", "tags"])
        except Exception as exc:  # corrupt file or missing columns: say which file
            raise ConllFormatError(source, 0, f"cannot read Parquet tokens/tags columns: {exc}") from None
        rows = _rows_from_records(enumerate(table.to_pylist(), start=1), source)
    if not rows:
        raise ConllFormatError(source, 0, "no sentences (empty file?)")
    return rows


def _normalise(batch: pa.Table, scheme: str, repair_invalid: bool) -> pa.Table:
    """Tags -> valid IOB2; an invalid sequence is an error naming its line unless repair is asked for."""
    tokens, tags = batch.column("tokens").to_pylist(), batch.column("tags").to_pylist()
    sources, lines = batch.column("source").to_pylist(), batch.column("line").to_pylist()
    out_tags = []
    for seq, source, line in zip(tags, sources, lines):
        if scheme != "IOB1":
            problems = find_invalid(seq, scheme)
            if problems and not repair_invalid:
                idx, reason = problems[0]
                # CoNLL: one token per line, so token idx sits idx lines below the sentence start
                where = line + idx if file_format(source) == "conll" else line
                raise ConllFormatError(source, where, f"invalid {scheme} sequence: {reason} (set repair_invalid / --repair-invalid to fix such sequences)")
        out_tags.append(convert_scheme(seq, scheme, "IOB2"))
    return pa.table(
        {
            "tokens": tokens,
            "tags": out_tags,
            "source": sources,
            "line": lines,
            "context_left": batch.column("context_left"),
            "context_right": batch.column("context_right"),
        },
        schema=ROW_SCHEMA,
    )


def labelled_files(path: str) -> list[str]:
    """Every labelled file (CoNLL, JSONL, Parquet) under a file, folder or glob; FileNotFoundError if none."""
    return expand_inputs(path, CONLL_EXTENSIONS + tuple(FORMAT_EXTENSIONS))


def read_labelled(
    path: str,
    *,
    scheme: str = "IOB2",
    repair_invalid: bool = False,
    token_column: int = 0,
    tag_column: int = -1,
    context_words: int = 0,
    documents: str = "markers",
) -> ray.data.Dataset:
    """Rows ``tokens, tags (IOB2), source, line, context_left, context_right`` from every labelled file under ``path``.

    ``context_words``: how many words of the sentence's document to keep on each
    side (CoNLL files only; empty otherwise). ``documents``: where a CoNLL file's
    documents come from, its ``-DOCSTART-`` lines (``markers``), or, in a file
    without them, Reuters datelines (``datelines``, see ``ner_core.conll.infer_documents``).
    """
    check_documents(documents)
    files = labelled_files(path)
    # Let a data error reach the driver as itself (ConllFormatError with file:line),
    # not as a generic "UDF failed" wrapper whose cause is lost in pickling.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    fs = arrow_filesystem(path)
    paths = [strip_scheme(f) for f in files] if fs is not None else files
    ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=fs, num_cpus=0.25)
    ds = ds.flat_map(
        _parse_file,
        fn_kwargs={"token_column": token_column, "tag_column": tag_column, "context_words": context_words, "documents": documents},
        num_cpus=0.25,
    )
    return ds.map_batches(
        _normalise, batch_format="pyarrow", fn_kwargs={"scheme": scheme, "repair_invalid": repair_invalid}, num_cpus=0.25
    )


def rows_with_context(ds: ray.data.Dataset) -> int:
    """How many sentences of ``ds`` carry document context (a neighbour on either side).

    Context comes only from ``-DOCSTART-`` documents, and some copies of a corpus
    have none (this project's CoNLL-2003 train and dev files do not): a run asking for
    context on such data would otherwise train without it and not say so.
    """

    def count(batch: pa.Table) -> pa.Table:
        left = pc.list_value_length(batch.column("context_left"))
        right = pc.list_value_length(batch.column("context_right"))
        n = pc.sum(pc.or_(pc.greater(left, 0), pc.greater(right, 0))).as_py() or 0
        return pa.table({"n": pa.array([n], pa.int64())})

    return sum(row["n"] for row in ds.map_batches(count, batch_format="pyarrow", num_cpus=0.25).take_all())


def collect_labels(ds: ray.data.Dataset) -> list[str]:
    """The complete IOB2 label list of the entity types in ``ds``."""

    def tag_set(batch: pa.Table) -> pa.Table:
        seen = sorted({t for seq in batch.column("tags").to_pylist() for t in seq})
        return pa.table({"tag": pa.array(seen, pa.string())})

    tags = {row["tag"] for row in ds.map_batches(tag_set, batch_format="pyarrow", num_cpus=0.25).take_all()}
    return labels_from_sequences([sorted(tags)], "IOB2")


@lru_cache(maxsize=4)
def _tokenizer(path: str, case_markers: bool):
    from ner_core.tagger import load_tokenizer

    return load_tokenizer(path, case_markers=case_markers)


TRAIN_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("length", pa.int32()),
    ]
)


def _encode(
    batch: pa.Table,
    tokenizer_path: str,
    case_markers: bool,
    labels: tuple[str, ...],
    max_length: int,
    stride: int,
    context_length: int = 0,
) -> pa.Table:
    tokenizer = _tokenizer(tokenizer_path, case_markers)
    label_map = LabelMap(labels)
    tokens = batch.column("tokens").to_pylist()
    sources, lines = batch.column("source").to_pylist(), batch.column("line").to_pylist()
    label_ids = []
    for seq, source, line in zip(batch.column("tags").to_pylist(), sources, lines):
        try:
            label_ids.append(label_map.encode(seq))
        except ValueError as exc:
            raise ConllFormatError(source, line, str(exc)) from None
    contexts = None
    if context_length > 0:
        contexts = list(zip(batch.column("context_left").to_pylist(), batch.column("context_right").to_pylist()))
    windows = encode_batch(
        tokenizer, tokens, label_ids, max_length=max_length, stride=stride, contexts=contexts, context_length=context_length
    )
    ids, labs, lengths = [], [], []
    for wins in windows:
        for w in wins:
            ids.append(w.input_ids)
            labs.append(w.labels)
            lengths.append(len(w.input_ids))
    return pa.table({"input_ids": ids, "labels": labs, "length": lengths}, schema=TRAIN_SCHEMA)


def encode_for_training(
    ds: ray.data.Dataset,
    tokenizer_path: str,
    labels: LabelMap,
    max_length: int,
    stride: int,
    case_markers: bool = False,
    context_length: int = 0,
) -> ray.data.Dataset:
    """Tokenize and align in Ray Data tasks: one row per window, labels on first subwords.

    ``case_markers``: encode with the word-case marker tokens (``ner_core.casing``)
    added to the tokenizer, exactly as the training workers' tokenizer has them.
    """
    return ds.map_batches(
        _encode,
        batch_format="pyarrow",
        batch_size=256,
        fn_kwargs={
            "tokenizer_path": tokenizer_path,
            "case_markers": case_markers,
            "labels": labels.labels,
            "max_length": max_length,
            "stride": stride,
            "context_length": context_length,
        },
        num_cpus=0.25,
    )


def unwrap_data_error(exc: BaseException) -> ConllFormatError | None:
    """The ConllFormatError behind a Ray task/data failure, if that is what it was."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConllFormatError):
            return ConllFormatError(exc.source, exc.line, exc.reason)
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None
