"""Streaming reader for the tagging job: Parquet/JSONL files -> blocks of rows, bad rows kept.

A Ray Data ``Datasource`` rather than ``read_parquet``/``read_json`` because
the job must account for every input row: Ray's JSON reader fails the whole
dataset on one malformed line, and neither reader says which file and row a
record came from. Here every row carries its source file key and row number
(``__src``, ``__row``); a row that cannot be parsed becomes an error row
(``__error`` = reason, ``__raw`` = the original content) that flows to
``_errors`` instead of stopping the job. Files are read in blocks of
``rows_per_block`` rows, so a file larger than memory still streams.

JSONL rows travel as their original text (``__raw``) plus the one column the
tagger reads: JSON has no schema, so a field may be ``3`` in one row and
``"d-4"`` in the next, or in the next file, and blocks typed independently
would disagree (Ray fails concatenating them) or need values re-encoded. The
writer gives each row's values back from its original text (see
``sink.TaggedOutputSink``; Parquet output types each column once per job
from ``scan_jsonl_columns``, which runs beside the tagging).

Small files share read tasks (``pack_files``, up to ``READ_TASK_BYTES`` a task) and
their rows share blocks, so a file costs a few requests, not a task and a block
of its own; a file stays the unit of commit, error accounting and resume: the
reader reports each one (``ReadReports``: the rows it read, or why it could not)
and knows nothing of the output's layout. A file that starts with a UTF-8
byte-order mark reads like any other.

A read that fails part-way through a file (a dropped connection, a 5xx) is
retried from the first row not yet passed on, with backoff; if it keeps
failing, the file is reported failed with its reason instead of read, so its
rows are discarded and the next run reads it again. A damaged file (a gzip or
Parquet file cut short) is reported failed at once: its bytes will not change.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import io
import json
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from fsspec.compression import compr
from fsspec.utils import infer_compression
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from ner_core.documents import BadRow, check_row
from pipelines.storage import fsspec_filesystem, is_s3, strip_scheme
from pipelines.tagging.config import exception_line

SRC, ROW, ERROR, RAW = "__src", "__row", "__error", "__raw"
INTERNAL_PREFIX = "__"
OUTPUT_COLUMNS = ("tokens", "labels", "scores", "entities", "all_scores")
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark: not part of the first row


def check_output_clash(columns, column: str | None, pre_split: bool) -> None:
    """``BadRow`` where an input column would be overwritten by an output column of the same name.

    A pre-split ``tokens`` column is the one read, and is written back as it was.
    """
    clash = next((c for c in OUTPUT_COLUMNS if c in columns and c != (column if pre_split else None)), None)
    if clash is not None:
        raise BadRow(f"input column {clash!r} clashes with an output column of the same name")


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


def raw_row(table: pa.Table, i: int) -> str:
    """Row ``i`` as JSON text (internal columns aside): the ``raw`` of an error record for a Parquet row."""
    row = {k: v for k, v in table.slice(i, 1).to_pylist()[0].items() if not k.startswith(INTERNAL_PREFIX)}
    return json.dumps(row, ensure_ascii=False, default=str)


def _error(key: str, row: int, reason: str, raw: str | None) -> dict[str, Any]:
    return {SRC: key, ROW: row, ERROR: reason, RAW: raw}


def read_jsonl(fh, key: str, rows_per_block: int, column: str | None = None, pre_split: bool = False, start: int = 0) -> Iterator[tuple[list[dict], int]]:
    """(records, lines read so far) per block; a record per non-blank line, row = line number - 1.

    A good record is ``{column: value, __src, __row, __raw: the line}``: the other fields
    stay in the line's text. Lines before ``start`` are skipped (a retried read).
    """
    block: list[dict] = []
    row = start - 1
    for row, line in enumerate(fh):
        if row < start:
            continue
        stripped = line.strip()
        if row == 0 and stripped.startswith(BOM):
            stripped = stripped[len(BOM) :].strip()  # Windows editors and spreadsheet exports start files with one
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
                    try:
                        check_output_clash(obj, column, pre_split)
                        if column is not None:
                            check_row(obj, column, pre_split)
                    except BadRow as exc:
                        block.append(_error(key, row, str(exc), text))
                    else:
                        block.append({column: obj.get(column), SRC: key, ROW: row, ERROR: None, RAW: text})
                else:
                    block.append(_error(key, row, f"a JSON {type(obj).__name__}, expected an object", text))
        if len(block) >= rows_per_block:
            yield block, row + 1
            block = []
    if block:
        yield block, row + 1


def jsonl_block(records: list[dict], column: str | None, pre_split: bool) -> pa.Table:
    """A JSONL block with the same columns and types whatever its rows hold."""
    value_type = pa.list_(pa.string()) if pre_split else pa.string()
    columns = {column: pa.array([r.get(column) for r in records], value_type)} if column is not None else {}
    return pa.table(
        {
            **columns,
            SRC: pa.array([r[SRC] for r in records], pa.string()),
            ROW: pa.array([r[ROW] for r in records], pa.int64()),
            ERROR: pa.array([r[ERROR] for r in records], pa.string()),
            RAW: pa.array([r[RAW] for r in records], pa.string()),
        }
    )


class FileReadFailed(Exception):
    """A file could not be read to its end: after every retry, or at once when it is damaged."""


# A file whose bytes are wrong (a gzip or Parquet file cut short, not gzip at all): every
# attempt reads the same bytes, so it is reported at once rather than retried like a drop.
DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile, pa.ArrowInvalid)
# Files are packed into read tasks of about this much input; a larger file has a task of its
# own. Each file also counts for its open and request, so a task of empty files ends too.
READ_TASK_BYTES = 1 << 20
FILE_COST_BYTES = 4 << 10
# Files up to this size are fetched whole, in one request (on S3 one GET, no HEAD), then parsed.
WHOLE_FILE_BYTES = 8 << 20


def pack_files(sources: list[tuple[str, str, int]], tasks: int | None = None) -> list[list[tuple[str, str, int]]]:
    """``sources`` ([(path, key, size)]) in order, cut into read tasks by size.

    ``tasks`` None: about ``READ_TASK_BYTES`` a task (as Ray Data's file datasources size
    theirs, here small so that a few files still read in parallel); else that many tasks
    of about equal size (at most one per file).
    """
    weights = [size + FILE_COST_BYTES for _, _, size in sources]
    if tasks is None:
        target = READ_TASK_BYTES
    else:
        target = sum(weights) / max(1, min(tasks, len(sources)))
    groups: list[list[tuple[str, str, int]]] = []
    current: list[tuple[str, str, int]] = []
    filled = 0.0
    for source, weight in zip(sources, weights):
        if current and filled + weight > target * 1.0001 and (tasks is None or len(groups) + 1 < tasks):
            groups.append(current)
            current, filled = [], 0.0
        current.append(source)
        filled += weight
    if current:
        groups.append(current)
    return groups


class TaggingInput(Datasource):
    """Reads ``sources`` ([(path, key, size)]) of one format; reports each file to ``reports``
    (``store.ReadReports``): the rows it read, or why it could not read them."""

    def __init__(
        self,
        sources: list[tuple[str, str, int]],
        fmt: str,
        reports,
        rows_per_block: int = 1024,
        column: str | None = None,
        pre_split: bool = False,
        read_attempts: int = 4,
        retry_delay_s: float = 1.0,
        read_tasks: int | None = None,
    ):
        super().__init__()
        self.reader = FileReader(fmt, rows_per_block, column, pre_split, read_attempts, retry_delay_s)
        self.reports = reports
        self.fmt = fmt
        self.groups = pack_files(sources, read_tasks)

    def get_name(self) -> str:
        return f"TaggingInput({self.fmt})"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        groups = self.groups if parallelism == len(self.groups) else pack_files([s for g in self.groups for s in g], parallelism)
        tasks = []
        for group in groups:
            meta = BlockMetadata(num_rows=None, size_bytes=sum(size for _, _, size in group), input_files=[p for p, _, _ in group], exec_stats=None)
            # each task carries its own files and the reader's settings, not every task's files
            tasks.append(ReadTask(functools.partial(read_files, group, self.reader, self.reports), meta))
        return tasks


def read_files(group: list[tuple[str, str, int]], reader: "FileReader", reports) -> Iterator[pa.Table]:
    """One read task: its files in order, the rows of small files sharing blocks of about
    ``rows_per_block`` rows (a file is still committed, counted and resumed on its own:
    every row keeps its file's key); each file reported once read to its end or given up."""
    pending: list[pa.Table] = []
    rows = 0
    for path, key, size in group:
        read = 0
        try:
            for table in reader.read_with_retries(path, key, size):
                read += table.num_rows
                if pending and not table.schema.equals(pending[0].schema):  # Parquet files with other columns
                    yield pa.concat_tables(pending)
                    pending, rows = [], 0
                    reports.flush()
                pending.append(table)
                rows += table.num_rows
                if rows >= reader.rows_per_block:
                    yield pa.concat_tables(pending)
                    pending, rows = [], 0
                    reports.flush()
        except FileReadFailed as exc:
            # never committed: the driver reports it, and its pieces are dropped
            reports.failed(key, path, str(exc))
            continue
        reports.read(key, path, read)
    if pending:
        yield pa.concat_tables(pending)
    reports.flush()


class FileReader:
    """How one file becomes blocks: the format, the column to check, block size and retries."""

    def __init__(self, fmt: str, rows_per_block: int, column: str | None, pre_split: bool, read_attempts: int, retry_delay_s: float):
        self.fmt = fmt
        self.rows_per_block = rows_per_block
        self.column = column  # checked on parsed JSON, where a wrong type is still visible
        self.pre_split = pre_split
        self.read_attempts = read_attempts
        self.retry_delay_s = retry_delay_s

    def read_with_retries(self, path: str, key: str, size: int | None = None) -> Iterator[pa.Table]:
        """The file's blocks, each exactly once: a failed read resumes after the last block passed on."""
        done = 0  # JSONL: lines, Parquet: rows, already passed on
        unit = "line" if self.fmt == "jsonl" else "row"
        for attempt in range(self.read_attempts):
            try:
                for table, upto in self._read_file(path, key, done, size):
                    yield table
                    done = upto
                return
            except DAMAGED as exc:
                raise FileReadFailed(
                    f"damaged file ({exception_line(exc)}, after {unit} {done}): not retried, and running the job again "
                    "will not help until the file is replaced or removed"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - storage clients raise their own types (aiohttp, botocore); rows are parsed per line elsewhere
                reason = exception_line(exc)
                if attempt + 1 < self.read_attempts:
                    time.sleep(self.retry_delay_s * 2**attempt)
        raise FileReadFailed(f"read failed {self.read_attempts} times, last at {unit} {done}: {reason}")

    def _read_file(self, path: str, key: str, start: int, size: int | None) -> Iterator[tuple[pa.Table, int]]:
        with open_input(path, size, compressed=self.fmt == "jsonl") as fh:
            if self.fmt == "jsonl":
                for records, next_line in read_jsonl(fh, key, self.rows_per_block, self.column, self.pre_split, start):
                    yield jsonl_block(records, self.column, self.pre_split), next_line
                return
            yield from self._read_parquet(fh, key, start)

    def _read_parquet(self, fh, key: str, start: int) -> Iterator[tuple[pa.Table, int]]:
        import pyarrow.parquet as pq

        rows = 0
        pf = pq.ParquetFile(fh)
        for batch in pf.iter_batches(batch_size=self.rows_per_block):
            table = pa.Table.from_batches([batch])
            if rows + table.num_rows <= start:
                rows += table.num_rows
                continue
            table = table.slice(max(0, start - rows))
            rows = max(rows, start)
            table = table.select([c for c in table.column_names if not c.startswith(INTERNAL_PREFIX)])
            n = table.num_rows
            table = (
                table.append_column(SRC, pa.array([key] * n, pa.string()))
                .append_column(ROW, pa.array(range(rows, rows + n), pa.int64()))
                .append_column(ERROR, pa.nulls(n, pa.string()))
                .append_column(RAW, pa.nulls(n, pa.string()))
            )
            rows += n
            yield table, rows


@contextlib.contextmanager
def open_input(path: str, size: int | None, compressed: bool):
    """A binary file object over ``path``'s content (decompressed, if ``compressed`` and its name says
    gzip etc.): a small file fetched whole in one request, a large one streamed."""
    fs = fsspec_filesystem(path)
    bare = strip_scheme(path) if is_s3(path) else path
    codec = infer_compression(path) if compressed else None
    if size is not None and size <= WHOLE_FILE_BYTES:
        # one GET: s3fs would first ask the size (a HEAD) to fetch a large object in parts
        raw = io.BytesIO(fs.cat_file(bare, max_concurrency=1) if is_s3(path) else fs.cat_file(bare))
        with (compr[codec](raw, mode="rb") if codec else raw) as fh:
            yield fh
        return
    with fs.open(bare, "rb", compression=codec) as fh:
        yield fh


# --- one Parquet type per JSONL field, for the whole job ----------------------------------


def _unify(a: pa.DataType | None, b: pa.DataType) -> pa.DataType:
    if a is None or a == b:
        return b
    return pa.unify_schemas([pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive").field("x").type


def _taggable(obj: dict, column: str | None, pre_split: bool) -> bool:
    """Would ``read_jsonl`` pass this object on (not turn it into an error row)?"""
    try:
        check_output_clash(obj, column, pre_split)
        if column is not None:
            check_row(obj, column, pre_split)
    except BadRow:
        return False
    return True


def _scan_types(path: str, rows_per_block: int, column: str | None, pre_split: bool, size: int | None = None) -> dict[str, str | None]:
    """Each field of one JSONL file -> its Arrow type over the rows that will be tagged (IPC,
    base64), or None: no one type fits. Error rows do not count: they go to ``_errors`` as read."""
    types: dict[str, pa.DataType | None] = {}
    block: list[dict] = []

    def add(rows: list[dict]) -> None:
        names = dict.fromkeys(k for r in rows for k in r if not k.startswith(INTERNAL_PREFIX) and k not in OUTPUT_COLUMNS)
        for name in names:
            if name in types and types[name] is None:
                continue
            try:
                types[name] = _unify(types.get(name), pa.array([r.get(name) for r in rows]).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError):
                types[name] = None

    try:
        with open_input(path, size, compressed=True) as fh:
            for i, line in enumerate(fh):
                if i == 0 and line.startswith(BOM):
                    line = line[len(BOM) :]
                try:
                    obj = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue  # an error row: it is written to _errors as it was read
                if isinstance(obj, dict) and _taggable(obj, column, pre_split):
                    block.append(obj)
                if len(block) >= rows_per_block:
                    add(block)
                    block = []
    except Exception:  # noqa: BLE001 - the tagging read retries it and reports the file if it keeps failing
        return {}
    if block:
        add(block)
    return {name: None if t is None else encode_type(t) for name, t in types.items()}


def encode_type(t: pa.DataType) -> str:
    return base64.b64encode(pa.schema([("x", t)]).serialize().to_pybytes()).decode()


def decode_type(text: str) -> pa.DataType:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text))).field("x").type


def scan_jsonl_columns(files: dict[str, int], rows_per_block: int, column: str | None, pre_split: bool, task_args: dict):
    """Starts a scan of every field of every file; returns its ``ObjectRef`` at once.

    The ref resolves to field -> one Arrow type for the job (encoded), or None: stored as
    JSON text. Parquet needs one type per column in every file of the output, and a JSON
    field's type is only known after every row has been seen; so this pass reads the input
    once (no model). It runs beside the tagging instead of before it: the sink waits for it
    at its first write, so the first rows are tagged sooner, by more the larger the corpus.

    In a quarter of the cluster's CPUs' worth of tasks at most, one at least, each scanning
    its share of the files in turn: one task per file started a Ray worker process per file
    just as the tagging actor was loading its model, and delayed its first rows.
    """
    import ray

    paths = list(files)
    tasks = max(1, min(len(paths), int(ray.cluster_resources().get("CPU", 1)) // 4))
    scan = ray.remote(**task_args)(_scan_files)
    refs = [scan.remote(paths[i::tasks], rows_per_block, column, pre_split, [files[p] for p in paths[i::tasks]]) for i in range(tasks)]
    return refs[0] if len(refs) == 1 else ray.remote(**task_args)(merge_jsonl_types).remote(*refs)


def _scan_files(paths: list[str], rows_per_block: int, column: str | None, pre_split: bool, sizes: list[int] | None = None) -> dict[str, str | None]:
    """``_scan_types`` of several files, one after another, merged (``merge_jsonl_types``)."""
    sizes = sizes or [None] * len(paths)
    return merge_jsonl_types(*(_scan_types(p, rows_per_block, column, pre_split, n) for p, n in zip(paths, sizes)))


def merge_jsonl_types(*per_file: dict[str, str | None]) -> dict[str, str | None]:
    """The files' field types -> one type per field that holds every value, or None (JSON text)."""
    merged: dict[str, pa.DataType | None] = {}
    for found in per_file:
        for name, encoded in found.items():
            if name in merged and merged[name] is None:
                continue
            if encoded is None:
                merged[name] = None
                continue
            try:
                merged[name] = _unify(merged.get(name), decode_type(encoded))
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                merged[name] = None
    return {name: None if t is None else encode_type(t) for name, t in merged.items()}
