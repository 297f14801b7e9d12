"""jobs.tag neither alters nor silently drops input: JSON values come back as read, and a
file whose read keeps failing is reported, not committed, and read again by the next run.

Storage faults are injected below the jobs: a dropped connection on the loopback S3
server (``s3_faults``), or, for the reader alone, a filesystem whose reads break.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import tag as tag_job
from pipelines.tagging import reader as tag_input
from pipelines.tagging.reader import ERROR, ROW, SRC, FileReader, pack_files, read_files, read_jsonl
from pipelines.tagging.store import source_key

SMALL = ["--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "16", "--max-length", "24", "--stride", "6"]

# An id that is a number in some rows and a string in others, within a block, between
# blocks and between files; a number column with ints and floats; objects with other keys.
FILES = {
    "a.jsonl": [
        {"id": 1, "text": "Alice met Bob.", "score": 1},
        {"id": 2, "text": "Paris in May.", "score": 2.5, "meta": {"k": 1}},
        {"id": 3, "text": "Bob left."},
        {"id": "d-4", "text": "Acme Corp hired Carol.", "meta": {"j": "x"}},
        {"id": 5, "text": "Dan.", "score": None},
        {"id": 6, "text": "Eve flew to Rome."},
    ],
    "b.jsonl": [
        {"id": "b-1", "text": "Tokyo is big.", "flag": True},
        {"id": "b-2", "text": "Zoe and Yan.", "score": 7},
    ],
}


def _write_corpus(folder) -> list[dict]:
    folder.mkdir()
    for name, rows in FILES.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r for rows in FILES.values() for r in rows]


def _input_part(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("tokens", "labels", "scores", "entities")}


@pytest.mark.slow
def test_fields_whose_type_varies_come_back_as_read(ray_cluster, tiny_tagger, tmp_path):
    rows = _write_corpus(tmp_path / "in")
    args = ["--model", tiny_tagger, "--input", str(tmp_path / "in"), "--rows-per-block", "2", *SMALL]

    assert tag_job.main([*args, "--output", str(tmp_path / "jsonl"), "--output-format", "jsonl"]) == 0
    out = [json.loads(line) for p in sorted((tmp_path / "jsonl").glob("*.jsonl")) for line in p.read_text().splitlines()]
    by_text = {r["text"]: _input_part(r) for r in out}
    # exactly as read: 3 stays the number 3, "d-4" stays "d-4", 1 stays an int (not 1.0)
    assert sorted(json.dumps(by_text[r["text"]], sort_keys=True) for r in rows) == sorted(json.dumps(r, sort_keys=True) for r in rows)

    assert tag_job.main([*args, "--output", str(tmp_path / "pq")]) == 0
    manifest = json.loads((tmp_path / "pq" / "_manifest.json").read_text())
    assert manifest["json_encoded_columns"] == ["id"] and manifest["rows_written"] == len(rows)
    schemas = {pq.read_schema(p).remove_metadata().to_string() for p in (tmp_path / "pq").glob("*.parquet")}
    assert len(schemas) == 1  # one type per column in every output file
    table = pads.dataset(str(tmp_path / "pq"), format="parquet").to_table()
    got = {r["text"]: r for r in table.to_pylist()}
    for r in rows:
        assert json.loads(got[r["text"]]["id"]) == r["id"]  # the id's JSON text: json.loads gives it back
        assert got[r["text"]]["score"] == r.get("score")  # ints and floats: one float column
        assert {k: v for k, v in (got[r["text"]]["meta"] or {}).items() if v is not None} == r.get("meta", {})
    assert str(table.schema.field("score").type) == "double" and str(table.schema.field("flag").type) == "bool"


class _BreakingFS:
    """A local filesystem whose first ``breaks`` opens of a file lose the connection at line ``at``."""

    def __init__(self, at: int, breaks: int):
        self.at, self.breaks, self.opens = at, breaks, 0

    def open(self, path, mode="rb", compression=None):
        self.opens += 1
        lines = open(path, "rb").read().splitlines(keepends=True)
        broken = self.opens <= self.breaks
        at = self.at

        class _File:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def __iter__(self):
                for i, line in enumerate(lines):
                    if broken and i == at:
                        raise ConnectionResetError("Connection reset by peer")
                    yield line

        return _File()


class _Reports:
    """What a read task reports, file by file (the store's ``ReadReports`` writes the same into staging)."""

    def __init__(self):
        self.reads, self.failures = {}, {}

    def read(self, key, source, rows):
        self.reads[key] = (source, rows)

    def failed(self, key, source, reason):
        self.failures[key] = (source, reason)

    def flush(self):
        pass


def _read_rows(group, reader, reports) -> list[tuple[str, int]]:
    return [(src, row) for table in read_files(group, reader, reports) for src, row in zip(table.column(SRC).to_pylist(), table.column(ROW).to_pylist())]


def test_a_read_broken_part_way_goes_on_after_the_rows_already_passed_on(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"n": i, "text": f"row {i}"}) + "\n" for i in range(95)))
    key = source_key(str(path))

    def read(fs, attempts):
        monkeypatch.setattr(tag_input, "fsspec_filesystem", lambda _path: fs)
        reports = _Reports()
        reader = FileReader("jsonl", rows_per_block=10, column="text", pre_split=False, read_attempts=attempts, retry_delay_s=0.01)
        return [row for _, row in _read_rows([(str(path), key, None)], reader, reports)], reports

    # Broken at line 37 twice, then whole: every row once, and the file is reported read.
    rows, reports = read(_BreakingFS(at=37, breaks=2), attempts=3)
    assert rows == list(range(95)) and reports.reads == {key: (str(path), 95)} and not reports.failures

    # Broken every time: what was passed on is rows 0-29 (whole blocks); the file is reported
    # failed with its reason, not read, so the driver drops its rows and does not commit it.
    rows, reports = read(_BreakingFS(at=37, breaks=99), attempts=2)
    assert rows == list(range(30)) and not reports.reads
    source, reason = reports.failures[key]
    assert source == str(path) and reason.startswith("read failed 2 times") and "ConnectionResetError: Connection reset by peer" in reason


def test_small_files_share_read_tasks_and_blocks_but_are_reported_one_by_one(tmp_path):
    files = []
    for i in range(30):
        path = tmp_path / f"f{i:02d}.jsonl"
        path.write_text("".join(json.dumps({"text": f"file {i} row {j}"}) + "\n" for j in range(i % 4)))  # 0 to 3 rows
        files.append((str(path), source_key(str(path)), path.stat().st_size))
    groups = pack_files(files)
    assert len(groups) == 1 and [s for g in groups for s in g] == files  # 30 small files: one read task, in order
    four = pack_files(files, tasks=4)  # --read-tasks 4
    assert len(four) == 4 and [s for g in four for s in g] == files

    reports = _Reports()
    reader = FileReader("jsonl", rows_per_block=16, column="text", pre_split=False, read_attempts=1, retry_delay_s=0)
    blocks = list(read_files(files, reader, reports))
    assert len(blocks) == 3 and all(b.num_rows >= 16 for b in blocks[:-1])  # 43 rows of 22 files in 3 blocks
    rows = [(src, row) for b in blocks for src, row in zip(b.column(SRC).to_pylist(), b.column(ROW).to_pylist())]
    assert rows == [(key, j) for i, (_, key, _) in enumerate(files) for j in range(i % 4)]  # each row keeps its file
    assert reports.reads == {key: (path, i % 4) for i, (path, key, _) in enumerate(files)}  # empty files too


@pytest.mark.slow
def test_a_file_s3_keeps_dropping_is_reported_then_tagged_by_the_next_run(ray_cluster, tiny_tagger, s3_bucket, s3_faults, capsys):
    from pipelines.storage import fsspec_filesystem

    fs = fsspec_filesystem(s3_bucket)
    bucket = s3_bucket[len("s3://") :]
    fs.pipe(f"{bucket}/corpus/good.jsonl", "".join(json.dumps({"n": i, "text": f"Alice {i} met Bob."}) + "\n" for i in range(20)).encode())
    fs.pipe(f"{bucket}/corpus/flaky.jsonl", "".join(json.dumps({"n": 100 + i, "text": f"Carol {i} in Paris."}) + "\n" for i in range(30)).encode())
    out = f"{s3_bucket}/tagged"
    argv = ["--model", tiny_tagger, "--input", f"{s3_bucket}/corpus", "--output", out, "--output-format", "jsonl",
            "--rows-per-block", "10", "--read-attempts", "2", "--read-retry-delay-s", "0.1", *SMALL]  # fmt: skip

    s3_faults.drop(bucket, "corpus/flaky.jsonl")  # every read of it loses the connection
    assert tag_job.main(argv) == 1
    manifest = json.loads(fs.cat(f"{bucket}/tagged/_manifest.json"))
    assert [f["source"] for f in manifest["files_failed"]] == [f"{s3_bucket}/corpus/flaky.jsonl"]
    assert "read failed 2 times" in manifest["files_failed"][0]["reason"]
    assert manifest["rows_read"] == manifest["rows_written"] == 20 and manifest["rows_failed"] == 0
    assert manifest["files"] == 1 and not fs.exists(f"{bucket}/tagged/_staging")  # the flaky file's rows dropped
    assert "input files failed" in capsys.readouterr().err

    s3_faults.heal()
    s3_faults.drop(bucket, "corpus/flaky.jsonl", times=6)  # one failed attempt, then the connection holds
    assert tag_job.main(argv) == 0
    manifest = json.loads(fs.cat(f"{bucket}/tagged/_manifest.json"))
    assert manifest["files_failed"] == [] and manifest["this_run"]["files_tagged"] == 1
    assert manifest["rows_read"] == manifest["rows_written"] == 50 and manifest["rows_failed"] == 0
    rows = [json.loads(line) for p in sorted(fs.glob(f"{bucket}/tagged/*.jsonl")) for line in fs.cat(p).decode().splitlines()]
    assert sorted(r["n"] for r in rows) == list(range(20)) + list(range(100, 130))  # none lost, none twice
    assert not os.environ.get("RAY_NER_TEST_KILL_AFTER_COMMITS")


def test_the_type_scan_gives_the_same_types_however_the_files_are_grouped(tmp_path):
    # the scan splits the files between tasks by the cluster's size (one on a laptop),
    # then merges the tasks' types: any grouping must give the types of one scan of all
    from pipelines.tagging.reader import _scan_files, merge_jsonl_types

    _write_corpus(tmp_path / "in")
    paths = sorted(str(p) for p in (tmp_path / "in").glob("*.jsonl"))
    whole = _scan_files(paths, 2, "text", False)
    assert merge_jsonl_types(*(_scan_files([p], 2, "text", False) for p in paths)) == whole
    assert whole["id"] is None and whole["flag"] is not None  # str and int ids: JSON text


@pytest.mark.slow
def test_a_file_saved_with_a_byte_order_mark_reads_like_any_other(ray_cluster, tiny_tagger, tmp_path):
    # Windows editors and spreadsheet exports start a UTF-8 file with a byte-order mark
    import gzip

    rows = [{"id": i, "text": t} for i, t in enumerate(["Alice met Bob.", "Paris in May.", "Zoë flew to Köln."])]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "export.jsonl", "w", encoding="utf-8-sig") as fh:
        fh.write(lines)
    with gzip.open(tmp_path / "in" / "export2.jsonl.gz", "wt", encoding="utf-8-sig") as fh:
        fh.write(lines)
    assert (tmp_path / "in" / "export.jsonl").read_bytes().startswith(b"\xef\xbb\xbf")

    out = tmp_path / "out"
    assert tag_job.main(["--model", tiny_tagger, "--input", str(tmp_path / "in"), "--output", str(out), *SMALL]) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_read"] == manifest["rows_written"] == 6 and manifest["rows_failed"] == 0
    assert manifest["json_encoded_columns"] == []  # the first row's id is a number like the others
    got = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    assert sorted((r["id"], r["text"]) for r in got) == sorted((r["id"], r["text"]) for r in rows * 2)


@pytest.mark.slow
def test_a_gzip_file_cut_short_is_reported_at_once_as_damaged(ray_cluster, tiny_tagger, tmp_path):
    import gzip

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.jsonl").write_text("".join(json.dumps({"text": f"Alice {i} met Bob."}) + "\n" for i in range(5)))
    whole = gzip.compress("".join(json.dumps({"text": f"Carol {i} in Paris."}) + "\n" for i in range(500)).encode())
    (tmp_path / "in" / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # an upload cut short
    out = tmp_path / "out"
    argv = ["--model", tiny_tagger, "--input", str(tmp_path / "in"), "--output", str(out), "--output-format", "jsonl", "--read-attempts", "4", *SMALL]

    assert tag_job.main(argv) == 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [f["source"] for f in manifest["files_failed"]] == [str(tmp_path / "in" / "cut.jsonl.gz")]
    reason = manifest["files_failed"][0]["reason"]
    assert reason.startswith("damaged file (EOFError: Compressed file ended") and "not retried" in reason, reason
    assert "running the job again will not help" in reason and "read failed" not in reason
    assert manifest["rows_read"] == manifest["rows_written"] == 5  # the damaged file's rows dropped, the rest tagged


class _CountingFS:
    """The local filesystem, counting reads of whole files; ``fail`` makes each one fail that way."""

    def __init__(self, fail: Exception | None = None):
        import fsspec

        self.local, self.fail, self.reads = fsspec.filesystem("file"), fail, 0

    def cat_file(self, path):
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return self.local.cat_file(path)


def test_a_parquet_file_cut_short_is_read_once_while_a_dropped_read_is_retried(tmp_path, monkeypatch):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), path)
    path.write_bytes(path.read_bytes()[:-200])  # its footer lost
    source = (str(path), source_key(str(path)), path.stat().st_size)
    reader = FileReader("parquet", rows_per_block=10, column="text", pre_split=False, read_attempts=4, retry_delay_s=0)

    for fs, reads, reason in [
        (_CountingFS(), 1, "damaged file (ArrowInvalid: "),
        (_CountingFS(fail=ConnectionResetError("Connection reset by peer")), 4, "read failed 4 times, last at row 0: ConnectionResetError"),
    ]:
        monkeypatch.setattr(tag_input, "fsspec_filesystem", lambda _path, fs=fs: fs)
        reports = _Reports()
        assert _read_rows([source], reader, reports) == [] and not reports.reads
        assert fs.reads == reads and reports.failures[source[1]][1].startswith(reason), reports.failures


def test_an_input_field_named_like_an_output_column_is_an_error_row():
    # "labels" in the input would be overwritten by the tagger's labels; a pre-split "tokens"
    # column is the one read, and is written back unchanged
    lines = [
        {"text": "Alice met Bob.", "labels": ["x"]},
        {"text": "Bob met Alice."},
        {"tokens": ["Bob", "left"]},
    ]
    fh = io.BytesIO("".join(json.dumps(r) + "\n" for r in lines).encode())
    rows = [r for block, _ in read_jsonl(fh, "a.jsonl", 10, column="text") for r in block]
    assert "'labels' clashes with an output column" in rows[0][ERROR] and rows[1][ERROR] is None
    fh.seek(0)
    rows = [r for block, _ in read_jsonl(fh, "a.jsonl", 10, column="tokens", pre_split=True) for r in block]
    assert "'labels' clashes" in rows[0][ERROR] and rows[2][ERROR] is None
