"""The tagging job's output folder: staged pieces, per-source commits, resume.

Layout of ``OUT`` (local or ``s3://``)::

    <key>.<first_row>-<rows>.parquet   tagged rows of one source file (several pieces per file)
    _errors/<key>.<first_row>-<rows>.jsonl   rows that could not be tagged, with reasons
    _done/<key>.json                   commit marker: the source file is complete
    _staging/<key>/...                 pieces of files still in progress (hidden: ``_`` prefix),
                                       ``_expected.json`` (read to the end: N rows) or
                                       ``_failed.json`` (the read failed: never committed)
    _job.json                          the settings the output was made with
    _manifest.json                     row counts and settings, written at the end

Why this shape: a source file's pieces are written to ``_staging`` by Ray
Data write tasks (each piece atomically: a rename locally, a single PUT on
S3) and moved into view only when *every* row of that file is accounted for,
so readers of ``OUT`` (Ray, Spark, pyarrow all skip ``_`` names) never see a
half-tagged file. A killed job leaves complete files committed and the
rest in staging; the next run commits what is complete, clears the rest
and tags only the files without a ``_done`` marker. Piece names carry
their first row and row count, so completeness is a listing, not a read,
and a retried write task overwrites its own piece instead of duplicating it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from dataclasses import dataclass

import fsspec

from pipelines.storage import fsspec_filesystem, is_s3, strip_scheme

_PIECE = re.compile(r"^(?P<first>\d{10})-(?P<rows>\d+)\.(?P<kind>ok|err)\.(?P<ext>parquet|jsonl)$")
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

    @property
    def staged_name(self) -> str:
        return f"{self.first_row:010d}-{self.rows}.{self.kind}.{self.ext}"

    def final_name(self, key: str) -> str:
        return f"{key}.{self.first_row:010d}-{self.rows}.{self.ext}"


class OutputStore:
    """Paths and atomic file operations under one output root."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.fs: fsspec.AbstractFileSystem = fsspec_filesystem(root)
        self.base = strip_scheme(self.root) if is_s3(root) else os.path.abspath(self.root)
        self.s3 = is_s3(root)

    # -- paths ---------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def staging(self, key: str) -> str:
        return self.path("_staging", key)

    # -- primitives ----------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Whole-file write that is never seen half-done."""
        if self.s3:
            with self.fs.open(path, "wb") as fh:  # one PUT: the object appears complete or not at all
                fh.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}")
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
            entries = self.fs.ls(path, detail=False, refresh=True) if self.s3 else self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(e.rstrip("/")) for e in entries)

    def remove(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        if self.s3:
            self.fs.mv(src, dst)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)

    # -- pieces and commits --------------------------------------------------
    def write_piece(self, key: str, piece: Piece, data: bytes) -> None:
        self.write_bytes(self.path("_staging", key, piece.staged_name), data)

    def mark_read(self, key: str, source: str, rows: int) -> None:
        """Written by the reader when it reached the end of ``source``: how many rows to expect."""
        self.write_json(self.path("_staging", key, "_expected.json"), {"source": source, "rows": rows})

    def mark_failed(self, key: str, source: str, reason: str) -> None:
        """Written by the reader instead of ``mark_read`` when ``source`` could not be read to its end."""
        self.write_json(self.path("_staging", key, "_failed.json"), {"source": source, "reason": reason})

    def take_failed(self, keys: set[str]) -> list[dict]:
        """``[{source, reason}]`` for the sources among ``keys`` whose read failed; their staged
        pieces are deleted (the rows they hold are read again, whole, by the next run)."""
        failed = []
        for key in sorted(keys):
            marker = self.read_json(self.path("_staging", key, "_failed.json"))
            if marker is not None:
                failed.append({"source": marker["source"], "reason": marker["reason"]})
                self.remove(self.staging(key))
        return failed

    def done_keys(self) -> set[str]:
        return {n[: -len(".json")] for n in self.listdir(self.path("_done")) if n.endswith(".json")}

    def _final_pieces(self) -> dict[str, list[tuple[str, Piece]]]:
        """Pieces already moved into view, by key (left there by a commit that was cut short)."""
        found: dict[str, list[tuple[str, Piece]]] = {}
        for folder, kind in ((self.path(), "ok"), (self.path("_errors"), "err")):
            for name in self.listdir(folder):
                m = _FINAL.match(name)
                if m:
                    piece = Piece(kind, int(m["first"]), int(m["rows"]), m["ext"])
                    found.setdefault(m["key"], []).append((f"{folder}/{name}", piece))
        return found

    def commit_ready(self, only: set[str] | None = None) -> list[str]:
        """Commit every staged source whose pieces add up to the rows its reader saw; returns their keys."""
        committed = []
        staged = [k for k in self.listdir(self.path("_staging")) if only is None or k in only]
        if not staged:
            return committed
        final = self._final_pieces()
        for key in staged:
            expected = self.read_json(self.path("_staging", key, "_expected.json"))
            if expected is None:
                continue
            names = self.listdir(self.staging(key))
            if "_failed.json" in names:
                continue  # part of the file was never read: never commit it
            pieces: dict[tuple[str, int], tuple[str, Piece, bool]] = {}
            for path, piece in final.get(key, []):
                pieces[(piece.kind, piece.first_row)] = (path, piece, True)
            for name in names:
                m = _PIECE.match(name)
                if m:
                    piece = Piece(m["kind"], int(m["first"]), int(m["rows"]), m["ext"])
                    pieces[(piece.kind, piece.first_row)] = (self.path("_staging", key, name), piece, False)
            ok = sum(p.rows for _, p, _ in pieces.values() if p.kind == "ok")
            failed = sum(p.rows for _, p, _ in pieces.values() if p.kind == "err")
            if ok + failed != expected["rows"]:
                continue
            for path, piece, in_view in pieces.values():
                if not in_view:
                    folder = self.path() if piece.kind == "ok" else self.path("_errors")
                    self.move(path, f"{folder}/{piece.final_name(key)}")
            self.write_json(
                self.path("_done", f"{key}.json"),
                {"source": expected["source"], "rows_read": expected["rows"], "rows_written": ok, "rows_failed": failed},
            )
            self.remove(self.staging(key))
            committed.append(key)
        return committed

    def discard_unfinished(self, keys: set[str]) -> None:
        """Forget partial work on sources that will be tagged again (staging and any pieces in view)."""
        final = self._final_pieces()
        for key in keys:
            self.remove(self.staging(key))
            for path, _ in final.get(key, []):
                self.remove(path)

    def totals(self) -> dict[str, int]:
        """Row counts summed over all committed sources."""
        totals = {"files": 0, "rows_read": 0, "rows_written": 0, "rows_failed": 0}
        for key in sorted(self.done_keys()):
            marker = self.read_json(self.path("_done", f"{key}.json")) or {}
            totals["files"] += 1
            for k in ("rows_read", "rows_written", "rows_failed"):
                totals[k] += int(marker.get(k, 0))
        return totals


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records).encode("utf-8")
