"""pipelines.storage: the same input expansion for local folders, globs and s3:// on a real S3 server."""

from __future__ import annotations

import pytest

from pipelines.storage import expand_inputs, fsspec_filesystem


def test_local_file_folder_and_glob(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text("{}\n")
    (tmp_path / "c.txt").write_text("x")
    (tmp_path / "_errors").mkdir()
    (tmp_path / "_errors" / "e.jsonl").write_text("{}\n")
    assert expand_inputs(str(tmp_path / "a.jsonl")) == [str(tmp_path / "a.jsonl")]
    assert expand_inputs(str(tmp_path), (".jsonl",)) == [str(tmp_path / "a.jsonl"), str(tmp_path / "sub" / "b.jsonl")]
    assert expand_inputs(str(tmp_path / "*.txt")) == [str(tmp_path / "c.txt")]
    with pytest.raises(FileNotFoundError, match="no input files at"):
        expand_inputs(str(tmp_path / "nothing-here"))


def test_s3_folder(s3_bucket):
    fs = fsspec_filesystem(s3_bucket)
    fs.pipe(f"{s3_bucket}/in/x.parquet", b"1")
    fs.pipe(f"{s3_bucket}/in/y.parquet", b"2")
    fs.pipe(f"{s3_bucket}/in/_SUCCESS", b"")
    assert expand_inputs(f"{s3_bucket}/in", (".parquet",)) == [f"{s3_bucket}/in/x.parquet", f"{s3_bucket}/in/y.parquet"]
    assert expand_inputs(f"{s3_bucket}/in/*.parquet") == [f"{s3_bucket}/in/x.parquet", f"{s3_bucket}/in/y.parquet"]
