"""Stage 4 of tagging: a Ray Data datasink that writes tagged rows and error rows per source file.

Each write call gets the blocks of one output task and writes, per source file,
one piece of tagged rows and one piece of error records into the output's
staging area (``store.OutputStore``). The driver commits a source file once
all its rows are there, so the output only ever holds whole files.

JSONL input comes back field for field from each row's original line (values
exactly as read); to Parquet, each field gets one type for the whole job
(``reader.scan_jsonl_columns``, which runs beside the tagging), or JSON text when
its type varies.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import Datasink

from pipelines.tagging.reader import ERROR, INTERNAL_PREFIX, OUTPUT_COLUMNS, RAW, ROW, SRC, decode_type
from pipelines.tagging.store import OutputStore, Piece, jsonl_bytes, parquet_bytes

log = logging.getLogger(__name__)


class TaggedOutputSink(Datasink):
    """Ray Data datasink: each block's rows -> one tagged piece and one error piece per source file."""

    def __init__(
        self,
        output: str,
        output_format: str,
        sources: dict[str, str],
        id_column: str | None,
        rows_per_file: int = 10_000,
        input_format: str = "parquet",
        jsonl_types: dict[str, str | None] | None = None,
    ):
        self.output = output
        self.input_format = input_format
        # JSONL -> Parquet: field -> its type for the job, None: JSON text; or the ObjectRef of
        # the scan still running beside the tagging (reader.scan_jsonl_columns)
        self.jsonl_types = jsonl_types if jsonl_types is not None else {}
        self.rows_per_file = rows_per_file
        self.output_format = output_format
        self.sources = sources
        self.id_column = id_column
        self.totals: dict[str, int] = {}

    def get_name(self) -> str:
        return "TaggedOutput"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks, ctx) -> dict[str, int]:
        store = OutputStore(self.output)
        tables = [b for b in blocks if b.num_rows]
        if not tables:
            return {"rows_written": 0, "rows_failed": 0, "words": 0, "subwords": 0}
        # JSONL blocks may disagree on a column's type (null in one, string in another)
        block = pa.concat_tables(tables, promote_options="permissive")
        # Sorted by source, each file's rows are one slice: a block holding many small files
        # costs one sort, not one pass over the block per file.
        block = block.sort_by([(SRC, "ascending"), (ROW, "ascending")])
        failed = block.num_rows - block.column(ERROR).null_count
        stats = {
            "rows_written": block.num_rows - failed,
            "rows_failed": failed,
            "words": pc.sum(pc.list_value_length(block.column("tokens"))).as_py() or 0,  # error rows: no tokens
            "subwords": pc.sum(block.column("__subwords")).as_py() or 0,
        }
        for start, end in source_runs(block.column(SRC)):
            part = block.slice(start, end - start)
            key, rows = part.column(SRC)[0].as_py(), end - start
            good = part.column(ERROR).null_count
            if good == rows:
                self._write_ok(store, key, part)
            elif good == 0:
                self._write_errors(store, key, part)
            else:
                failed_mask = pc.is_valid(part.column(ERROR))
                self._write_ok(store, key, part.filter(pc.invert(failed_mask)))
                self._write_errors(store, key, part.filter(failed_mask))
        return stats

    def _write_ok(self, store: OutputStore, key: str, rows: pa.Table) -> None:
        """One piece of ``key``'s tagged rows (sorted by row)."""
        if rows.num_rows == 0:
            return
        first = rows.column(ROW)[0].as_py()
        if self.input_format == "jsonl":
            # Input fields from each row's original line, so values come back exactly as read.
            fields = [input_fields(raw) for raw in rows.column(RAW).to_pylist()]
            outputs = rows.select([c for c in OUTPUT_COLUMNS if c in rows.column_names])
            if self.output_format == "parquet":
                typed = self._typed_fields(fields)
                data = parquet_bytes(pa.Table.from_arrays([*typed.columns, *outputs.columns], names=[*typed.column_names, *outputs.column_names]))
            else:
                data = jsonl_bytes([{**f, **o} for f, o in zip(fields, outputs.to_pylist())])
        else:
            table = rows.drop_columns([c for c in rows.column_names if c.startswith(INTERNAL_PREFIX)])
            data = parquet_bytes(table) if self.output_format == "parquet" else jsonl_bytes(table.to_pylist())
        store.write_piece(key, Piece("ok", first, rows.num_rows, self.output_format), data)

    def _typed_fields(self, fields: list[dict]) -> pa.Table:
        """JSONL fields as Parquet columns of the job's types: the same in every output file.

        A field without one type across the whole input (``3`` here, ``"d-4"`` there) is
        stored as the JSON text of each value (null stays null): ``json.loads`` gives the value back.
        """
        if not isinstance(self.jsonl_types, dict):  # the first write of this task waits for the scan
            import ray

            self.jsonl_types = ray.get(self.jsonl_types)
        names = list(self.jsonl_types) + [n for n in dict.fromkeys(k for f in fields for k in f) if n not in self.jsonl_types]
        columns = {}
        for name in names:
            values = [f.get(name) for f in fields]
            encoded = self.jsonl_types.get(name)
            if encoded is not None:
                try:
                    columns[name] = pa.array(values, decode_type(encoded))
                    continue
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    log.warning("field %r does not fit its type %s here; stored as JSON text", name, decode_type(encoded))
            columns[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
        return pa.table(columns) if columns else pa.table({})

    def _ids(self, rows: pa.Table) -> list | None:
        if not self.id_column:
            return None
        if self.id_column in rows.column_names:
            return rows.column(self.id_column).to_pylist()
        if self.input_format != "jsonl":
            return None
        return [(input_fields(raw) if raw else {}).get(self.id_column) for raw in rows.column(RAW).to_pylist()]

    def _write_errors(self, store: OutputStore, key: str, rows: pa.Table) -> None:
        """One piece of ``key``'s error records (rows sorted by row)."""
        if rows.num_rows == 0:
            return
        ids = self._ids(rows)
        records = []
        for j, (row, reason, raw) in enumerate(zip(rows.column(ROW).to_pylist(), rows.column(ERROR).to_pylist(), rows.column(RAW).to_pylist())):
            record = {"source": self.sources.get(key, key), "row": row, "reason": reason, "raw": raw}
            if ids is not None:
                record["id"] = ids[j]
            records.append(record)
        store.write_piece(key, Piece("err", records[0]["row"], len(records), "jsonl"), jsonl_bytes(records))

    def on_write_complete(self, write_result) -> None:
        for stats in write_result.write_returns:
            for k, v in (stats or {}).items():
                self.totals[k] = self.totals.get(k, 0) + v


def source_runs(sources: pa.ChunkedArray) -> list[tuple[int, int]]:
    """``[(start, end)]`` of each run of equal values in a sorted column (one run per source file)."""
    import numpy as np

    keys = sources.combine_chunks()
    n = len(keys)
    changes = np.flatnonzero(pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)) + 1 if n > 1 else np.array([], int)
    bounds = [0, *changes.tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


def input_fields(raw: str) -> dict:
    """A JSONL row's own fields, as read (output columns and internal ``__`` names aside); {} if not an object."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if not k.startswith(INTERNAL_PREFIX) and k not in OUTPUT_COLUMNS}
