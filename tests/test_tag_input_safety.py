"""jobs.tag neither alters nor silently drops input: JSON values come back as read, and a
file whose read keeps failing is reported, not committed, and read again by the next run.

Storage faults are injected below the jobs: a dropped connection on the loopback S3
server (``s3_faults``), or, for the reader alone, a filesystem whose reads break.
"""

from __future__ import annotations

import json
import os

import pyarrow.dataset as pads
import pyarrow.parquet as pq

from jobs import tag as tag_job
from pipelines import tag_input
from pipelines.tag_input import ROW, TaggingInput
from pipelines.tag_store import source_key

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


def test_a_read_broken_part_way_goes_on_after_the_rows_already_passed_on(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"n": i, "text": f"row {i}"}) + "\n" for i in range(95)))
    out = tmp_path / "out"
    key = source_key(str(path))

    def read(fs, attempts):
        monkeypatch.setattr(tag_input, "fsspec_filesystem", lambda _path: fs)
        reader = TaggingInput([(str(path), key)], "jsonl", str(out), rows_per_block=10, column="text", read_attempts=attempts, retry_delay_s=0.01)
        return [r for table in reader._read_group([(str(path), key)]) for r in table.column(ROW).to_pylist()]

    # Broken at line 37 twice, then whole: every row once, and the file is marked read.
    assert read(_BreakingFS(at=37, breaks=2), attempts=3) == list(range(95))
    assert json.loads((out / "_staging" / key / "_expected.json").read_text())["rows"] == 95

    # Broken every time: what was passed on is rows 0-29 (whole blocks); the file is marked
    # failed with its reason, not read, so the driver drops its rows and does not commit it.
    (out / "_staging" / key / "_expected.json").unlink()
    assert read(_BreakingFS(at=37, breaks=99), attempts=2) == list(range(30))
    failed = json.loads((out / "_staging" / key / "_failed.json").read_text())
    assert failed["source"] == str(path) and "ConnectionResetError: Connection reset by peer" in failed["reason"]
    assert not (out / "_staging" / key / "_expected.json").exists()


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
    assert fs.ls(f"{bucket}/tagged/_done") == [f"{bucket}/tagged/_done/{source_key(f'{s3_bucket}/corpus/good.jsonl')}.json"]
    assert not fs.exists(f"{bucket}/tagged/_staging/{source_key(f'{s3_bucket}/corpus/flaky.jsonl')}")
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
    from pipelines.tag_input import _scan_files, merge_jsonl_types

    _write_corpus(tmp_path / "in")
    paths = sorted(str(p) for p in (tmp_path / "in").glob("*.jsonl"))
    whole = _scan_files(paths, 2, "text", False)
    assert merge_jsonl_types(*(_scan_files([p], 2, "text", False) for p in paths)) == whole
    assert whole["id"] is None and whole["flag"] is not None  # str and int ids: JSON text
