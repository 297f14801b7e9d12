"""pipelines.storage: the same input expansion for local folders, globs and s3:// on a real S3 server."""

from __future__ import annotations

import pytest

from pipelines.storage import expand_inputs, fsspec_filesystem

# A corpus folder as Spark or a previous job leaves it: data files, a marker, a checksum,
# a subfolder, and folders that are not input (errors, staging of a job in progress).
LAYOUT = [
    "part-0.jsonl", "part-1.jsonl", "a_b.jsonl", "notes.txt", "_SUCCESS", ".part-0.jsonl.crc",
    "sub/c.jsonl", "sub/_staging/x.jsonl", "_errors/e.jsonl",
]  # fmt: skip

# glob or folder (relative to the corpus root) -> the files a user expects, relative too
EXPECTED = {
    "part-*": ["part-0.jsonl", "part-1.jsonl"],
    "*": ["a_b.jsonl", "notes.txt", "part-0.jsonl", "part-1.jsonl"],
    "*.jsonl": ["a_b.jsonl", "part-0.jsonl", "part-1.jsonl"],
    "**/*.jsonl": ["a_b.jsonl", "part-0.jsonl", "part-1.jsonl", "sub/c.jsonl"],
    "a_*": ["a_b.jsonl"],
    "sub/*": ["sub/c.jsonl"],
    "_errors/*": ["_errors/e.jsonl"],  # the user named the folder: it is read
    "": ["a_b.jsonl", "part-0.jsonl", "part-1.jsonl", "sub/c.jsonl"],  # the folder itself, .jsonl files
    "sub": ["sub/c.jsonl"],
    "a_b.jsonl": ["a_b.jsonl"],
    "_SUCCESS": ["_SUCCESS"],  # a single file is read when named, whatever its name
}


def _check_layout(root: str) -> None:
    for pattern, expected in EXPECTED.items():
        path = f"{root}/{pattern}" if pattern else root
        assert expand_inputs(path, (".jsonl",)) == [f"{root}/{e}" for e in expected], pattern


def test_local_globs_folders_and_files(tmp_path):
    for name in LAYOUT:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    _check_layout(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no input files at"):
        expand_inputs(str(tmp_path / "nothing-here"))
    with pytest.raises(FileNotFoundError, match="no input files at"):
        expand_inputs(str(tmp_path / "nothing-*"))


def test_s3_globs_folders_and_files(s3_bucket):
    fs = fsspec_filesystem(s3_bucket)
    for name in LAYOUT:
        fs.pipe(f"{s3_bucket}/corpus/{name}", b"{}\n")
    _check_layout(f"{s3_bucket}/corpus")
    assert expand_inputs(f"{s3_bucket}/corpus/", (".jsonl",)) == expand_inputs(f"{s3_bucket}/corpus", (".jsonl",))
