"""The tagging job's output folder: staged pieces, commits of many source files at a time, resume.

Layout of ``OUT`` (local or ``s3://``)::

    <key>.<first_row>-<rows>.parquet   tagged rows of one source file (several pieces per file)
    _errors/<key>.<first_row>-<rows>.jsonl   rows that could not be tagged, with reasons
    _done/<id>.json                    commit marker of the source files one commit pass made
                                       whole: {"files": {key: {source, rows_read, rows_written,
                                       rows_failed}}} (``_done/<key>.json``, one file each, from
                                       outputs begun before issue 27, still counts)
    _staging/<key>.<first_row>-<rows>.<ok|err>.<ext>   pieces of files still in progress
    _staging/_reads.<id>.json          what a read task saw, many files per report:
                                       {key: {source, rows}} or {key: {source, failed: reason}}
    _job.json                          the settings the output was made with
    _manifest.json                     row counts and settings, written last

Why this shape: a source file's pieces are written to ``_staging`` by Ray
Data write tasks (each piece atomically: a rename locally, a single PUT on
S3) and moved into view only when *every* row of that file is accounted for:
the reader's report says how many rows it saw (the reader reports, ``ReadReports``
writes), and piece names carry their first row and row count, so completeness is
a listing, not a read, and a retried write task overwrites its own piece instead
of duplicating it. Staging is flat, so one commit pass costs one listing for all
files, and the files it finds complete get one ``_done`` marker together.

What a reader of ``OUT`` may rely on (Ray, Spark and pyarrow skip ``_`` names):

- every data file in view is whole, and holds rows of one source file only;
- a source file listed in a ``_done`` marker has all its pieces in view, each once;
  the marker is written after its files' pieces are moved, so between the moves and
  the marker (a commit pass in progress, or one a kill cut short, which the next run
  completes) some of a file's pieces may be in view before the rest;
- ``_manifest.json`` is written last, after every commit of the run, and a run that has
  files to add removes an earlier run's manifest first: an output with a manifest whose
  ``files_failed`` is empty holds every input row once, tagged or in ``_errors``. Wait for
  it (as for Spark's ``_SUCCESS``) before reading a whole output.

A killed job leaves committed files in view and the rest in staging; the next
run commits what is complete (``resume``), clears the rest and tags only the files
no ``_done`` marker lists.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import time
import uuid
from dataclasses import dataclass

import fsspec

from pipelines.storage import fsspec_filesystem, is_s3, strip_scheme

REPORT_PREFIX = "_reads."

_STAGED = re.compile(r"^(?P<key>[A-Za-z0-9_-]+)\.(?P<first>\d{10})-(?P<rows>\d+)\.(?P<kind>ok|err)\.(?P<ext>parquet|jsonl)$")
_FINAL = re.compile(r"^(?P<key>[A-Za-z0-9_-]+)\.(?P<first>\d{10})-(?P<rows>\d+)\.(?P<ext>parquet|jsonl)$")


def source_key(path: str) -> str:
    """A stable, filesystem-safe name for an input file: readable stem + hash of the full path."""
    stem = os.path.basename(path.rstrip("/")).split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:48] or "part"
    return f"{stem}-{hashlib.sha1(path.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Piece:
    kind: str  # "ok" (tagged rows) or "err" (error records)
    first_row: int
    rows: int
    ext: str

    def staged_name(self, key: str) -> str:
        return f"{key}.{self.first_row:010d}-{self.rows}.{self.kind}.{self.ext}"

    def final_name(self, key: str) -> str:
        return f"{key}.{self.first_row:010d}-{self.rows}.{self.ext}"


class OutputStore:
    """Paths, atomic file operations and the commit protocol under one output root.

    The driver's instance remembers what it read of ``_done`` and ``_staging`` (both only
    ever grow under new names during a run), so a commit pass reads each marker once.
    """

    def __init__(self, root: str):
        # absolute: tasks that get this store (or its read reports) run in the Ray worker's folder
        self.root = root.rstrip("/") if is_s3(root) else os.path.abspath(root)
        self.fs: fsspec.AbstractFileSystem = fsspec_filesystem(root)
        self.base = strip_scheme(self.root) if is_s3(root) else os.path.abspath(self.root)
        self.s3 = is_s3(root)
        self._folders: set[str] = set()  # local folders known to exist
        self._done: dict[str, dict] | None = None  # key -> its commit record
        self._reports: dict[str, dict] = {}  # report name -> its content
        self._in_view_unknown = True  # pieces may be in view uncommitted: after a kill, or a pass cut short

    # -- paths ---------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    # -- primitives ----------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Whole-file write that is never seen half-done."""
        if self.s3:
            with self.fs.open(path, "wb") as fh:  # one PUT: the object appears complete or not at all
                fh.write(data)
            return
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def write_json(self, path: str, obj) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, path: str):
        try:
            with self.fs.open(path, "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[str]:
        """Base names under ``path`` (empty when it does not exist)."""
        try:
            entries = self.fs.ls(path, detail=False, refresh=True) if self.s3 else os.listdir(path)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(e.rstrip("/")) for e in entries)

    def remove(self, path: str) -> None:
        self._folders.clear()
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def remove_files(self, paths: list[str]) -> None:
        """Deletes many files: on S3 in bulk requests of 1,000 keys."""
        if self.s3:
            if paths:
                self.fs.rm(paths)
            return
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def move_files(self, moves: list[tuple[str, str]]) -> None:
        """Moves many files: a rename each locally; on S3 copies run concurrently, then one bulk delete."""
        if not self.s3:
            for src, dst in moves:
                folder = os.path.dirname(dst)
                if folder not in self._folders:
                    os.makedirs(folder, exist_ok=True)
                    self._folders.add(folder)
                os.replace(src, dst)
            return
        from fsspec.asyn import sync

        async def copy_all():
            for i in range(0, len(moves), 64):  # s3fs's own batch size for concurrent copies
                await asyncio.gather(*(self.fs._cp_file(src, dst) for src, dst in moves[i : i + 64]))

        sync(self.fs.loop, copy_all)
        self.remove_files([src for src, _ in moves])

    # -- pieces and read reports ----------------------------------------------
    def write_piece(self, key: str, piece: Piece, data: bytes) -> None:
        self.write_bytes(self.path("_staging", piece.staged_name(key)), data)

    def read_reports(self) -> "ReadReports":
        """The object read tasks report each file to (what they read, or why they could not)."""
        return ReadReports(self.root)

    def _staged(self) -> tuple[dict[str, list[tuple[str, Piece]]], dict[str, dict], dict[str, dict]]:
        """One listing of ``_staging``: pieces by key, and the reports' reads and failures by key."""
        pieces: dict[str, list[tuple[str, Piece]]] = {}
        names = self.listdir(self.path("_staging"))
        for name in names:
            m = _STAGED.match(name)
            if m:
                pieces.setdefault(m["key"], []).append((self.path("_staging", name), Piece(m["kind"], int(m["first"]), int(m["rows"]), m["ext"])))
            elif name.startswith(REPORT_PREFIX) and name.endswith(".json") and name not in self._reports:
                self._reports[name] = self.read_json(self.path("_staging", name)) or {}
        reads: dict[str, dict] = {}
        failures: dict[str, dict] = {}
        for name in sorted(self._reports):
            for key, report in self._reports[name].items():
                (failures if "failed" in report else reads)[key] = report
        return pieces, reads, failures

    def _in_view(self) -> dict[str, list[tuple[str, Piece]]]:
        """Pieces moved into view by a commit that wrote no marker (cut short), by key."""
        found: dict[str, list[tuple[str, Piece]]] = {}
        done = self.done_keys()
        for folder, kind in ((self.path(), "ok"), (self.path("_errors"), "err")):
            for name in self.listdir(folder):
                m = _FINAL.match(name)
                if m and m["key"] not in done:
                    found.setdefault(m["key"], []).append((f"{folder}/{name}", Piece(kind, int(m["first"]), int(m["rows"]), m["ext"])))
        return found

    # -- commits -------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return set(self._done_records())

    def _done_records(self) -> dict[str, dict]:
        if self._done is None:
            self._done = {}
            for name in self.listdir(self.path("_done")):
                if name.endswith(".json"):
                    marker = self.read_json(self.path("_done", name)) or {}
                    # an output begun before issue 27: one marker per source file, named by its key
                    self._done.update(marker["files"] if "files" in marker else {name[: -len(".json")]: marker})
        return self._done

    def commit_ready(self) -> list[str]:
        """Commits every staged source whose pieces add up to the rows its reader saw; returns their keys.

        One listing of staging for all files, one ``_done`` marker for all it commits.
        """
        pieces, reads, _ = self._staged()
        done = self._done_records()
        in_view = self._in_view() if self._in_view_unknown else {}
        self._in_view_unknown = False
        ready: dict[str, dict] = {}
        moves: list[tuple[str, str]] = []
        for key, report in reads.items():
            if key in done:
                continue
            found: dict[tuple[str, int], tuple[str, Piece, bool]] = {}
            for path, piece in in_view.get(key, []):
                found[(piece.kind, piece.first_row)] = (path, piece, True)
            for path, piece in pieces.get(key, []):
                found[(piece.kind, piece.first_row)] = (path, piece, False)
            ok = sum(p.rows for _, p, _ in found.values() if p.kind == "ok")
            failed = sum(p.rows for _, p, _ in found.values() if p.kind == "err")
            if ok + failed != report["rows"]:
                continue
            ready[key] = {"source": report["source"], "rows_read": report["rows"], "rows_written": ok, "rows_failed": failed}
            for path, piece, shown in found.values():
                if not shown:
                    folder = self.path() if piece.kind == "ok" else self.path("_errors")
                    moves.append((path, f"{folder}/{piece.final_name(key)}"))
        if not ready:
            return []
        self._in_view_unknown = True  # until the marker is written, a failure here leaves pieces in view
        self.move_files(moves)
        self.write_json(self.path("_done", f"{_stamp()}.json"), {"files": ready})
        self._in_view_unknown = False
        done.update(ready)
        return list(ready)

    def resume(self) -> set[str]:
        """Before a run: commits what a previous run finished, forgets the rest (staging and any
        pieces of uncommitted files in view); returns the keys of the committed source files."""
        self.commit_ready()
        in_view = self._in_view()
        self.remove_files([path for found in in_view.values() for path, _ in found])
        self.remove(self.path("_staging"))
        self._reports.clear()
        return self.done_keys()

    def failures(self) -> list[dict]:
        """``[{source, reason}]`` of the files whose read failed and that no commit took."""
        _, _, failures = self._staged()
        done = self._done_records()
        return [{"source": f["source"], "reason": f["failed"]} for key, f in sorted(failures.items()) if key not in done]

    def clear_staging(self) -> None:
        """After a run where every file was committed or reported failed: what is left in staging
        (reports, pieces of failed files, a write retried after its file was committed) goes."""
        self.remove(self.path("_staging"))
        self._reports.clear()

    def totals(self) -> dict[str, int]:
        """Row counts summed over all committed sources."""
        totals = {"files": 0, "rows_read": 0, "rows_written": 0, "rows_failed": 0}
        for record in self._done_records().values():
            totals["files"] += 1
            for k in ("rows_read", "rows_written", "rows_failed"):
                totals[k] += int(record.get(k, 0))
        return totals


class ReadReports:
    """Where read tasks report the files they read: kept, then written into staging many at a time.

    Picklable (it holds the output's root): each read task gets its own copy. ``flush``
    writes one ``_staging/_reads.<id>.json`` for all files reported since the last one.
    A report is never a commit: a file is committed only once its pieces add up to its rows.
    """

    def __init__(self, root: str):
        self.root = root
        self._pending: dict[str, dict] = {}

    def read(self, key: str, source: str, rows: int) -> None:
        """The reader got to the end of ``source``: its rows, tagged or not, number ``rows``."""
        self._pending[key] = {"source": source, "rows": rows}

    def failed(self, key: str, source: str, reason: str) -> None:
        """``source`` could not be read to its end: it is never committed; its rows are dropped."""
        self._pending[key] = {"source": source, "failed": reason}

    def flush(self) -> None:
        if self._pending:
            store = OutputStore(self.root)
            store.write_json(store.path("_staging", f"{REPORT_PREFIX}{_stamp()}.json"), self._pending)
            self._pending = {}


def _stamp() -> str:
    """A unique name that sorts by time."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records).encode("utf-8")
