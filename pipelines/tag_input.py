"""Streaming reader for the tagging job: Parquet/JSONL files -> blocks of rows, bad rows kept.

A Ray Data ``Datasource`` rather than ``read_parquet``/``read_json`` because
the job must account for every input row: Ray's JSON reader fails the whole
dataset on one malformed line, and neither reader says which file and row a
record came from. Here every row carries its source file key and row number
(``__src``, ``__row``); a row that cannot be parsed becomes an error row
(``__error`` = reason, ``__raw`` = the original content) that flows to
``_errors`` instead of stopping the job. Files are read in blocks of
``rows_per_block`` rows, so a file larger than memory still streams.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ner_core.documents import BadRow, check_row
from pipelines.storage import fsspec_filesystem, is_s3, strip_scheme
from pipelines.tag_store import OutputStore

SRC, ROW, ERROR, RAW = "__src", "__row", "__error", "__raw"
INTERNAL_PREFIX = "__"


def _column(values: list[Any]) -> pa.Array:
    """Arrow array for one JSON field; a field whose rows disagree on type is kept as JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values], pa.string())


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Rows with possibly different keys -> one table (missing keys are null)."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    return pa.table({n: _column([r.get(n) for r in records]) for n in names})


def _error(key: str, row: int, reason: str, raw: str | None) -> dict[str, Any]:
    return {SRC: key, ROW: row, ERROR: reason, RAW: raw}


def read_jsonl(fh, key: str, rows_per_block: int, column: str | None = None, pre_split: bool = False) -> Iterator[tuple[list[dict], int]]:
    """(records, lines read so far) per block; a record per non-blank line, row = line number - 1."""
    block: list[dict] = []
    row = -1
    for row, line in enumerate(fh):
        stripped = line.strip()
        if not stripped:
            continue  # blank lines separate nothing in JSONL; they are not rows
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as exc:
            block.append(_error(key, row, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", stripped.decode("utf-8", "backslashreplace")))
        else:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                block.append(_error(key, row, f"malformed JSON: {exc.msg} at column {exc.colno}", text))
            else:
                if isinstance(obj, dict):
                    obj = {k: v for k, v in obj.items() if not k.startswith(INTERNAL_PREFIX)}
                    try:
                        if column is not None:
                            check_row(obj, column, pre_split)
                    except BadRow as exc:
                        block.append(_error(key, row, str(exc), text))
                    else:
                        block.append({**obj, SRC: key, ROW: row, ERROR: None, RAW: None})
                else:
                    block.append(_error(key, row, f"a JSON {type(obj).__name__}, expected an object", text))
        if len(block) >= rows_per_block:
            yield block, row + 1
            block = []
    if block:
        yield block, row + 1


class TaggingInput(Datasource):
    """Reads ``sources`` ([(path, key)]) of one format; writes each file's row count to the store when done."""

    def __init__(self, sources: list[tuple[str, str]], fmt: str, output: str, rows_per_block: int = 1024, column: str | None = None, pre_split: bool = False):
        super().__init__()
        self.column = column  # checked on parsed JSON, where a wrong type is still visible
        self.pre_split = pre_split
        self.sources = sources
        self.fmt = fmt
        self.output = output
        self.rows_per_block = rows_per_block

    def get_name(self) -> str:
        return f"TaggingInput({self.fmt})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        n = max(1, min(parallelism, len(self.sources)))
        tasks = []
        for i in range(n):
            group = self.sources[i::n]
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[p for p, _ in group], exec_stats=None)
            tasks.append(ReadTask(lambda group=group: self._read_group(group), meta))
        return tasks

    def _read_group(self, group: list[tuple[str, str]]) -> Iterator[pa.Table]:
        store = OutputStore(self.output)
        for path, key in group:
            records = 0
            for table in self._read_file(path, key):
                records += table.num_rows
                yield table
            store.mark_read(key, path, records)

    def _read_file(self, path: str, key: str) -> Iterator[pa.Table]:
        fs = fsspec_filesystem(path)
        bare = strip_scheme(path) if is_s3(path) else path
        if self.fmt == "jsonl":
            next_line = 0
            try:
                with fs.open(bare, "rb", compression="infer") as fh:
                    for records, next_line in read_jsonl(fh, key, self.rows_per_block, self.column, self.pre_split):
                        yield records_to_table(records)
            except (OSError, EOFError, ValueError) as exc:
                # The file became unreadable part-way (truncated gzip, storage error): what is
                # left of it is one error record, so the file is still accounted for.
                yield records_to_table([_error(key, next_line, f"file unreadable after line {next_line}: {exc}", None)])
            return
        yield from self._read_parquet(fs, bare, key)

    def _read_parquet(self, fs, bare: str, key: str) -> Iterator[pa.Table]:
        import pyarrow.parquet as pq

        rows = 0
        try:
            with fs.open(bare, "rb") as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=self.rows_per_block):
                    table = pa.Table.from_batches([batch])
                    table = table.select([c for c in table.column_names if not c.startswith(INTERNAL_PREFIX)])
                    n = table.num_rows
                    table = (
                        table.append_column(SRC, pa.array([key] * n, pa.string()))
                        .append_column(ROW, pa.array(range(rows, rows + n), pa.int64()))
                        .append_column(ERROR, pa.nulls(n, pa.string()))
                        .append_column(RAW, pa.nulls(n, pa.string()))
                    )
                    rows += n
                    yield table
        except (OSError, pa.ArrowException, ValueError) as exc:
            # Corrupt or truncated file: the rows we could not read are one error record
            # (their number is unknown), so the file is still accounted for.
            where = f"rows from {rows} on" if rows else "whole file"
            yield records_to_table([_error(key, rows, f"unreadable Parquet ({where}): {exc}", None)])
