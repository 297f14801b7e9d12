"""Local paths and ``s3://`` URIs behind one interface.

S3 goes through s3fs (botocore underneath), so endpoint, region and
credentials come from the environment exactly as for the AWS CLI:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles. Nothing here
reads or logs a credential.
"""

from __future__ import annotations

import glob
import os
from functools import lru_cache

import fsspec
import pyarrow.fs as pafs


def is_s3(path: str) -> bool:
    return str(path).startswith(("s3://", "s3a://"))


@lru_cache(maxsize=None)
def _s3fs():
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    return s3fs.S3FileSystem(client_kwargs=client_kwargs)


def fsspec_filesystem(path: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for ``path`` (s3fs for ``s3://``, local otherwise)."""
    return _s3fs() if is_s3(path) else fsspec.filesystem("file")


def arrow_filesystem(path: str) -> pafs.FileSystem | None:
    """A pyarrow filesystem for Ray Data's readers/writers (None: let Ray infer local)."""
    if is_s3(path):
        return pafs.PyFileSystem(pafs.FSSpecHandler(_s3fs()))
    return None


def join_path(root: str, *parts: str) -> str:
    """``root/part/...`` for a local folder or an s3:// prefix."""
    return "/".join([root.rstrip("/"), *parts]) if is_s3(root) else os.path.join(root, *parts)


def path_exists(path: str) -> bool:
    """Whether ``path`` (local or s3://) exists now: S3's listing cache is dropped first, since
    another process (a training worker, a Tune trial) may have written since it was filled."""
    fs = fsspec_filesystem(path)
    fs.invalidate_cache()
    return bool(fs.exists(strip_scheme(path)))


def strip_scheme(path: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (what a PyFileSystem over s3fs expects)."""
    for prefix in ("s3://", "s3a://"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _glob_root(pattern: str) -> str:
    """The folder a glob searches from: its components before the first one with magic."""
    parts = pattern.split("/")
    literal = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return "/".join(parts[:literal])


def _asked_for(pattern_parts: list[str], path_parts: list[str]) -> list[bool]:
    """For each component of a matched path (below the glob's root): did the user's pattern
    name it with a leading ``_``/``.`` itself (``_*``, ``.cache``)? Components before a ``**``
    line up with the pattern from the start, those after it from the end; the ones ``**``
    stands for were never named, so the hidden-name rule applies to them."""
    asked = [False] * len(path_parts)
    if "**" in pattern_parts:
        head = pattern_parts[: pattern_parts.index("**")]
        tail = pattern_parts[len(pattern_parts) - pattern_parts[::-1].index("**"):]
    else:
        head, tail = pattern_parts, []
    for i, part in enumerate(head[: len(path_parts)]):
        asked[i] = _hidden(part)
    for i, part in enumerate(tail[::-1][: len(path_parts)]):
        asked[len(path_parts) - 1 - i] = _hidden(part)
    return asked


def _walk_local(folder: str):
    """(path, size) of every file below a local folder, symlinks followed as fsspec's ``find`` does
    (which builds an info dict per file through its own path handling, slow on many files)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                yield from _walk_local(entry.path)
            elif entry.is_file():
                yield entry.path, entry.stat().st_size


def expand_inputs(path: str, extensions: tuple[str, ...] = ()) -> list[str]:
    """A file, a folder (recursively, files with ``extensions``), or a glob -> sorted file list (``input_files``)."""
    return list(input_files(path, extensions))


def input_files(path: str, extensions: tuple[str, ...] = ()) -> dict[str, int]:
    """A file, a folder (recursively, files with ``extensions``), or a glob -> {file: size in bytes}, sorted.

    The sizes come with the listing (no request per file); the tagging job packs small
    files into shared read tasks by them.

    Hidden and ``_``-prefixed names (``_SUCCESS``, ``_errors/``, ``.cache/``) are skipped,
    as Spark and Ray Data do, but only names the user did not write: the rule looks at each
    file's own name and the folders between it and the folder or glob the user gave, never
    at the user's own text (``/data/_in/part-*`` still reads ``/data/_in``, and ``_x*`` reads
    ``_x1``). Raises FileNotFoundError naming the path when nothing matches, so a typo
    fails in seconds, not after cluster start-up.
    """
    fs = fsspec_filesystem(path)
    scheme = "s3://" if is_s3(path) else ""
    bare = strip_scheme(path) if scheme else os.path.abspath(path)
    bare = bare.rstrip("/") or "/"
    if glob.has_magic(bare):
        root = _glob_root(bare)
        pattern_parts = bare[len(root):].strip("/").split("/")
        found = {}
        for p, info in fs.glob(bare, detail=True).items():
            rel = p[len(root):].strip("/").split("/") if p.startswith(root) else [os.path.basename(p)]
            asked = _asked_for(pattern_parts, rel)
            if info.get("type") != "directory" and not any(_hidden(part) and not ok for part, ok in zip(rel, asked)):
                found[p] = info
    elif not scheme and os.path.isdir(bare):
        found = {
            p: {"size": size} for p, size in _walk_local(bare)
            if (not extensions or p.endswith(extensions)) and not any(_hidden(part) for part in p[len(bare):].split("/") if part)
        }
    elif fs.isdir(bare):
        found = {
            p: info for p, info in fs.find(bare, detail=True).items()
            if info.get("type") != "directory"
            and (not extensions or p.endswith(extensions))
            and not any(_hidden(part) for part in p[len(bare):].split("/") if part)
        }
    elif fs.exists(bare):
        found = {bare: fs.info(bare)}  # named by the user: read even if its name starts with "_"
    else:
        found = {}
    if not found:
        raise FileNotFoundError(f"no input files at {path}")
    return {scheme + p: int(found[p].get("size") or 0) for p in sorted(found)}


def folder_files(path: str) -> dict[str, dict]:
    """The files directly in folder ``path`` (or ``path`` itself, a file): full path -> fsspec info.

    Subfolders are left out: a model's own files are the ones ``save_pretrained`` writes
    at its top level, while a training run's output folder also keeps its checkpoints
    and logs in subfolders (``_ray/``, ``tensorboard/``), several times the model's size.
    """
    fs = fsspec_filesystem(path)
    bare = (strip_scheme(path) if is_s3(path) else os.path.abspath(path)).rstrip("/")
    if is_s3(path):
        fs.invalidate_cache(bare)  # s3fs caches listings: a re-upload must be seen
    found = fs.ls(bare, detail=True) if fs.isdir(bare) else [fs.info(bare)]
    files = {info["name"]: info for info in found if info.get("type") != "directory"}
    if not files:
        raise FileNotFoundError(f"nothing at {path}")
    return files


def files_identity(path: str) -> str:
    """A short hash that changes whenever a file directly in ``path`` (``folder_files``) changes.

    On S3 it is built from each object's name, size and ETag (S3's own content hash), so
    it costs one listing, not a download; locally from each file's name and content. Used
    to tell a retrained model uploaded to the same URI from the one cached or recorded.
    """
    import hashlib

    fs = fsspec_filesystem(path)
    digest = hashlib.sha256()
    for name, info in sorted(folder_files(path).items()):
        base = name.rsplit("/", 1)[-1]
        if is_s3(path):
            digest.update(f"{base}\0{info.get('size')}\0{info.get('ETag') or info.get('LastModified')}\n".encode())
        else:
            digest.update(f"{base}\0".encode())
            with fs.open(name, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
